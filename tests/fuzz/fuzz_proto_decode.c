/* libFuzzer target: bus frame decoder (btl_proto_decode).
 *
 * Besides "never crash, never leak", it checks one invariant: a frame the
 * decoder accepts must re-encode, and encoding is stable across a second
 * decode (encode(decode(encode(m))) == encode(m)). A violation aborts so
 * libFuzzer saves the input. */
#include "btl/err.h"
#include "btl/proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    btl_msg m1, m2;
    const char *reason = NULL;
    char why[256];
    char *enc1 = NULL, *enc2 = NULL;
    size_t len1 = 0, len2 = 0;

    int rc = btl_proto_decode(data, size, &m1, &reason, why, sizeof why);
    if (rc != 0) {
        /* Failure must come with a reason label and leave *out harmless. */
        if (reason == NULL)
            abort();
        btl_msg_free(&m1);
        return 0;
    }
    if (m1.type[0] == '\0' || m1.id[0] == '\0' || btl_proto_kind_of(m1.type) != m1.kind)
        abort();
    if (btl_proto_encode(&m1, &enc1, &len1) != 0)
        abort(); /* accepted by the decoder but refused by the encoder */
    if (btl_proto_decode(enc1, len1, &m2, &reason, why, sizeof why) != 0)
        abort();
    if (btl_proto_encode(&m2, &enc2, &len2) != 0)
        abort();
    if (len1 != len2 || memcmp(enc1, enc2, len1) != 0)
        abort();
    free(enc1);
    free(enc2);
    btl_msg_free(&m1);
    btl_msg_free(&m2);
    return 0;
}
