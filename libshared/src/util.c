#include "btl/util.h"
#include "btl/err.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int btl_strlcpy(char *dst, const char *src, size_t n)
{
    size_t len = strlen(src);
    if (n == 0)
        return BTL_ETOOBIG;
    if (len >= n) {
        memcpy(dst, src, n - 1);
        dst[n - 1] = '\0';
        return BTL_ETOOBIG;
    }
    memcpy(dst, src, len + 1);
    return 0;
}

int btl_snprintf(char *dst, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(dst, n, fmt, ap);
    va_end(ap);
    if (r < 0)
        return BTL_EINVAL;
    return (size_t)r >= n ? BTL_ETOOBIG : 0;
}

int btl_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (s == NULL || *s == '\0' || isspace((unsigned char)*s))
        return BTL_EINVAL;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE)
        return BTL_ETOOBIG;
    if (end == s || *end != '\0')
        return BTL_EINVAL;
    if (v < min || v > max)
        return BTL_ETOOBIG;
    *out = v;
    return 0;
}

int btl_parse_double(const char *s, double *out)
{
    if (s == NULL || *s == '\0' || isspace((unsigned char)*s))
        return BTL_EINVAL;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno == ERANGE)
        return BTL_ETOOBIG;
    if (end == s || *end != '\0')
        return BTL_EINVAL;
    *out = v;
    return 0;
}

int btl_parse_duration_ms(const char *s, int64_t *out_ms)
{
    if (s == NULL || !isdigit((unsigned char)*s))
        return BTL_EINVAL;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == ERANGE || v < 0)
        return BTL_ETOOBIG;
    int64_t mult;
    if (*end == '\0' || strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "m") == 0)
        mult = 60 * 1000;
    else if (strcmp(end, "h") == 0)
        mult = 3600 * 1000;
    else if (strcmp(end, "d") == 0)
        mult = 86400 * 1000LL;
    else if (strcmp(end, "w") == 0)
        mult = 7 * 86400 * 1000LL;
    else
        return BTL_EINVAL;
    if (v > INT64_MAX / mult)
        return BTL_ETOOBIG;
    *out_ms = v * mult;
    return 0;
}

int64_t btl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t btl_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void btl_sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    nanosleep(&ts, NULL); /* an interrupting signal ends the nap early: wanted */
}

/* Howard Hinnant's civil-date algorithms. */
int64_t btl_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void btl_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

int btl_format_iso8601(int64_t unix_ms, char *buf, size_t n)
{
    int64_t secs = floor_div(unix_ms, 1000);
    int ms = (int)(unix_ms - secs * 1000);
    int64_t days = floor_div(secs, 86400);
    int64_t sod = secs - days * 86400;
    int64_t y;
    unsigned m, d;
    btl_civil_from_days(days, &y, &m, &d);
    if (ms != 0)
        return btl_snprintf(buf, n, "%04lld-%02u-%02uT%02d:%02d:%02d.%03dZ", (long long)y, m, d,
                            (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60), ms);
    return btl_snprintf(buf, n, "%04lld-%02u-%02uT%02d:%02d:%02dZ", (long long)y, m, d,
                        (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60));
}

int btl_format_epoch_s(int64_t unix_ms, char *buf, size_t n)
{
    uint64_t mag = unix_ms < 0 ? (uint64_t)0 - (uint64_t)unix_ms : (uint64_t)unix_ms;
    return btl_snprintf(buf, n, "%s%llu.%03u", unix_ms < 0 ? "-" : "",
                        (unsigned long long)(mag / 1000), (unsigned)(mag % 1000));
}

static int take_digits(const char **p, int count, int *out)
{
    int v = 0;
    for (int i = 0; i < count; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return BTL_EINVAL;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += count;
    *out = v;
    return 0;
}

int btl_parse_iso8601(const char *s, int64_t *out_ms)
{
    int y, mo, d, h = 0, mi = 0, se = 0, ms = 0;
    const char *p = s;
    if (s == NULL || take_digits(&p, 4, &y) || *p++ != '-' || take_digits(&p, 2, &mo) ||
        *p++ != '-' || take_digits(&p, 2, &d))
        return BTL_EINVAL;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (take_digits(&p, 2, &h) || *p++ != ':' || take_digits(&p, 2, &mi))
            return BTL_EINVAL;
        if (*p == ':') {
            p++;
            if (take_digits(&p, 2, &se))
                return BTL_EINVAL;
            if (*p == '.') {
                p++;
                int scale = 100, digits = 0;
                while (isdigit((unsigned char)*p)) {
                    if (digits++ < 3) {
                        ms += (*p - '0') * scale;
                        scale /= 10;
                    }
                    p++;
                }
                if (digits == 0)
                    return BTL_EINVAL;
            }
        }
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
        if (take_digits(&p, 2, &oh))
            return BTL_EINVAL;
        if (*p == ':')
            p++;
        if (isdigit((unsigned char)*p) && take_digits(&p, 2, &om))
            return BTL_EINVAL;
        offset_min = sign * (oh * 60 + om);
    }
    if (*p != '\0')
        return BTL_EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60)
        return BTL_EINVAL;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap))
        return BTL_EINVAL;
    int64_t days = btl_days_from_civil(y, (unsigned)mo, (unsigned)d);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + se - (int64_t)offset_min * 60;
    *out_ms = secs * 1000 + ms;
    return 0;
}

void btl_buf_init(btl_buf *b, size_t limit)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->limit = limit ? limit : (size_t)64 << 20;
}

void btl_buf_free(btl_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void btl_buf_reset(btl_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

static int buf_reserve(btl_buf *b, size_t extra)
{
    if (extra > b->limit || b->len > b->limit - extra)
        return BTL_ETOOBIG;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < need)
        ncap *= 2;
    char *p = realloc(b->data, ncap);
    if (p == NULL)
        return BTL_ENOMEM;
    b->data = p;
    b->cap = ncap;
    return 0;
}

int btl_buf_append(btl_buf *b, const void *p, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int btl_buf_puts(btl_buf *b, const char *s)
{
    return btl_buf_append(b, s, strlen(s));
}

int btl_buf_vprintf(btl_buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    va_copy(cp, ap);
    int n = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    if (n < 0)
        return BTL_EINVAL;
    int rc = buf_reserve(b, (size_t)n);
    if (rc)
        return rc;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int btl_buf_printf(btl_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = btl_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

int btl_buf_json_str(btl_buf *b, const char *s)
{
    size_t start = b->len;
    int rc = btl_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; rc == 0 && *p; p++) {
        switch (*p) {
        case '"':
            rc = btl_buf_append(b, "\\\"", 2);
            break;
        case '\\':
            rc = btl_buf_append(b, "\\\\", 2);
            break;
        case '\n':
            rc = btl_buf_append(b, "\\n", 2);
            break;
        case '\r':
            rc = btl_buf_append(b, "\\r", 2);
            break;
        case '\t':
            rc = btl_buf_append(b, "\\t", 2);
            break;
        default:
            if (*p < 0x20)
                rc = btl_buf_printf(b, "\\u%04x", *p);
            else
                rc = btl_buf_append(b, p, 1);
        }
    }
    if (rc == 0)
        rc = btl_buf_append(b, "\"", 1);
    if (rc) { /* all or nothing */
        b->len = start;
        if (b->data)
            b->data[start] = '\0';
    }
    return rc;
}

char *btl_buf_steal(btl_buf *b)
{
    char *p = b->data;
    if (p == NULL)
        p = calloc(1, 1);
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

int btl_read_file(const char *path, size_t limit, char **out, size_t *len)
{
    int rc = 0;
    btl_buf b;
    btl_buf_init(&b, limit);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return btl_err_from_errno(errno);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if ((rc = btl_buf_append(&b, chunk, n)) != 0)
            goto out;
    }
    if (ferror(f)) {
        rc = BTL_EIO;
        goto out;
    }
    if (len)
        *len = b.len;
    *out = btl_buf_steal(&b);
out:
    fclose(f);
    btl_buf_free(&b);
    return rc;
}

void btl_default_instance(char *buf, size_t n)
{
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    btl_snprintf(buf, n, "%s/%ld", host, (long)getpid());
}

static _Thread_local uint64_t rng_state;

double btl_rand01(void)
{
    if (rng_state == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        rng_state = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)&ts;
        if (rng_state == 0)
            rng_state = 0x9E3779B97F4A7C15ULL;
    }
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rng_state = x;
    return (double)(x >> 11) / 9007199254740992.0;
}

int btl_pos_errorv(char *err, size_t errlen, const char *name, int line, int col, const char *fmt,
                   va_list ap)
{
    if (err == NULL || errlen == 0)
        return BTL_ECONFIG;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    btl_snprintf(err, errlen, "%s:%d:%d: %s", name, line, col, msg);
    return BTL_ECONFIG;
}

uint64_t btl_fnv1a64(uint64_t h, const char *s)
{
    for (; s && *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}
