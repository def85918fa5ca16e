/* TZif (RFC 8536) reader and POSIX TZ rule evaluator. Everything here is
 * pure computation over an immutable btl_tz; no process TZ state. */
#include "btl/tz.h"

#include "btl/err.h"
#include "btl/util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TZ_FILE_MAX (512 * 1024) /* real TZif files are < 4 KiB */
#define TZ_COUNT_MAX (1u << 20)  /* keeps size arithmetic far from overflow */
#define TZ_OFF_MAX (26 * 3600)   /* RFC 8536 bounds utoff to about +-26 h */
#define TZ_FOOTER_MAX 256
#define DAY 86400

enum rule_kind { RULE_J, RULE_N, RULE_M };

/* One end of a POSIX DST rule: a date form plus a local time of day. */
struct rule_date {
    int kind;
    int day;   /* J: 1..365, N: 0..365, M: weekday 0..6 */
    int week;  /* M only: 1..5 (5 = last) */
    int month; /* M only: 1..12 */
    int32_t time;
};

struct posix_tz {
    int32_t std_off; /* seconds east */
    int32_t dst_off;
    bool has_dst;
    struct rule_date start, end;
};

struct btl_tz {
    char name[BTL_TZ_NAME_MAX + 1];
    int32_t first_off; /* before the first transition */
    size_t n;          /* transitions kept (only real offset changes) */
    int64_t *at;
    int32_t *off; /* offset from at[i] on */
    bool has_table_end;
    int64_t table_end; /* last raw transition: the footer rules from here */
    bool has_footer;
    struct posix_tz footer;
};

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* Calendar arithmetic stays exact and overflow-free within +-34,000 years;
 * instants beyond are treated as the edge (nobody schedules there). */
#define TZ_T_LIMIT ((int64_t)1 << 40)
static int64_t clamp_t(int64_t t)
{
    return t < -TZ_T_LIMIT ? -TZ_T_LIMIT : t > TZ_T_LIMIT ? TZ_T_LIMIT : t;
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int64_t year_of(int64_t unix_s)
{
    int64_t y;
    unsigned m, d;
    btl_civil_from_days(floor_div(unix_s, DAY), &y, &m, &d);
    return y;
}

/* ---- POSIX TZ footer ---------------------------------------------------- */

static bool parse_num(const char **pp, int maxdigits, int *out)
{
    const char *p = *pp;
    int v = 0, n = 0;
    while (*p >= '0' && *p <= '9') {
        if (n++ == maxdigits)
            return false;
        v = v * 10 + (*p++ - '0');
    }
    if (n == 0)
        return false;
    *pp = p;
    *out = v;
    return true;
}

/* [+-]hh[:mm[:ss]] with hh <= maxh; returns signed seconds as written. */
static bool parse_hms(const char **pp, int maxh, int32_t *out)
{
    const char *p = *pp;
    int sign = 1, h, m = 0, s = 0;
    if (*p == '+' || *p == '-')
        sign = *p++ == '-' ? -1 : 1;
    if (!parse_num(&p, 3, &h) || h > maxh)
        return false;
    if (*p == ':') {
        p++;
        if (!parse_num(&p, 2, &m) || m > 59)
            return false;
        if (*p == ':') {
            p++;
            if (!parse_num(&p, 2, &s) || s > 59)
                return false;
        }
    }
    *pp = p;
    *out = sign * (h * 3600 + m * 60 + s);
    return true;
}

static bool parse_abbr(const char **pp)
{
    const char *p = *pp;
    int n = 0;
    if (*p == '<') {
        p++;
        while (*p != '>') {
            bool ok = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                      (*p >= '0' && *p <= '9') || *p == '+' || *p == '-';
            if (!ok)
                return false;
            p++;
            n++;
        }
        p++;
    } else {
        while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')) {
            p++;
            n++;
        }
    }
    if (n < 3)
        return false;
    *pp = p;
    return true;
}

static bool parse_rule_date(const char **pp, struct rule_date *r)
{
    const char *p = *pp;
    if (*p == 'J') {
        p++;
        r->kind = RULE_J;
        if (!parse_num(&p, 3, &r->day) || r->day < 1 || r->day > 365)
            return false;
    } else if (*p == 'M') {
        p++;
        r->kind = RULE_M;
        if (!parse_num(&p, 2, &r->month) || r->month < 1 || r->month > 12 || *p++ != '.' ||
            !parse_num(&p, 1, &r->week) || r->week < 1 || r->week > 5 || *p++ != '.' ||
            !parse_num(&p, 1, &r->day) || r->day > 6)
            return false;
    } else {
        r->kind = RULE_N;
        if (!parse_num(&p, 3, &r->day) || r->day > 365)
            return false;
    }
    r->time = 7200; /* POSIX default 02:00 */
    if (*p == '/') {
        p++;
        /* RFC 8536 extends rule times to -167..167 hours. */
        if (!parse_hms(&p, 167, &r->time))
            return false;
    }
    *pp = p;
    return true;
}

static int parse_posix_tz(const char *s, struct posix_tz *tz)
{
    const char *p = s;
    int32_t west;
    memset(tz, 0, sizeof *tz);
    if (!parse_abbr(&p) || !parse_hms(&p, 24, &west))
        return BTL_EINVAL;
    tz->std_off = -west; /* POSIX counts west of Greenwich as positive */
    if (*p == '\0')
        return 0;
    if (!parse_abbr(&p))
        return BTL_EINVAL;
    tz->has_dst = true;
    tz->dst_off = tz->std_off + 3600;
    if (*p != ',' && *p != '\0') {
        if (!parse_hms(&p, 24, &west))
            return BTL_EINVAL;
        tz->dst_off = -west;
    }
    if (*p == '\0') {
        /* No rule given: the traditional US default. */
        tz->start = (struct rule_date){RULE_M, 0, 2, 3, 7200};
        tz->end = (struct rule_date){RULE_M, 0, 1, 11, 7200};
        return 0;
    }
    if (*p++ != ',' || !parse_rule_date(&p, &tz->start) || *p++ != ',' ||
        !parse_rule_date(&p, &tz->end) || *p != '\0')
        return BTL_EINVAL;
    return 0;
}

/* Days since the epoch of the rule's date in year y. */
static int64_t rule_day(const struct rule_date *r, int64_t y)
{
    int64_t jan1 = btl_days_from_civil(y, 1, 1);
    switch (r->kind) {
    case RULE_J: /* Feb 29 is never counted */
        return jan1 + r->day - 1 + ((is_leap(y) && r->day >= 60) ? 1 : 0);
    case RULE_N:
        return jan1 + r->day;
    default: {
        static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        int len = mdays[r->month - 1] + ((r->month == 2 && is_leap(y)) ? 1 : 0);
        int64_t first = btl_days_from_civil(y, (unsigned)r->month, 1);
        int dow1 = (int)((first + 4) % 7 + 7) % 7;
        int dom = 1 + (r->day - dow1 + 7) % 7 + (r->week - 1) * 7;
        while (dom > len)
            dom -= 7;
        return first + dom - 1;
    }
    }
}

struct rule_event {
    int64_t at;
    bool to_dst;
};

/* DST start/end instants of years y0..y0+nyears-1, sorted; ends sort before
 * starts at the same instant so that all-year DST ("0/0,J365/25") stays DST. */
static size_t rule_events(const struct posix_tz *tz, int64_t y0, int nyears, struct rule_event *ev)
{
    size_t n = 0;
    for (int i = 0; i < nyears; i++) {
        int64_t y = y0 + i;
        /* The start time is local standard time, the end local DST time. */
        ev[n++] =
            (struct rule_event){rule_day(&tz->start, y) * DAY + tz->start.time - tz->std_off, true};
        ev[n++] =
            (struct rule_event){rule_day(&tz->end, y) * DAY + tz->end.time - tz->dst_off, false};
    }
    for (size_t i = 1; i < n; i++) {
        struct rule_event e = ev[i];
        size_t j = i;
        while (j > 0 &&
               (ev[j - 1].at > e.at || (ev[j - 1].at == e.at && ev[j - 1].to_dst && !e.to_dst))) {
            ev[j] = ev[j - 1];
            j--;
        }
        ev[j] = e;
    }
    return n;
}

static int32_t footer_offset(const struct posix_tz *tz, int64_t t)
{
    if (!tz->has_dst)
        return tz->std_off;
    struct rule_event ev[6];
    size_t n = rule_events(tz, year_of(t) - 1, 3, ev);
    int32_t off = tz->std_off;
    for (size_t i = 0; i < n && ev[i].at <= t; i++)
        off = ev[i].to_dst ? tz->dst_off : tz->std_off;
    return off;
}

/* ---- TZif ---------------------------------------------------------------- */

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const uint8_t *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

struct tzif_hdr {
    char version;
    uint32_t isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt;
};

static int read_hdr(const uint8_t *d, size_t len, size_t pos, struct tzif_hdr *h)
{
    if (len < 44 || pos > len - 44 || memcmp(d + pos, "TZif", 4) != 0)
        return BTL_EINVAL;
    const uint8_t *p = d + pos;
    h->version = (char)p[4];
    h->isutcnt = be32(p + 20);
    h->isstdcnt = be32(p + 24);
    h->leapcnt = be32(p + 28);
    h->timecnt = be32(p + 32);
    h->typecnt = be32(p + 36);
    h->charcnt = be32(p + 40);
    if (h->isutcnt > TZ_COUNT_MAX || h->isstdcnt > TZ_COUNT_MAX || h->leapcnt > TZ_COUNT_MAX ||
        h->timecnt > TZ_COUNT_MAX || h->typecnt > 256 || h->charcnt > TZ_COUNT_MAX)
        return BTL_EINVAL;
    if (h->typecnt == 0 || (h->isutcnt != 0 && h->isutcnt != h->typecnt) ||
        (h->isstdcnt != 0 && h->isstdcnt != h->typecnt))
        return BTL_EINVAL;
    return 0;
}

static size_t block_size(const struct tzif_hdr *h, size_t tsize)
{
    return (size_t)h->timecnt * (tsize + 1) + (size_t)h->typecnt * 6 + h->charcnt +
           (size_t)h->leapcnt * (tsize + 4) + h->isstdcnt + h->isutcnt;
}

/* Reads the data block at pos (times of tsize bytes) into tz. */
static int read_block(btl_tz *tz, const uint8_t *d, size_t len, size_t pos,
                      const struct tzif_hdr *h, size_t tsize)
{
    if (block_size(h, tsize) > len - pos)
        return BTL_EINVAL;
    const uint8_t *times = d + pos;
    const uint8_t *idx = times + (size_t)h->timecnt * tsize;
    const uint8_t *types = idx + h->timecnt;
    int32_t utoff[256];
    for (uint32_t i = 0; i < h->typecnt; i++) {
        int32_t o = (int32_t)be32(types + 6 * (size_t)i);
        if (o < -TZ_OFF_MAX || o > TZ_OFF_MAX || types[6 * (size_t)i + 4] > 1)
            return BTL_EINVAL;
        utoff[i] = o;
    }
    tz->first_off = utoff[0];
    if (h->timecnt > 0) {
        tz->at = calloc(h->timecnt, sizeof *tz->at);
        tz->off = calloc(h->timecnt, sizeof *tz->off);
        if (tz->at == NULL || tz->off == NULL)
            return BTL_ENOMEM;
    }
    int32_t prev_off = tz->first_off;
    int64_t prev_t = INT64_MIN;
    for (uint32_t i = 0; i < h->timecnt; i++) {
        int64_t t = tsize == 8 ? be64(times + 8 * (size_t)i)
                               : (int64_t)(int32_t)be32(times + 4 * (size_t)i);
        if (idx[i] >= h->typecnt || t <= prev_t)
            return BTL_EINVAL;
        prev_t = t;
        /* Keep only real offset changes: abbreviation-only or isdst-only
         * transitions matter to nobody here. */
        if (utoff[idx[i]] != prev_off) {
            tz->at[tz->n] = t;
            tz->off[tz->n] = utoff[idx[i]];
            tz->n++;
            prev_off = utoff[idx[i]];
        }
    }
    if (h->timecnt > 0) {
        tz->has_table_end = true;
        tz->table_end = prev_t;
    }
    return 0;
}

static int parse_tzif(btl_tz *tz, const uint8_t *d, size_t len)
{
    struct tzif_hdr h1, h2;
    int rc = read_hdr(d, len, 0, &h1);
    if (rc != 0)
        return rc;
    if (h1.version == '\0')
        return read_block(tz, d, len, 44, &h1, 4);
    size_t pos = 44 + block_size(&h1, 4);
    if (pos > len)
        return BTL_EINVAL;
    if ((rc = read_hdr(d, len, pos, &h2)) != 0)
        return rc;
    if (h2.version < '2')
        return BTL_EINVAL;
    pos += 44;
    if ((rc = read_block(tz, d, len, pos, &h2, 8)) != 0)
        return rc;
    pos += block_size(&h2, 8);
    /* Footer: "\n<POSIX TZ string>\n". */
    if (pos >= len || d[pos] != '\n')
        return BTL_EINVAL;
    pos++;
    const uint8_t *nl = memchr(d + pos, '\n', len - pos);
    if (nl == NULL)
        return BTL_EINVAL;
    size_t flen = (size_t)(nl - (d + pos));
    if (flen == 0)
        return 0; /* empty footer: the last transition rules forever */
    if (flen >= TZ_FOOTER_MAX)
        return BTL_EINVAL;
    char footer[TZ_FOOTER_MAX];
    memcpy(footer, d + pos, flen);
    footer[flen] = '\0';
    if (memchr(footer, '\0', flen) != NULL || parse_posix_tz(footer, &tz->footer) != 0)
        return BTL_EINVAL;
    tz->has_footer = true;
    return 0;
}

static bool valid_name(const char *name)
{
    size_t n = strnlen(name, BTL_TZ_NAME_MAX + 1);
    if (n == 0 || n > BTL_TZ_NAME_MAX || name[0] == '/' || strstr(name, "..") != NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '/' || c == '_' || c == '+' || c == '-' || c == '.';
        if (!ok)
            return false;
    }
    return true;
}

/* Reads a regular file of at most TZ_FILE_MAX bytes. */
static int read_zone_file(const char *path, uint8_t **out, size_t *out_len)
{
    int rc = 0;
    uint8_t *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return (errno == ENOENT || errno == ENOTDIR) ? BTL_ENOTFOUND : btl_err_from_errno(errno);
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        rc = btl_err_from_errno(errno);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) { /* e.g. "Europe" is a directory, not a zone */
        rc = BTL_ENOTFOUND;
        goto out;
    }
    if (st.st_size > TZ_FILE_MAX) {
        rc = BTL_EINVAL;
        goto out;
    }
    buf = malloc(TZ_FILE_MAX);
    if (buf == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    size_t len = fread(buf, 1, TZ_FILE_MAX, f);
    if (ferror(f)) {
        rc = BTL_EIO;
        goto out;
    }
    *out = buf;
    *out_len = len;
    buf = NULL;
out:
    free(buf);
    fclose(f);
    return rc;
}

int btl_tz_load(const char *name, btl_tz **out)
{
    int rc = 0;
    uint8_t *data = NULL;
    size_t len = 0;
    btl_tz *tz = NULL;
    if (name == NULL || out == NULL || !valid_name(name))
        return BTL_EINVAL;
    tz = calloc(1, sizeof *tz);
    if (tz == NULL)
        return BTL_ENOMEM;
    btl_strlcpy(tz->name, name, sizeof tz->name);
    if (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0) {
        *out = tz; /* all zero: offset 0 forever */
        return 0;
    }
    const char *dir = getenv("TZDIR");
    if (dir == NULL || dir[0] == '\0')
        dir = "/usr/share/zoneinfo";
    char path[4096];
    if (btl_snprintf(path, sizeof path, "%s/%s", dir, name) != 0) {
        rc = BTL_EINVAL;
        goto out;
    }
    if ((rc = read_zone_file(path, &data, &len)) != 0)
        goto out;
    if ((rc = parse_tzif(tz, data, len)) != 0)
        goto out;
    *out = tz;
    tz = NULL;
out:
    free(data);
    btl_tz_free(tz);
    return rc;
}

void btl_tz_free(btl_tz *tz)
{
    if (tz == NULL)
        return;
    free(tz->at);
    free(tz->off);
    free(tz);
}

const char *btl_tz_name(const btl_tz *tz)
{
    return tz ? tz->name : "UTC";
}

int32_t btl_tz_offset_at(const btl_tz *tz, int64_t t)
{
    if (tz == NULL)
        return 0;
    t = clamp_t(t);
    if (tz->has_footer && (!tz->has_table_end || t >= tz->table_end))
        return footer_offset(&tz->footer, t);
    if (tz->n == 0 || t < tz->at[0])
        return tz->first_off;
    size_t lo = 0, hi = tz->n; /* last i with at[i] <= t */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (tz->at[mid] <= t)
            lo = mid;
        else
            hi = mid;
    }
    return tz->off[lo];
}

int btl_tz_next_transition(const btl_tz *tz, int64_t after_s, int64_t *out_s)
{
    if (tz == NULL || out_s == NULL)
        return BTL_EINVAL;
    after_s = clamp_t(after_s);
    /* Table part: first kept transition after after_s. */
    size_t lo = 0, hi = tz->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (tz->at[mid] <= after_s)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < tz->n && (!tz->has_footer || tz->at[lo] < tz->table_end)) {
        *out_s = tz->at[lo];
        return 0;
    }
    if (!tz->has_footer)
        return BTL_ENOTFOUND;
    int64_t base = after_s;
    if (tz->has_table_end && tz->table_end > after_s) {
        /* Hand-over from table to footer rule (normally seamless). */
        if (btl_tz_offset_at(tz, tz->table_end) != btl_tz_offset_at(tz, tz->table_end - 1)) {
            *out_s = tz->table_end;
            return 0;
        }
        base = tz->table_end;
    }
    if (!tz->footer.has_dst)
        return BTL_ENOTFOUND;
    struct rule_event ev[8];
    size_t n = rule_events(&tz->footer, year_of(base) - 1, 4, ev);
    for (size_t i = 0; i < n; i++) {
        if (ev[i].at > base &&
            btl_tz_offset_at(tz, ev[i].at) != btl_tz_offset_at(tz, ev[i].at - 1)) {
            *out_s = ev[i].at;
            return 0;
        }
    }
    return BTL_ENOTFOUND;
}

int btl_tz_resolve(const btl_tz *tz, int64_t wall_s, int64_t *first, int64_t *second)
{
    /* Offsets never exceed ~26 h, so every instant showing wall_s lies within
     * wall_s +- 2 days. Walk the constant-offset segments of that window. */
    enum { MAXSEG = 16 };
    int64_t seg_start[MAXSEG];
    int32_t seg_off[MAXSEG];
    wall_s = clamp_t(wall_s);
    int64_t lo = wall_s - 2 * DAY, hi = wall_s + 2 * DAY;
    size_t nseg = 0;
    seg_start[0] = lo;
    seg_off[0] = btl_tz_offset_at(tz, lo);
    nseg = 1;
    int64_t t = lo, nt;
    while (nseg < MAXSEG && tz != NULL && btl_tz_next_transition(tz, t, &nt) == 0 && nt <= hi) {
        seg_start[nseg] = nt;
        seg_off[nseg] = btl_tz_offset_at(tz, nt);
        nseg++;
        t = nt;
    }
    int64_t sol[2];
    int nsol = 0;
    for (size_t i = 0; i < nseg && nsol < 2; i++) {
        int64_t u = wall_s - seg_off[i];
        int64_t end = i + 1 < nseg ? seg_start[i + 1] : INT64_MAX;
        if (u >= seg_start[i] && u < end)
            sol[nsol++] = u;
    }
    if (nsol == 0) {
        /* A gap: find the transition that jumped over wall_s. */
        int64_t a = wall_s - seg_off[0], b = a;
        for (size_t i = 1; i < nseg; i++) {
            if (wall_s - seg_off[i - 1] >= seg_start[i] && wall_s - seg_off[i] < seg_start[i]) {
                a = wall_s - seg_off[i - 1];
                b = seg_start[i];
                break;
            }
        }
        sol[0] = a;
        sol[1] = b;
    } else if (nsol == 1) {
        sol[1] = sol[0];
    }
    if (first)
        *first = sol[0];
    if (second)
        *second = sol[1];
    return nsol;
}
