/* tz module: offsets of known instants, footer rules checked against the
 * fat TZif tables, transitions, wall-time resolution, name checks and
 * malformed files (synthetic TZif written to a private TZDIR). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "btl/err.h"
#include "btl/tz.h"
#include "btl/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t iso_s(const char *s)
{
    int64_t ms = 0;
    assert_int_equal(btl_parse_iso8601(s, &ms), 0);
    return ms / 1000;
}

static btl_tz *load(const char *name)
{
    btl_tz *tz = NULL;
    int rc = btl_tz_load(name, &tz);
    if (rc != 0)
        fail_msg("load %s: %s", name, btl_strerror(rc));
    return tz;
}

/* ---- synthetic TZif -------------------------------------------------------- */

struct wbuf {
    uint8_t d[8192];
    size_t n;
};

static void put(struct wbuf *b, const void *p, size_t n)
{
    assert_true(b->n + n <= sizeof b->d);
    memcpy(b->d + b->n, p, n);
    b->n += n;
}

static void put32(struct wbuf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    put(b, x, 4);
}

static void put64(struct wbuf *b, int64_t v)
{
    put32(b, (uint32_t)((uint64_t)v >> 32));
    put32(b, (uint32_t)v);
}

static void header(struct wbuf *b, char version, uint32_t timecnt, uint32_t typecnt)
{
    put(b, "TZif", 4);
    put(b, &version, 1);
    uint8_t zero[15] = {0};
    put(b, zero, 15);
    put32(b, 0);       /* isutcnt */
    put32(b, 0);       /* isstdcnt */
    put32(b, 0);       /* leapcnt */
    put32(b, timecnt); /* timecnt */
    put32(b, typecnt); /* typecnt */
    put32(b, 4);       /* charcnt */
}

/* A TZif file: version '\0' writes 32-bit data only; else a minimal v1 block,
 * 64-bit data and the footer. */
static void build(struct wbuf *b, char version, const int64_t *at, const uint8_t *idx, size_t n,
                  const int32_t *off, size_t ntypes, const char *footer)
{
    b->n = 0;
    if (version == '\0') {
        header(b, version, (uint32_t)n, (uint32_t)ntypes);
        for (size_t i = 0; i < n; i++)
            put32(b, (uint32_t)(int32_t)at[i]);
    } else {
        header(b, version, 0, 1);
        put32(b, 0);
        put(b, "\0\0", 2);
        put(b, "UTC", 4);
        header(b, version, (uint32_t)n, (uint32_t)ntypes);
        for (size_t i = 0; i < n; i++)
            put64(b, at[i]);
    }
    put(b, idx, n);
    for (size_t i = 0; i < ntypes; i++) {
        put32(b, (uint32_t)off[i]);
        uint8_t isdst_idx[2] = {0, 0};
        put(b, isdst_idx, 2);
    }
    put(b, "ABC", 4);
    if (version != '\0') {
        put(b, "\n", 1);
        put(b, footer, strlen(footer));
        put(b, "\n", 1);
    }
}

static char tzdir[256];

static void write_zone(const char *name, const void *p, size_t n)
{
    char path[512];
    assert_int_equal(btl_snprintf(path, sizeof path, "%s/%s", tzdir, name), 0);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static int setup_dir(void **state)
{
    (void)state;
    assert_int_equal(btl_snprintf(tzdir, sizeof tzdir, "/tmp/btl-tz-test-XXXXXX"), 0);
    assert_non_null(mkdtemp(tzdir));
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    unsetenv("TZDIR");
    static const char *files[] = {"Slim", "V1", "Quoted", "AllDst", "Bad", "Empty", "Cut", "Flip"};
    char path[512];
    for (size_t i = 0; i < BTL_ARRAY_LEN(files); i++)
        if (btl_snprintf(path, sizeof path, "%s/%s", tzdir, files[i]) == 0)
            unlink(path);
    return rmdir(tzdir) == 0 ? 0 : -1;
}

/* ---- tests ------------------------------------------------------------------- */

static void test_known_offsets(void **state)
{
    (void)state;
    static const struct {
        const char *zone, *at;
        int32_t off;
    } cases[] = {
        {"Europe/Berlin", "2026-07-01T12:00:00Z", 7200},
        {"Europe/Berlin", "2026-01-15T12:00:00Z", 3600},
        {"Europe/Berlin", "2026-03-29T00:59:59Z", 3600},
        {"Europe/Berlin", "2026-03-29T01:00:00Z", 7200},
        {"Europe/Berlin", "2026-10-25T00:59:59Z", 7200},
        {"Europe/Berlin", "2026-10-25T01:00:00Z", 3600},
        {"Europe/Berlin", "2100-07-01T00:00:00Z", 7200}, /* footer rule */
        {"Europe/Berlin", "2100-12-01T00:00:00Z", 3600},
        {"Australia/Sydney", "2026-01-15T00:00:00Z", 39600},
        {"Australia/Sydney", "2026-07-15T00:00:00Z", 36000},
        {"Australia/Sydney", "2090-01-15T00:00:00Z", 39600},
        {"Australia/Sydney", "2090-07-15T00:00:00Z", 36000},
        {"Asia/Kolkata", "2026-07-01T00:00:00Z", 19800},
        {"Asia/Kolkata", "2200-01-01T00:00:00Z", 19800},
        {"America/New_York", "2026-07-01T00:00:00Z", -14400},
        {"America/New_York", "2026-01-01T00:00:00Z", -18000},
        {"America/New_York", "2060-07-01T00:00:00Z", -14400},
        {"UTC", "2026-07-01T00:00:00Z", 0},
        {"Etc/UTC", "2026-07-01T00:00:00Z", 0},
    };
    for (size_t i = 0; i < BTL_ARRAY_LEN(cases); i++) {
        btl_tz *tz = load(cases[i].zone);
        int32_t got = btl_tz_offset_at(tz, iso_s(cases[i].at));
        if (got != cases[i].off)
            fail_msg("%s at %s: %d want %d", cases[i].zone, cases[i].at, got, cases[i].off);
        assert_string_equal(btl_tz_name(tz), cases[i].zone);
        btl_tz_free(tz);
    }
    assert_int_equal(btl_tz_offset_at(NULL, 12345), 0);
    /* Extreme instants are clamped, not overflowed. */
    btl_tz *b = load("Europe/Berlin");
    (void)btl_tz_offset_at(b, INT64_MAX);
    (void)btl_tz_offset_at(b, INT64_MIN);
    btl_tz_free(b);
}

static void test_names(void **state)
{
    (void)state;
    btl_tz *tz = NULL;
    char longname[200];
    memset(longname, 'A', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    const char *bad[] = {"../etc/passwd", "Europe/../../etc/passwd", "/etc/localtime", "",
                         longname,        "Europe/Ber lin",          "Europe\\Berlin", "a..b"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++) {
        if (btl_tz_load(bad[i], &tz) != BTL_EINVAL)
            fail_msg("accepted '%s'", bad[i]);
    }
    assert_int_equal(btl_tz_load(NULL, &tz), BTL_EINVAL);
    assert_int_equal(btl_tz_load("Mars/Olympus_Mons", &tz), BTL_ENOTFOUND);
    assert_int_equal(btl_tz_load("Europe", &tz), BTL_ENOTFOUND); /* a directory */
}

static void test_transitions(void **state)
{
    (void)state;
    btl_tz *b = load("Europe/Berlin");
    int64_t t;
    assert_int_equal(btl_tz_next_transition(b, iso_s("2026-01-01T00:00:00Z"), &t), 0);
    assert_int_equal(t, iso_s("2026-03-29T01:00:00Z"));
    assert_int_equal(btl_tz_next_transition(b, t, &t), 0);
    assert_int_equal(t, iso_s("2026-10-25T01:00:00Z"));
    /* Beyond the table (fat files stop in 2037). */
    assert_int_equal(btl_tz_next_transition(b, iso_s("2045-01-01T00:00:00Z"), &t), 0);
    assert_int_equal(t, iso_s("2045-03-26T01:00:00Z"));
    btl_tz_free(b);
    btl_tz *k = load("Asia/Kolkata");
    assert_int_equal(btl_tz_next_transition(k, iso_s("2026-01-01T00:00:00Z"), &t), BTL_ENOTFOUND);
    btl_tz_free(k);
    btl_tz *u = load("UTC");
    assert_int_equal(btl_tz_next_transition(u, 0, &t), BTL_ENOTFOUND);
    btl_tz_free(u);
}

static void test_resolve(void **state)
{
    (void)state;
    btl_tz *b = load("Europe/Berlin");
    int64_t f, s;
    /* Ordinary. */
    assert_int_equal(btl_tz_resolve(b, iso_s("2026-07-01T09:00:00Z"), &f, &s), 1);
    assert_int_equal(f, iso_s("2026-07-01T07:00:00Z"));
    assert_int_equal(s, f);
    /* Gap: 02:30 on 2026-03-29 does not exist. */
    assert_int_equal(btl_tz_resolve(b, iso_s("2026-03-29T02:30:00Z"), &f, &s), 0);
    assert_int_equal(f, iso_s("2026-03-29T01:30:00Z")); /* = 03:30 CEST */
    assert_int_equal(s, iso_s("2026-03-29T01:00:00Z")); /* = 03:00 CEST */
    /* Overlap: 02:30 on 2026-10-25 happens twice. */
    assert_int_equal(btl_tz_resolve(b, iso_s("2026-10-25T02:30:00Z"), &f, &s), 2);
    assert_int_equal(f, iso_s("2026-10-25T00:30:00Z"));
    assert_int_equal(s, iso_s("2026-10-25T01:30:00Z"));
    /* Boundaries of the overlap: 02:00 is doubled, 03:00 is not. */
    assert_int_equal(btl_tz_resolve(b, iso_s("2026-10-25T02:00:00Z"), NULL, NULL), 2);
    assert_int_equal(btl_tz_resolve(b, iso_s("2026-10-25T03:00:00Z"), NULL, NULL), 1);
    assert_int_equal(btl_tz_resolve(b, iso_s("2026-03-29T03:00:00Z"), &f, NULL), 1);
    assert_int_equal(f, iso_s("2026-03-29T01:00:00Z"));
    btl_tz_free(b);
    /* Southern hemisphere: Sydney repeats 02:xx on 2026-04-05. */
    btl_tz *sy = load("Australia/Sydney");
    assert_int_equal(btl_tz_resolve(sy, iso_s("2026-04-05T02:30:00Z"), &f, &s), 2);
    assert_int_equal(f, iso_s("2026-04-04T15:30:00Z"));
    assert_int_equal(s, iso_s("2026-04-04T16:30:00Z"));
    btl_tz_free(sy);
    /* Round trip: for every hour of 2026 in New York, resolving the wall
     * time of an instant must give that instant back as one of its
     * occurrences. */
    btl_tz *ny = load("America/New_York");
    for (int64_t u = iso_s("2026-01-01T00:00:00Z"); u < iso_s("2027-01-01T00:00:00Z"); u += 1800) {
        int n = btl_tz_resolve(ny, u + btl_tz_offset_at(ny, u), &f, &s);
        assert_true(n == 1 || n == 2);
        assert_true(f == u || s == u);
    }
    btl_tz_free(ny);
}

/* The footer evaluator must agree with the fat table wherever both exist. */
static void test_footer_matches_table(void **state)
{
    (void)state;
    static const struct {
        const char *zone, *footer;
    } zones[] = {
        {"Europe/Berlin", "CET-1CEST,M3.5.0,M10.5.0/3"},
        {"Australia/Sydney", "AEST-10AEDT,M10.1.0,M4.1.0/3"},
        {"America/New_York", "EST5EDT,M3.2.0,M11.1.0"},
        {"America/Santiago", "<-04>4<-03>,M9.1.6/24,M4.1.6/24"},
    };
    for (size_t z = 0; z < BTL_ARRAY_LEN(zones); z++) {
        unsetenv("TZDIR");
        btl_tz *real = load(zones[z].zone);
        struct wbuf b;
        int32_t off = 0;
        uint8_t idx = 0;
        build(&b, '2', NULL, &idx, 0, &off, 1, zones[z].footer);
        write_zone("Slim", b.d, b.n);
        setenv("TZDIR", tzdir, 1);
        btl_tz *slim = load("Slim");
        int64_t from = iso_s("2027-01-01T00:00:00Z"), to = iso_s("2037-01-01T00:00:00Z");
        for (int64_t u = from; u < to; u += 3 * 3600) {
            if (btl_tz_offset_at(real, u) != btl_tz_offset_at(slim, u))
                fail_msg("%s at %lld: table %d footer %d", zones[z].zone, (long long)u,
                         btl_tz_offset_at(real, u), btl_tz_offset_at(slim, u));
        }
        int64_t a = from, c = from, ta, tc;
        for (int i = 0; i < 15; i++) {
            assert_int_equal(btl_tz_next_transition(real, a, &ta), 0);
            assert_int_equal(btl_tz_next_transition(slim, c, &tc), 0);
            assert_int_equal(ta, tc);
            a = ta;
            c = tc;
        }
        btl_tz_free(slim);
        btl_tz_free(real);
    }
}

static void test_synthetic_files(void **state)
{
    (void)state;
    setenv("TZDIR", tzdir, 1);
    struct wbuf b;
    btl_tz *tz = NULL;
    /* v1 only: +0 until 1e9, then +3600. */
    int64_t at[] = {1000000000};
    uint8_t idx[] = {1};
    int32_t offs[] = {0, 3600};
    build(&b, '\0', at, idx, 1, offs, 2, "");
    write_zone("V1", b.d, b.n);
    tz = load("V1");
    assert_int_equal(btl_tz_offset_at(tz, 999999999), 0);
    assert_int_equal(btl_tz_offset_at(tz, 1000000000), 3600);
    assert_int_equal(btl_tz_offset_at(tz, iso_s("2100-01-01T00:00:00Z")), 3600);
    btl_tz_free(tz);

    /* v3 with a quoted-name footer and fractional offset. */
    int32_t ist[] = {19800};
    uint8_t zero = 0;
    build(&b, '3', NULL, &zero, 0, ist, 1, "<+0530>-5:30");
    write_zone("Quoted", b.d, b.n);
    tz = load("Quoted");
    assert_int_equal(btl_tz_offset_at(tz, 0), 19800);
    btl_tz_free(tz);

    /* All-year DST (RFC 8536 example). */
    int32_t est[] = {-18000};
    build(&b, '3', NULL, &zero, 0, est, 1, "EST5EDT,0/0,J365/25");
    write_zone("AllDst", b.d, b.n);
    tz = load("AllDst");
    for (int64_t u = iso_s("2030-01-01T00:00:00Z"); u < iso_s("2032-01-01T00:00:00Z"); u += 7200)
        assert_int_equal(btl_tz_offset_at(tz, u), -14400);
    int64_t t;
    assert_int_equal(btl_tz_next_transition(tz, iso_s("2030-01-01T00:00:00Z"), &t), BTL_ENOTFOUND);
    btl_tz_free(tz);

    /* Bad footers and bad tables are refused. */
    const char *bad_footers[] = {"GARBAGE", "CET-1CEST,M13.5.0,M10.5.0", "CET-1CEST,M3.5.0", "AB-1",
                                 "CET-99"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad_footers); i++) {
        build(&b, '2', NULL, &zero, 0, ist, 1, bad_footers[i]);
        write_zone("Bad", b.d, b.n);
        if (btl_tz_load("Bad", &tz) != BTL_EINVAL)
            fail_msg("accepted footer '%s'", bad_footers[i]);
    }
    int64_t unsorted[] = {2000, 1000};
    uint8_t idx2[] = {1, 0};
    build(&b, '2', unsorted, idx2, 2, offs, 2, "");
    write_zone("Bad", b.d, b.n);
    assert_int_equal(btl_tz_load("Bad", &tz), BTL_EINVAL);
    uint8_t badidx[] = {7};
    build(&b, '2', at, badidx, 1, offs, 2, "");
    write_zone("Bad", b.d, b.n);
    assert_int_equal(btl_tz_load("Bad", &tz), BTL_EINVAL);
    write_zone("Bad", "not a tzif file at all, just text", 33);
    assert_int_equal(btl_tz_load("Bad", &tz), BTL_EINVAL);
    write_zone("Empty", "", 0);
    assert_int_equal(btl_tz_load("Empty", &tz), BTL_EINVAL);
}

/* Every truncation and many single-byte corruptions of a real file must be
 * refused or loaded, never crash (ASan watches). */
static void test_corrupt_files(void **state)
{
    (void)state;
    char *data = NULL;
    size_t len = 0;
    const char *dir = getenv("TZDIR_REAL");
    char path[512];
    assert_int_equal(
        btl_snprintf(path, sizeof path, "%s/Europe/Berlin", dir ? dir : "/usr/share/zoneinfo"), 0);
    assert_int_equal(btl_read_file(path, 1 << 20, &data, &len), 0);
    setenv("TZDIR", tzdir, 1);
    btl_tz *tz = NULL;
    for (size_t n = 0; n < len; n++) {
        write_zone("Cut", data, n);
        if (btl_tz_load("Cut", &tz) == 0)
            fail_msg("accepted a file cut at %zu of %zu bytes", n, len);
    }
    uint8_t *copy = malloc(len);
    assert_non_null(copy);
    uint32_t seed = 12345;
    int loaded = 0;
    for (int i = 0; i < 1500; i++) {
        memcpy(copy, data, len);
        seed = seed * 1103515245u + 12345u;
        size_t pos = (seed >> 8) % len;
        copy[pos] ^= (uint8_t)(1u << ((seed >> 3) % 8));
        write_zone("Flip", copy, len);
        if (btl_tz_load("Flip", &tz) == 0) {
            (void)btl_tz_offset_at(tz, 1800000000);
            int64_t f, s;
            (void)btl_tz_resolve(tz, 1800000000, &f, &s);
            btl_tz_free(tz);
            loaded++;
        }
    }
    assert_true(loaded > 0); /* flips in transition times still load */
    free(copy);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_offsets),        cmocka_unit_test(test_names),
        cmocka_unit_test(test_transitions),          cmocka_unit_test(test_resolve),
        cmocka_unit_test(test_footer_matches_table), cmocka_unit_test(test_synthetic_files),
        cmocka_unit_test(test_corrupt_files),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
