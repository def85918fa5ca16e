/* libFuzzer target: schedule parser (btl_schedule_parse) and evaluation.
 *
 * Input: "EXPR\nTZ\nFROM" — TZ and FROM optional. FROM is an ISO-8601
 * instant or decimal unix ms (default 2026-01-01T00:00:00Z). A schedule
 * that parses is stepped with btl_schedule_next a few times (each result
 * must be strictly later) and asked for its period; jitter is checked
 * against its documented bound. */
#include "btl/err.h"
#include "btl/schedule.h"
#include "btl/util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FIELD_MAX 512

/* Copies the next '\n'-terminated field of [*p, end) into out. */
static void next_field(const uint8_t **p, const uint8_t *end, char *out, size_t cap)
{
    const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
    const uint8_t *stop = nl != NULL ? nl : end;
    size_t n = (size_t)(stop - *p);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, *p, n);
    out[n] = '\0';
    *p = nl != NULL ? nl + 1 : end;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char expr[FIELD_MAX], tz[FIELD_MAX], from[FIELD_MAX];
    const uint8_t *p = data, *end = data + size;
    next_field(&p, end, expr, sizeof expr);
    next_field(&p, end, tz, sizeof tz);
    next_field(&p, end, from, sizeof from);

    int64_t t = 1767225600000; /* 2026-01-01T00:00:00Z */
    if (from[0] != '\0' && btl_parse_iso8601(from, &t) != 0 &&
        btl_parse_i64(from, -62135596800000, 253402300799000, &t) != 0)
        t = 1767225600000;

    btl_schedule *s = NULL;
    char err[256];
    err[0] = '\0';
    int rc = btl_schedule_parse(expr, tz, &s, err, sizeof err);
    if (rc != 0) {
        if (s != NULL || err[0] == '\0')
            abort();
        return 0;
    }
    (void)btl_schedule_kind(s);
    (void)btl_schedule_tz(s);
    int64_t period = btl_schedule_period_at(s, t);
    if (period < 0)
        abort();
    for (int i = 0; i < 4; i++) {
        int64_t next = 0;
        if (btl_schedule_next(s, t, &next) != 0)
            break;
        if (next <= t)
            abort(); /* "strictly after" */
        t = next;
    }
    int64_t j = btl_schedule_jitter(t, period, (int)(size % 101), 0.999);
    if (j < t)
        abort(); /* jitter only delays */
    btl_schedule_free(s);
    return 0;
}
