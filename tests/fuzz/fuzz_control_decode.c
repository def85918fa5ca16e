/* libFuzzer target: control-socket request parser (btl_proto_control_decode),
 * text and msgpack forms. Checks the output invariants the scheduler relies
 * on: bounded arg count and NUL-terminated fields. */
#include "btl/err.h"
#include "btl/proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_str(const char *s, size_t cap)
{
    if (memchr(s, '\0', cap) == NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    btl_control_req req;
    char why[256];

    why[0] = '\0';
    int rc = btl_proto_control_decode(data, size, &req, why, sizeof why);
    check_str(why, sizeof why);
    if (rc != 0) {
        if (rc != BTL_EPROTO && rc != BTL_ETOOBIG && rc != BTL_EINVAL)
            abort();
        return 0;
    }
    if (req.nargs < 0 || req.nargs > 8)
        abort();
    check_str(req.cmd, sizeof req.cmd);
    check_str(req.task, sizeof req.task);
    for (int i = 0; i < req.nargs; i++)
        check_str(req.args[i], sizeof req.args[i]);
    return 0;
}
