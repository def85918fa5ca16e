/* Bounded string, number, time and buffer helpers. Nothing here logs. */
#ifndef BTL_UTIL_H
#define BTL_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BTL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Copy src into dst (size n, n > 0), always NUL-terminated.
 * Returns BTL_ETOOBIG if src was truncated. */
int btl_strlcpy(char *dst, const char *src, size_t n);

/* snprintf that returns BTL_ETOOBIG on truncation instead of a length. */
int btl_snprintf(char *dst, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define BTL_FNV1A64_INIT 0xcbf29ce484222325ULL

/* FNV-1a (64 bit) of the NUL-terminated s (NULL hashes as ""), continuing
 * from h (BTL_FNV1A64_INIT to start). Not cryptographic: for stable ids,
 * nonces, seeds and change detection. */
uint64_t btl_fnv1a64(uint64_t h, const char *s);

/* Strict integer parse of the whole string within [min, max]. */
int btl_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
int btl_parse_double(const char *s, double *out);

/* Durations: "1500ms", "90s", "15m", "2h", "1d", "2w"; bare number = seconds.
 * Result in milliseconds. */
int btl_parse_duration_ms(const char *s, int64_t *out_ms);

/* Wall clock and monotonic clock, milliseconds. */
int64_t btl_now_ms(void);
int64_t btl_mono_ms(void);
/* Sleep; a signal may end it early (callers re-check their stop flag). */
void btl_sleep_ms(int64_t ms);

/* ISO-8601 UTC "2026-01-01T09:00:00Z" (seconds) or with ".mmm" when ms != 0.
 * buf needs 32 bytes. */
int btl_format_iso8601(int64_t unix_ms, char *buf, size_t n);
/* Unix milliseconds as seconds text with 3 decimals ("1767258000.123"),
 * as Postgres' to_timestamp($1::float8) takes it. buf needs 32 bytes. */
int btl_format_epoch_s(int64_t unix_ms, char *buf, size_t n);
/* Parses "YYYY-MM-DDTHH:MM[:SS[.fff]](Z|±HH:MM)"; a missing zone means UTC. */
int btl_parse_iso8601(const char *s, int64_t *out_ms);

/* Days since 1970-01-01 for a proleptic Gregorian civil date, and back. */
int64_t btl_days_from_civil(int64_t y, unsigned m, unsigned d);
void btl_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);

/* Growable byte buffer with a hard cap: appends past cap fail with
 * BTL_ETOOBIG and leave the buffer unchanged. data is always NUL-terminated.
 * Owner calls btl_buf_free(). */
typedef struct btl_buf {
    char *data;
    size_t len;
    size_t cap;   /* allocated */
    size_t limit; /* max len, 0 = 64 MiB */
} btl_buf;

void btl_buf_init(btl_buf *b, size_t limit);
void btl_buf_free(btl_buf *b);
void btl_buf_reset(btl_buf *b);
int btl_buf_append(btl_buf *b, const void *p, size_t n);
int btl_buf_puts(btl_buf *b, const char *s);
int btl_buf_printf(btl_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int btl_buf_vprintf(btl_buf *b, const char *fmt, va_list ap);
/* Appends s as a JSON string literal (with quotes), escaping as needed. */
int btl_buf_json_str(btl_buf *b, const char *s);
/* Detach data (caller frees with free()); buffer becomes empty. */
char *btl_buf_steal(btl_buf *b);

/* Read a whole file (at most limit bytes) into *out (NUL-terminated, caller
 * frees). */
int btl_read_file(const char *path, size_t limit, char **out, size_t *len);

/* Writes "NAME:LINE:COL: message" into err (errlen > 0), the message made
 * one printable line (control bytes become '?': it quotes user text).
 * Returns BTL_ECONFIG, the code of every positioned file error. */
int btl_pos_errorv(char *err, size_t errlen, const char *name, int line, int col, const char *fmt,
                   va_list ap) __attribute__((format(printf, 6, 0)));

/* Hostname-pid style identity for `src`/`instance`: "host/pid". */
void btl_default_instance(char *buf, size_t n);

/* Fast non-cryptographic PRNG (xorshift), thread-local state seeded from
 * time and pid; returns uniform [0,1). */
double btl_rand01(void);

#endif
