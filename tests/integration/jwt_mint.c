/* Test helper for test_api.sh: mints good and bad JWTs.
 *
 *   jwt_mint sign ALG SECRET CLAIMS_JSON   ALG: HS256 HS384 HS512 none; a claim
 *                                          "exp_in": N becomes exp = now + N s
 *   jwt_mint raw HEADER_JSON CLAIMS_JSON   unsigned parts + a junk signature
 *   jwt_mint forge TOKEN KEY VALUE         set string claim KEY in TOKEN's
 *                                          payload, keep header and signature
 *
 * Prints the token on stdout; exit 0, or 2 on bad usage / input. */
#include "btl/util.h"

#include <jansson.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void b64url_put(btl_buf *out, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        char q[4] = {b64[(v >> 18) & 63], b64[(v >> 12) & 63], b64[(v >> 6) & 63], b64[v & 63]};
        btl_buf_append(out, q, n - i >= 3 ? 4 : n - i + 1);
    }
}

static int b64url_get(const char *s, size_t n, btl_buf *out)
{
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *at = strchr(b64, s[i]);
        if (at == NULL || s[i] == '\0')
            return -1;
        acc = (acc << 6) | (uint32_t)(at - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            char ch = (char)((acc >> bits) & 0xff);
            btl_buf_append(out, &ch, 1);
        }
    }
    return 0;
}

static int sign(const char *alg_s, const char *secret, const char *claims_s)
{
    jwt_alg_t alg = strcmp(alg_s, "none") == 0 ? JWT_ALG_NONE : jwt_str_alg(alg_s);
    json_t *claims = json_loads(claims_s, 0, NULL);
    if (alg == JWT_ALG_INVAL || !json_is_object(claims)) {
        json_decref(claims);
        return 2;
    }
    json_t *in = json_object_get(claims, "exp_in");
    if (json_is_integer(in)) {
        json_object_set_new(claims, "exp",
                            json_integer(btl_now_ms() / 1000 + json_integer_value(in)));
        json_object_del(claims, "exp_in");
    }
    char *cj = json_dumps(claims, JSON_COMPACT);
    json_decref(claims);
    jwt_t *jwt = NULL;
    char *tok = NULL;
    int rc = 2;
    if (cj && jwt_new(&jwt) == 0 && jwt_add_grants_json(jwt, cj) == 0 &&
        jwt_set_alg(jwt, alg, alg == JWT_ALG_NONE ? NULL : (const unsigned char *)secret,
                    alg == JWT_ALG_NONE ? 0 : (int)strlen(secret)) == 0 &&
        (tok = jwt_encode_str(jwt)) != NULL) {
        printf("%s\n", tok);
        rc = 0;
    }
    free(tok);
    free(cj);
    jwt_free(jwt);
    return rc;
}

static int raw(const char *hdr, const char *claims)
{
    btl_buf b;
    btl_buf_init(&b, 0);
    b64url_put(&b, (const unsigned char *)hdr, strlen(hdr));
    btl_buf_puts(&b, ".");
    b64url_put(&b, (const unsigned char *)claims, strlen(claims));
    btl_buf_puts(&b, ".c2lnbmF0dXJl");
    printf("%s\n", b.data);
    btl_buf_free(&b);
    return 0;
}

static int forge(const char *tok, const char *key, const char *val)
{
    const char *d1 = strchr(tok, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (d2 == NULL)
        return 2;
    btl_buf pl, out;
    btl_buf_init(&pl, 0);
    btl_buf_init(&out, 0);
    int rc = 2;
    json_t *claims = NULL;
    char *cj = NULL;
    if (b64url_get(d1 + 1, (size_t)(d2 - d1 - 1), &pl) != 0)
        goto out;
    claims = json_loadb(pl.data ? pl.data : "", pl.len, 0, NULL);
    if (!json_is_object(claims))
        goto out;
    json_object_set_new(claims, key, json_string(val));
    cj = json_dumps(claims, JSON_COMPACT);
    if (cj == NULL)
        goto out;
    btl_buf_append(&out, tok, (size_t)(d1 - tok) + 1);
    b64url_put(&out, (const unsigned char *)cj, strlen(cj));
    btl_buf_puts(&out, d2);
    printf("%s\n", out.data);
    rc = 0;
out:
    free(cj);
    json_decref(claims);
    btl_buf_free(&pl);
    btl_buf_free(&out);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "sign") == 0)
        return sign(argv[2], argv[3], argv[4]);
    if (argc == 4 && strcmp(argv[1], "raw") == 0)
        return raw(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "forge") == 0)
        return forge(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: jwt_mint sign ALG SECRET CLAIMS_JSON | raw HEADER CLAIMS | "
                    "forge TOKEN KEY VALUE\n");
    return 2;
}
