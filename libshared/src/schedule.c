/* Schedules: parsing of "every"/cron/"once"/"immediate" expressions, next
 * fire times evaluated on a zone's wall clock, jitter and posting windows. */
#include "btl/schedule.h"

#include "btl/err.h"
#include "btl/util.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DAY 86400
#define EVERY_MAX_MS ((int64_t)3650 * DAY * 1000)
#define CRON_SEARCH_DAYS (8 * 366 + 2) /* "never fires" after 8 years */
/* Inputs are kept within +-4,400 years of 1970 so day arithmetic and
 * ms<->s conversions can never overflow. */
#define T_MS_LIMIT ((int64_t)1 << 47)

struct cron {
    uint64_t min;       /* bits 0..59 */
    uint32_t hour;      /* bits 0..23 */
    uint32_t dom;       /* bits 1..31 */
    bool dom_last;      /* L */
    uint16_t mon;       /* bits 1..12 */
    uint8_t dow;        /* bits 0..6, Sunday = 0 */
    uint8_t dow_nth[7]; /* per weekday, bit n = "#n" (1..5) */
    bool dom_star, dow_star, hour_star;
};

struct btl_schedule {
    enum btl_schedule_kind kind;
    int64_t interval_ms; /* every */
    int64_t once_ms;     /* once */
    struct cron cron;
    btl_tz *tz;
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap); /* bounded; truncation is fine for a reason */
    va_end(ap);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static int64_t floor_mod(int64_t a, int64_t b)
{
    return a - floor_div(a, b) * b;
}

static int month_len(int64_t y, unsigned m)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return mdays[m - 1] + ((m == 2 && leap) ? 1 : 0);
}

static bool ieq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (tolower((unsigned char)a[i]) != tolower((unsigned char)b[i]))
            return false;
    return true;
}

/* ---- cron fields ------------------------------------------------------- */

enum field_id { F_MIN, F_HOUR, F_DOM, F_MON, F_DOW };

struct field_spec {
    const char *name;
    int lo, hi;
    const char *const *names; /* names[i] is value names_base + i */
    int names_base, nnames;
};

static const char *const mon_names[] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                        "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
static const char *const dow_names[] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};

static const struct field_spec fields[5] = {
    {"minute", 0, 59, NULL, 0, 0},          {"hour", 0, 23, NULL, 0, 0},
    {"day-of-month", 1, 31, NULL, 0, 0},    {"month", 1, 12, mon_names, 1, 12},
    {"day-of-week", 0, 7, dow_names, 0, 7},
};

/* One value (number or name) of s[0..n). */
static int parse_value(const struct field_spec *f, const char *s, size_t n, int *out, char *err,
                       size_t errlen)
{
    if (n == 0) {
        seterr(err, errlen, "cron field '%s': missing value", f->name);
        return BTL_EINVAL;
    }
    if (isdigit((unsigned char)s[0])) {
        int64_t v = 0;
        for (size_t i = 0; i < n; i++) {
            if (!isdigit((unsigned char)s[i])) {
                seterr(err, errlen, "cron field '%s': bad value '%.*s'", f->name, (int)n, s);
                return BTL_EINVAL;
            }
            if (v < 1000000)
                v = v * 10 + (s[i] - '0');
        }
        if (v < f->lo || v > f->hi) {
            seterr(err, errlen, "cron field '%s': %.*s out of range %d-%d", f->name,
                   (int)(n > 12 ? 12 : n), s, f->lo, f->hi);
            return BTL_EINVAL;
        }
        *out = (int)v;
        return 0;
    }
    for (int i = 0; i < f->nnames; i++) {
        if (ieq(s, n, f->names[i])) {
            *out = f->names_base + i;
            return 0;
        }
    }
    if (f->names != NULL && n <= 16 && isalpha((unsigned char)s[0]))
        seterr(err, errlen, "cron field '%s': unknown name '%.*s'", f->name, (int)n, s);
    else
        seterr(err, errlen, "cron field '%s': bad value '%.*s'", f->name, (int)(n > 16 ? 16 : n),
               s);
    return BTL_EINVAL;
}

static size_t span_until(const char *s, size_t n, const char *stops)
{
    size_t i = 0;
    while (i < n && strchr(stops, s[i]) == NULL)
        i++;
    return i;
}

/* One comma-separated item of a field. */
static int parse_item(struct cron *c, enum field_id id, const char *s, size_t n, char *err,
                      size_t errlen)
{
    const struct field_spec *f = &fields[id];
    int rc;
    if (n == 0) {
        seterr(err, errlen, "cron field '%s': empty list item", f->name);
        return BTL_EINVAL;
    }
    if (id == F_DOM && ieq(s, n, "L")) {
        c->dom_last = true;
        return 0;
    }
    size_t hash = span_until(s, n, "#");
    if (hash < n) {
        int wd, nth;
        if (id != F_DOW) {
            seterr(err, errlen, "cron field '%s': '#' is only allowed in day-of-week", f->name);
            return BTL_EINVAL;
        }
        if ((rc = parse_value(f, s, hash, &wd, err, errlen)) != 0)
            return rc;
        const char *ns = s + hash + 1;
        size_t nn = n - hash - 1;
        if (nn != 1 || ns[0] < '1' || ns[0] > '5') {
            seterr(err, errlen, "cron field '%s': '#%.*s' must be #1 to #5", f->name,
                   (int)(nn > 8 ? 8 : nn), ns);
            return BTL_EINVAL;
        }
        nth = ns[0] - '0';
        c->dow_nth[wd % 7] |= (uint8_t)(1u << nth);
        return 0;
    }
    size_t slash = span_until(s, n, "/");
    size_t base_n = slash;
    int lo, hi, step = 1;
    /* Weekday 7 duplicates 0: "*" means 0-6. */
    int field_hi = id == F_DOW ? 6 : f->hi;
    if (slash < n) {
        const char *ss = s + slash + 1;
        size_t sn = n - slash - 1;
        int64_t v = 0;
        if (sn == 0 || sn > 4) {
            seterr(err, errlen, "cron field '%s': bad step '%.*s'", f->name, (int)(sn > 8 ? 8 : sn),
                   ss);
            return BTL_EINVAL;
        }
        for (size_t i = 0; i < sn; i++) {
            if (!isdigit((unsigned char)ss[i])) {
                seterr(err, errlen, "cron field '%s': bad step '%.*s'", f->name, (int)sn, ss);
                return BTL_EINVAL;
            }
            v = v * 10 + (ss[i] - '0');
        }
        int max_step = field_hi - f->lo + 1;
        if (v == 0) {
            seterr(err, errlen, "cron field '%s': step 0 is not allowed", f->name);
            return BTL_EINVAL;
        }
        if (v > max_step) {
            seterr(err, errlen, "cron field '%s': step %d out of range 1-%d", f->name, (int)v,
                   max_step);
            return BTL_EINVAL;
        }
        step = (int)v;
    }
    if (base_n == 1 && s[0] == '*') {
        lo = f->lo;
        hi = field_hi;
    } else {
        size_t dash = span_until(s, base_n, "-");
        if ((rc = parse_value(f, s, dash, &lo, err, errlen)) != 0)
            return rc;
        if (dash < base_n) {
            if ((rc = parse_value(f, s + dash + 1, base_n - dash - 1, &hi, err, errlen)) != 0)
                return rc;
            if (id == F_DOW && hi == 0 && lo > 0)
                hi = 7; /* FRI-SUN */
            if (lo > hi) {
                seterr(err, errlen, "cron field '%s': range %d-%d is backwards", f->name, lo, hi);
                return BTL_EINVAL;
            }
        } else {
            hi = slash < n ? field_hi : lo; /* "a/n" = a to the end */
            if (hi < lo)
                hi = lo;
        }
    }
    for (int v = lo; v <= hi; v += step) {
        switch (id) {
        case F_MIN:
            c->min |= (uint64_t)1 << v;
            break;
        case F_HOUR:
            c->hour |= (uint32_t)1 << v;
            break;
        case F_DOM:
            c->dom |= (uint32_t)1 << v;
            break;
        case F_MON:
            c->mon |= (uint16_t)(1u << v);
            break;
        case F_DOW:
            c->dow |= (uint8_t)(1u << (v % 7));
            break;
        }
    }
    return 0;
}

static int parse_field(struct cron *c, enum field_id id, const char *s, size_t n, char *err,
                       size_t errlen)
{
    size_t pos = 0;
    for (;;) {
        size_t len = span_until(s + pos, n - pos, ",");
        int rc = parse_item(c, id, s + pos, len, err, errlen);
        if (rc != 0)
            return rc;
        pos += len;
        if (pos >= n)
            break;
        pos++; /* the comma; a trailing comma gives an empty item */
        if (pos == n) {
            seterr(err, errlen, "cron field '%s': empty list item", fields[id].name);
            return BTL_EINVAL;
        }
    }
    switch (id) {
    case F_MIN:
        break;
    case F_HOUR:
        c->hour_star = s[0] == '*';
        break;
    case F_DOM:
        c->dom_star = s[0] == '*';
        break;
    case F_MON:
        break;
    case F_DOW:
        c->dow_star = s[0] == '*';
        break;
    }
    return 0;
}

static int parse_cron(struct cron *c, const char *expr, char *err, size_t errlen)
{
    const char *start[6];
    size_t len[6];
    int nf = 0;
    const char *p = expr;
    memset(c, 0, sizeof *c);
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            break;
        const char *b = p;
        while (*p != '\0' && *p != ' ' && *p != '\t')
            p++;
        if (nf < 6) {
            start[nf] = b;
            len[nf] = (size_t)(p - b);
        }
        nf++;
    }
    if (nf == 1) {
        seterr(err, errlen,
               "unrecognised schedule '%.40s' (expected 'every <duration>', 'once <ISO-8601>', "
               "'immediate', an @macro or a 5-field cron expression)",
               start[0]);
        return BTL_EINVAL;
    }
    if (nf != 5) {
        seterr(err, errlen,
               "cron expression needs 5 fields (minute hour day-of-month month day-of-week), "
               "got %d",
               nf);
        return BTL_EINVAL;
    }
    for (int i = 0; i < 5; i++) {
        int rc = parse_field(c, (enum field_id)i, start[i], len[i], err, errlen);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- cron evaluation --------------------------------------------------- */

static bool day_matches(const struct cron *c, int64_t day)
{
    int64_t y;
    unsigned m, d;
    btl_civil_from_days(day, &y, &m, &d);
    if (!(c->mon & (1u << m)))
        return false;
    int wd = (int)floor_mod(day + 4, 7); /* 1970-01-01 was a Thursday */
    bool dom_ok = (c->dom & (1u << d)) || (c->dom_last && (int)d == month_len(y, m));
    bool dow_ok = (c->dow & (1u << wd)) || (c->dow_nth[wd] & (1u << ((d - 1) / 7 + 1)));
    /* Vixie rule: both restricted -> either may match. */
    if (!c->dom_star && !c->dow_star)
        return dom_ok || dow_ok;
    return dom_ok && dow_ok;
}

/* Earliest fire instant > after_s among the wall times of local day `day`.
 * *slow is set when a UTC-offset change is near, where wall order and
 * instant order may disagree. */
static bool day_first_fire(const struct cron *c, const btl_tz *tz, int64_t day, int64_t after_s,
                           int64_t *out, bool *slow)
{
    int64_t ws = day * DAY, nt;
    /* Every instant of this day's walls lies in [ws - 26 h, ws + 50 h]. */
    *slow = btl_tz_next_transition(tz, ws - 2 * DAY, &nt) == 0 && nt <= ws + 3 * DAY;
    if (!*slow) {
        int64_t off = btl_tz_offset_at(tz, ws);
        for (int h = 0; h < 24; h++) {
            if (!(c->hour & (1u << h)) || ws + h * 3600 + 59 * 60 - off <= after_s)
                continue;
            for (int m = 0; m < 60; m++) {
                int64_t u = ws + h * 3600 + m * 60 - off;
                if ((c->min & ((uint64_t)1 << m)) && u > after_s) {
                    *out = u;
                    return true;
                }
            }
        }
        return false;
    }
    bool found = false;
    int64_t best = 0;
    for (int h = 0; h < 24; h++) {
        if (!(c->hour & (1u << h)))
            continue;
        for (int m = 0; m < 60; m++) {
            if (!(c->min & ((uint64_t)1 << m)))
                continue;
            int64_t first, second;
            int n = btl_tz_resolve(tz, ws + h * 3600 + m * 60, &first, &second);
            /* In a gap `first` is already shifted forward by the gap. A
             * repeated wall time fires again only for periodic-hour jobs. */
            int64_t cand[2] = {first, second};
            int ncand = (n == 2 && c->hour_star) ? 2 : 1;
            for (int i = 0; i < ncand; i++) {
                if (cand[i] > after_s && (!found || cand[i] < best)) {
                    best = cand[i];
                    found = true;
                }
            }
        }
    }
    if (found)
        *out = best;
    return found;
}

static int cron_next(const struct cron *c, const btl_tz *tz, int64_t after_s, int64_t *out_s)
{
    /* Start a day early: a gap shift can move a wall time forward past the
     * local date of after_s. */
    int64_t day = floor_div(after_s + btl_tz_offset_at(tz, after_s), DAY) - 1;
    int64_t end = day + CRON_SEARCH_DAYS;
    while (day <= end) {
        int64_t y;
        unsigned m, d;
        btl_civil_from_days(day, &y, &m, &d);
        if (!(c->mon & (1u << m))) { /* skip the whole month */
            day += month_len(y, m) - (int)d + 1;
            continue;
        }
        int64_t best;
        bool slow;
        if (day_matches(c, day) && day_first_fire(c, tz, day, after_s, &best, &slow)) {
            int64_t alt;
            bool slow2;
            /* Near a transition the next day's walls may map earlier. */
            if (slow && day_matches(c, day + 1) &&
                day_first_fire(c, tz, day + 1, after_s, &alt, &slow2) && alt < best)
                best = alt;
            *out_s = best;
            return 0;
        }
        day++;
    }
    return BTL_ENOTFOUND;
}

/* ---- parse ------------------------------------------------------------- */

static int parse_every(const char *s, int64_t *out_ms, char *err, size_t errlen)
{
    const char *p = s;
    int64_t total = 0;
    int parts = 0;
    while (*p != '\0') {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            break;
        if (!isdigit((unsigned char)*p))
            goto bad;
        int64_t v = 0;
        int digits = 0;
        while (isdigit((unsigned char)*p)) {
            if (++digits > 12)
                goto bad;
            v = v * 10 + (*p++ - '0');
        }
        int64_t unit;
        if (strncmp(p, "ms", 2) == 0) {
            unit = 1;
            p += 2;
        } else if (*p == 's') {
            unit = 1000;
            p++;
        } else if (*p == 'm') {
            unit = 60 * 1000;
            p++;
        } else if (*p == 'h') {
            unit = 3600 * 1000;
            p++;
        } else if (*p == 'd') {
            unit = (int64_t)DAY * 1000;
            p++;
        } else if (*p == 'w') {
            unit = (int64_t)7 * DAY * 1000;
            p++;
        } else if (*p == '\0' && parts == 0) {
            unit = 1000; /* bare number = seconds */
        } else {
            goto bad;
        }
        if (isalpha((unsigned char)*p))
            goto bad;
        /* v < 10^12 and unit <= 6.05e8: each term fits, and the running
         * total is checked before it can grow past the cap. */
        if (v > EVERY_MAX_MS / unit + 1)
            goto too_big;
        total += v * unit;
        if (total > EVERY_MAX_MS)
            goto too_big;
        parts++;
    }
    if (parts == 0)
        goto bad;
    if (total <= 0) {
        seterr(err, errlen, "every: interval must be positive");
        return BTL_EINVAL;
    }
    *out_ms = total;
    return 0;
too_big:
    seterr(err, errlen, "every: interval '%.40s' exceeds 3650 days", s);
    return BTL_EINVAL;
bad:
    seterr(err, errlen, "every: bad duration '%.40s' (use e.g. 90s, 15m, 2h, 1d, 1h30m)", s);
    return BTL_EINVAL;
}

/* Does an ISO-8601 string carry its own zone (Z or +-hh:mm after the time)? */
static bool iso_has_zone(const char *s)
{
    size_t n = strlen(s);
    if (n <= 10)
        return false;
    for (size_t i = 11; i < n; i++)
        if (s[i] == 'Z' || s[i] == 'z' || s[i] == '+' || s[i] == '-')
            return true;
    return false;
}

static int parse_once(const char *s, const btl_tz *tz, int64_t *out_ms, char *err, size_t errlen)
{
    int64_t ms;
    if (btl_parse_iso8601(s, &ms) != 0 || ms < -T_MS_LIMIT || ms > T_MS_LIMIT) {
        seterr(err, errlen, "once: bad ISO-8601 time '%.40s' (e.g. 2026-12-01T09:00:00Z)", s);
        return BTL_EINVAL;
    }
    if (!iso_has_zone(s)) {
        /* Zone-less: a wall time in the schedule's zone. */
        int64_t wall_s = floor_div(ms, 1000), first;
        btl_tz_resolve(tz, wall_s, &first, NULL);
        ms = first * 1000 + floor_mod(ms, 1000);
    }
    *out_ms = ms;
    return 0;
}

static const struct {
    const char *name, *cron;
} macros[] = {
    {"@hourly", "0 * * * *"},   {"@daily", "0 0 * * *"},   {"@midnight", "0 0 * * *"},
    {"@weekly", "0 0 * * 0"},   {"@monthly", "0 0 1 * *"}, {"@yearly", "0 0 1 1 *"},
    {"@annually", "0 0 1 1 *"},
};

/* Leading keyword of s (up to whitespace) equals kw, case-insensitively;
 * *rest points past it and its trailing whitespace. */
static bool keyword(const char *s, const char *kw, const char **rest)
{
    size_t n = strlen(kw);
    if (strncasecmp(s, kw, n) != 0 || (s[n] != '\0' && s[n] != ' ' && s[n] != '\t'))
        return false;
    s += n;
    while (*s == ' ' || *s == '\t')
        s++;
    *rest = s;
    return true;
}

int btl_schedule_parse(const char *expr, const char *tzname, btl_schedule **out, char *err,
                       size_t errlen)
{
    int rc = 0;
    btl_schedule *s = NULL;
    char buf[BTL_SCHEDULE_EXPR_MAX + 1];
    const char *rest;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (out == NULL) {
        seterr(err, errlen, "no output pointer");
        return BTL_EINVAL;
    }
    *out = NULL;
    if (expr == NULL) {
        seterr(err, errlen, "empty schedule");
        return BTL_EINVAL;
    }
    /* Trim and bound. */
    while (*expr == ' ' || *expr == '\t' || *expr == '\n' || *expr == '\r')
        expr++;
    size_t n = strnlen(expr, sizeof buf);
    if (n >= sizeof buf) {
        seterr(err, errlen, "schedule longer than %d bytes", BTL_SCHEDULE_EXPR_MAX);
        return BTL_EINVAL;
    }
    memcpy(buf, expr, n);
    buf[n] = '\0';
    while (n > 0 &&
           (buf[n - 1] == ' ' || buf[n - 1] == '\t' || buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    if (n == 0) {
        seterr(err, errlen, "empty schedule");
        return BTL_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!isprint((unsigned char)buf[i]) && buf[i] != '\t') {
            seterr(err, errlen, "schedule contains a control or non-ASCII byte");
            return BTL_EINVAL;
        }
    }

    s = calloc(1, sizeof *s);
    if (s == NULL)
        return BTL_ENOMEM;
    const char *zone = (tzname == NULL || tzname[0] == '\0') ? "UTC" : tzname;
    if ((rc = btl_tz_load(zone, &s->tz)) != 0) {
        if (rc == BTL_ENOTFOUND)
            seterr(err, errlen, "unknown time zone '%.64s'", zone);
        else
            seterr(err, errlen, "cannot load time zone '%.64s': %s", zone, btl_strerror(rc));
        goto out;
    }

    if (keyword(buf, "immediate", &rest)) {
        if (*rest != '\0') {
            seterr(err, errlen, "immediate takes no argument");
            rc = BTL_EINVAL;
            goto out;
        }
        s->kind = BTL_SCHED_IMMEDIATE;
    } else if (keyword(buf, "every", &rest)) {
        s->kind = BTL_SCHED_EVERY;
        rc = parse_every(rest, &s->interval_ms, err, errlen);
    } else if (keyword(buf, "once", &rest)) {
        s->kind = BTL_SCHED_ONCE;
        rc = parse_once(rest, s->tz, &s->once_ms, err, errlen);
    } else if (buf[0] == '@') {
        const char *cron = NULL;
        for (size_t i = 0; i < BTL_ARRAY_LEN(macros); i++)
            if (strcasecmp(buf, macros[i].name) == 0)
                cron = macros[i].cron;
        if (cron == NULL) {
            seterr(err, errlen,
                   "unknown macro '%.32s' (use @hourly @daily @midnight @weekly "
                   "@monthly @yearly @annually)",
                   buf);
            rc = BTL_EINVAL;
            goto out;
        }
        s->kind = BTL_SCHED_CRON;
        rc = parse_cron(&s->cron, cron, err, errlen);
    } else {
        s->kind = BTL_SCHED_CRON;
        rc = parse_cron(&s->cron, buf, err, errlen);
    }
    if (rc != 0)
        goto out;
    *out = s;
    s = NULL;
out:
    btl_schedule_free(s);
    return rc;
}

void btl_schedule_free(btl_schedule *s)
{
    if (s == NULL)
        return;
    btl_tz_free(s->tz);
    free(s);
}

enum btl_schedule_kind btl_schedule_kind(const btl_schedule *s)
{
    return s ? s->kind : BTL_SCHED_IMMEDIATE;
}

const btl_tz *btl_schedule_tz(const btl_schedule *s)
{
    return s ? s->tz : NULL;
}

int btl_schedule_next(const btl_schedule *s, int64_t after_ms, int64_t *next_ms)
{
    if (s == NULL || next_ms == NULL || after_ms < -T_MS_LIMIT || after_ms > T_MS_LIMIT)
        return BTL_EINVAL;
    switch (s->kind) {
    case BTL_SCHED_EVERY:
        *next_ms = after_ms + s->interval_ms; /* both bounded: no overflow */
        return 0;
    case BTL_SCHED_ONCE:
        if (s->once_ms > after_ms) {
            *next_ms = s->once_ms;
            return 0;
        }
        return BTL_ENOTFOUND;
    case BTL_SCHED_IMMEDIATE:
        return BTL_ENOTFOUND;
    case BTL_SCHED_CRON: {
        int64_t u;
        /* A fire at u seconds is after after_ms iff u > floor(after_ms/1000). */
        int rc = cron_next(&s->cron, s->tz, floor_div(after_ms, 1000), &u);
        if (rc != 0)
            return rc;
        *next_ms = u * 1000;
        return 0;
    }
    }
    return BTL_EINVAL;
}

int64_t btl_schedule_period_at(const btl_schedule *s, int64_t at_ms)
{
    if (s == NULL)
        return 0;
    if (s->kind == BTL_SCHED_EVERY)
        return s->interval_ms;
    if (s->kind != BTL_SCHED_CRON)
        return 0;
    int64_t a, b;
    if (btl_schedule_next(s, at_ms, &a) != 0 || btl_schedule_next(s, a, &b) != 0)
        return 0;
    return b - a;
}

int64_t btl_schedule_period_ms(const btl_schedule *s)
{
    return btl_schedule_period_at(s, btl_now_ms());
}

int64_t btl_schedule_jitter(int64_t due_ms, int64_t period_ms, int percent, double r)
{
    if (percent <= 0 || period_ms <= 0 || !(r > 0.0)) /* also catches NaN */
        return due_ms;
    if (percent > 100)
        percent = 100;
    if (r > 1.0)
        r = 1.0;
    double span = (double)period_ms * percent / 100.0; /* exclusive bound */
    double dl = floor(r * span);
    if (dl >= span)
        dl = ceil(span) - 1.0; /* rounding near r = 1 must not reach the bound */
    if (dl < 0.0)
        dl = 0.0;
    if (dl > 9.0e18)
        dl = 9.0e18;
    int64_t delay = (int64_t)dl;
    if (due_ms > INT64_MAX - delay)
        return INT64_MAX;
    return due_ms + delay;
}

/* ---- windows ----------------------------------------------------------- */

int btl_window_parse_hhmm(const char *s, int *out_min)
{
    if (s == NULL || out_min == NULL || strlen(s) != 5 || s[2] != ':')
        return BTL_EINVAL;
    for (int i = 0; i < 5; i++)
        if (i != 2 && !isdigit((unsigned char)s[i]))
            return BTL_EINVAL;
    int h = (s[0] - '0') * 10 + (s[1] - '0');
    int m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h == 24 && m == 0) {
        *out_min = 1440;
        return 0;
    }
    if (h > 23 || m > 59)
        return BTL_EINVAL;
    *out_min = h * 60 + m;
    return 0;
}

static bool window_valid(const btl_window *w)
{
    return w->from_min >= 0 && w->from_min < 1440 && w->to_min >= 0 && w->to_min <= 1440;
}

static bool window_has(const btl_window *w, int64_t t_s)
{
    int from = w->from_min, to = w->to_min == 1440 ? 0 : w->to_min;
    if (from == to)
        return true;
    int m = (int)(floor_mod(t_s + btl_tz_offset_at(w->tz, t_s), DAY) / 60);
    return from < to ? (m >= from && m < to) : (m >= from || m < to);
}

bool btl_window_contains(const btl_window *w, int64_t t_ms)
{
    if (w == NULL)
        return true;
    if (!window_valid(w))
        return false;
    return window_has(w, floor_div(t_ms, 1000));
}

int64_t btl_window_adjust(const btl_window *w, int64_t t_ms)
{
    if (w == NULL || !window_valid(w) || t_ms < -T_MS_LIMIT || t_ms > T_MS_LIMIT)
        return t_ms;
    int64_t t_s = floor_div(t_ms, 1000);
    if (window_has(w, t_s))
        return t_ms;
    bool found = false;
    int64_t best = 0;
    /* Candidate openings: the from wall time on nearby days (each
     * occurrence; after a gap, the gap's end), and any offset change that
     * jumps the clock into the window. */
    int64_t day0 = floor_div(t_s + btl_tz_offset_at(w->tz, t_s), DAY);
    for (int64_t d = day0 - 1; d <= day0 + 3; d++) {
        int64_t first, second;
        int n = btl_tz_resolve(w->tz, d * DAY + (int64_t)w->from_min * 60, &first, &second);
        int64_t cand[2] = {n == 0 ? second : first, second};
        for (int i = 0; i < 2; i++) {
            if (cand[i] > t_s && window_has(w, cand[i]) && (!found || cand[i] < best)) {
                best = cand[i];
                found = true;
            }
        }
    }
    int64_t at = t_s, tr;
    for (int i = 0; i < 8 && w->tz != NULL && btl_tz_next_transition(w->tz, at, &tr) == 0 &&
                    tr <= t_s + 4 * DAY;
         i++) {
        if (window_has(w, tr) && (!found || tr < best)) {
            best = tr;
            found = true;
        }
        at = tr;
    }
    return found ? best * 1000 : t_ms;
}
