/* mkframe: write one encoded bus frame to a file, for tests that push it
 * with `nngcat --push --file`.
 *   mkframe OUT TOPIC POST_ID [TEXT]   post.* event (status from the topic)
 * Exit 0 ok, 1 encode/write failure, 2 usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "btl/err.h"
#include "btl/proto.h"
#include "btl/util.h"

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: mkframe OUT TOPIC POST_ID [TEXT]\n");
        return 2;
    }
    int64_t id;
    if (btl_parse_i64(argv[3], 0, INT64_MAX, &id) != 0 ||
        btl_proto_kind_of(argv[2]) != BTL_MSG_POST) {
        fprintf(stderr, "mkframe: need a post.* topic and a post id >= 0\n");
        return 2;
    }
    btl_msg m;
    int rc = btl_proto_init(&m, argv[2], "mkframe");
    if (rc != 0) {
        fprintf(stderr, "mkframe: %s\n", btl_strerror(rc));
        return 1;
    }
    const char *status = strchr(argv[2], '.') + 1;
    btl_strlcpy(m.body.post.status, strcmp(status, "generated") == 0 ? "pending" : status,
                sizeof m.body.post.status);
    m.body.post.post_id = id;
    m.body.post.text = strdup(argc == 5 ? argv[4] : "");
    btl_strlcpy(m.body.post.narrative, "test", sizeof m.body.post.narrative);
    char *frame = NULL;
    size_t len = 0;
    rc = m.body.post.text ? btl_proto_encode(&m, &frame, &len) : BTL_ENOMEM;
    btl_msg_free(&m);
    if (rc != 0) {
        fprintf(stderr, "mkframe: encode: %s\n", btl_strerror(rc));
        return 1;
    }
    FILE *f = fopen(argv[1], "wb");
    int ok = f != NULL && fwrite(frame, 1, len, f) == len;
    if (f != NULL && fclose(f) != 0)
        ok = 0;
    free(frame);
    if (!ok) {
        perror("mkframe");
        return 1;
    }
    return 0;
}
