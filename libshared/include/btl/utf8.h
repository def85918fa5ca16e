/* Strict UTF-8 (as PostgreSQL and JSON accept it): no overlongs, no
 * surrogates, nothing past U+10FFFF, no sequence cut short. One
 * implementation for every module that counts, checks or cuts text. */
#ifndef BTL_UTF8_H
#define BTL_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length (1..4) of the valid sequence at p, reading at most avail bytes,
 * with its code point in *cp (may be NULL); 0 when invalid. A NUL byte is a
 * valid sequence of length 1 with code point 0. */
size_t btl_utf8_decode(const char *p, size_t avail, uint32_t *cp);

/* Code points in s[0..len) into *count (may be NULL); BTL_EINVAL if the
 * bytes are not valid UTF-8 or hold a NUL. */
int btl_utf8_count(const char *s, size_t len, size_t *count);

/* Copies at most max bytes of the NUL-terminated src (NULL = "") into dst
 * (dstlen > 0), never splitting a sequence; invalid bytes become '?'. dst
 * is always terminated. */
void btl_utf8_copy(char *dst, size_t dstlen, const char *src, size_t max);

#endif
