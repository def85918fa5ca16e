#include "btl/utf8.h"
#include "btl/err.h"

#include <string.h>

size_t btl_utf8_decode(const char *p, size_t avail, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)p;
    if (avail == 0)
        return 0;
    unsigned char c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) {
        len = 1, v = c, min = 0;
    } else if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (avail < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    if (cp)
        *cp = v;
    return len;
}

int btl_utf8_count(const char *s, size_t len, size_t *count)
{
    size_t i = 0, n = 0;
    if (s == NULL && len > 0)
        return BTL_EINVAL;
    while (i < len) {
        uint32_t cp;
        size_t l = btl_utf8_decode(s + i, len - i, &cp);
        if (l == 0 || cp == 0)
            return BTL_EINVAL;
        i += l;
        n++;
    }
    if (count)
        *count = n;
    return 0;
}

void btl_utf8_copy(char *dst, size_t dstlen, const char *src, size_t max)
{
    if (dst == NULL || dstlen == 0)
        return;
    if (max > dstlen - 1)
        max = dstlen - 1;
    const char *p = src ? src : "";
    size_t avail = strlen(p), o = 0;
    while (*p != '\0') {
        size_t l = btl_utf8_decode(p, avail, NULL);
        if (o + (l ? l : 1) > max)
            break;
        if (l == 0) {
            dst[o++] = '?';
            l = 1;
        } else {
            memcpy(dst + o, p, l);
            o += l;
        }
        p += l;
        avail -= l;
    }
    dst[o] = '\0';
}
