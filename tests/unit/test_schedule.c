/* Schedule module: cron vectors from shared/testdata, parse errors,
 * every/once/immediate, macros, L and #N, jitter and posting windows. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "btl/err.h"
#include "btl/schedule.h"
#include "btl/tz.h"
#include "btl/util.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int64_t iso(const char *s)
{
    int64_t ms = 0;
    assert_int_equal(btl_parse_iso8601(s, &ms), 0);
    return ms;
}

static btl_schedule *must_parse(const char *expr, const char *tz)
{
    btl_schedule *s = NULL;
    char err[256];
    int rc = btl_schedule_parse(expr, tz, &s, err, sizeof err);
    if (rc != 0)
        fail_msg("parse '%s' tz %s: %s (%s)", expr, tz ? tz : "-", err, btl_strerror(rc));
    return s;
}

/* Chain n next() calls from `from` and compare with ISO strings. */
static void expect_chain(const char *expr, const char *tz, const char *from, const char **want,
                         size_t n)
{
    btl_schedule *s = must_parse(expr, tz);
    int64_t t = iso(from);
    for (size_t i = 0; i < n; i++) {
        int64_t next;
        int rc = btl_schedule_next(s, t, &next);
        char got[32] = "";
        if (rc == 0)
            btl_format_iso8601(next, got, sizeof got);
        if (rc != 0 || next != iso(want[i]))
            fail_msg("'%s' %s from %s step %zu: got %s (%s) want %s", expr, tz ? tz : "UTC", from,
                     i, got, btl_strerror(rc), want[i]);
        t = next;
    }
    btl_schedule_free(s);
}

/* ---- the shared vectors ------------------------------------------------ */

static void test_cron_vectors(void **state)
{
    (void)state;
    const char *shared = getenv("BTL_SHARED");
    assert_non_null(shared);
    char path[1024];
    assert_int_equal(btl_snprintf(path, sizeof path, "%s/testdata/cron_vectors.json", shared), 0);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (root == NULL)
        fail_msg("%s: %s", path, jerr.text);
    assert_true(json_is_array(root));
    size_t cases = json_array_size(root), failing = 0;
    assert_int_equal(cases, 496);
    for (size_t i = 0; i < cases; i++) {
        json_t *c = json_array_get(root, i);
        const char *expr = json_string_value(json_object_get(c, "expr"));
        const char *from = json_string_value(json_object_get(c, "from"));
        const char *tz = json_string_value(json_object_get(c, "tz"));
        json_t *next = json_object_get(c, "next");
        assert_non_null(expr);
        assert_non_null(from);
        assert_non_null(tz);
        assert_int_equal(json_array_size(next), 5);
        btl_schedule *s = NULL;
        char err[256];
        bool ok = btl_schedule_parse(expr, tz, &s, err, sizeof err) == 0;
        int64_t t = iso(from);
        for (size_t k = 0; ok && k < 5; k++) {
            int64_t got, want = iso(json_string_value(json_array_get(next, k)));
            if (btl_schedule_next(s, t, &got) != 0 || got != want) {
                char g[32] = "?";
                btl_format_iso8601(got, g, sizeof g);
                if (failing < 10)
                    printf("FAIL '%s' %s from %s [%zu]: got %s want %s\n", expr, tz, from, k, g,
                           json_string_value(json_array_get(next, k)));
                ok = false;
            }
            t = got;
        }
        if (!ok)
            failing++;
        btl_schedule_free(s);
    }
    printf("cron vectors: %zu cases, %zu failing\n", cases, failing);
    json_decref(root);
    assert_int_equal(failing, 0);
}

/* ---- parse errors ------------------------------------------------------ */

static void test_parse_errors(void **state)
{
    (void)state;
    static const struct {
        const char *expr, *tz, *needle;
        int rc;
    } bad[] = {
        {"0 25 * * *", NULL, "cron field 'hour': 25 out of range 0-23", BTL_EINVAL},
        {"60 * * * *", NULL, "'minute': 60 out of range 0-59", BTL_EINVAL},
        {"0 0 32 * *", NULL, "'day-of-month': 32 out of range 1-31", BTL_EINVAL},
        {"0 0 0 * *", NULL, "'day-of-month': 0 out of range 1-31", BTL_EINVAL},
        {"0 0 * 13 *", NULL, "'month': 13 out of range 1-12", BTL_EINVAL},
        {"0 0 * * 8", NULL, "'day-of-week': 8 out of range 0-7", BTL_EINVAL},
        {"0 0 * FOO *", NULL, "unknown name 'FOO'", BTL_EINVAL},
        {"0 0 * * MOX", NULL, "unknown name 'MOX'", BTL_EINVAL},
        {"0 0 * * * *", NULL, "5 fields", BTL_EINVAL},
        {"0 0 * *", NULL, "got 4", BTL_EINVAL},
        {"", NULL, "empty", BTL_EINVAL},
        {"   ", NULL, "empty", BTL_EINVAL},
        {"*/0 * * * *", NULL, "step 0", BTL_EINVAL},
        {"0 */25 * * *", NULL, "step 25 out of range 1-24", BTL_EINVAL},
        {"5-3 * * * *", NULL, "backwards", BTL_EINVAL},
        {"1,,2 * * * *", NULL, "empty list item", BTL_EINVAL},
        {"1, * * * *", NULL, "empty list item", BTL_EINVAL},
        {"a * * * *", NULL, "bad value 'a'", BTL_EINVAL},
        {"-1 * * * *", NULL, "'minute'", BTL_EINVAL},
        {"0 0 * * MON#6", NULL, "#1 to #5", BTL_EINVAL},
        {"0 0 1#2 * *", NULL, "only allowed in day-of-week", BTL_EINVAL},
        {"0 0 * JAN-FOO *", NULL, "unknown name", BTL_EINVAL},
        {"0 0 * NOV-JAN *", NULL, "range 11-1 is backwards", BTL_EINVAL},
        {"0 0 * * 1/x", NULL, "bad step", BTL_EINVAL},
        {"every 0s", NULL, "positive", BTL_EINVAL},
        {"every 5x", NULL, "bad duration", BTL_EINVAL},
        {"every", NULL, "bad duration", BTL_EINVAL},
        {"every 15min", NULL, "bad duration", BTL_EINVAL},
        {"every 99999d", NULL, "exceeds", BTL_EINVAL},
        {"every 999999999999w", NULL, "exceeds", BTL_EINVAL},
        {"once tomorrow", NULL, "once: bad ISO-8601", BTL_EINVAL},
        {"once 2026-02-30T00:00:00Z", NULL, "once: bad", BTL_EINVAL},
        {"immediate now", NULL, "no argument", BTL_EINVAL},
        {"@reboot", NULL, "unknown macro", BTL_EINVAL},
        {"immediately", NULL, "unrecognised schedule 'immediately'", BTL_EINVAL},
        {"0 9 * * *", "Mars/Olympus_Mons", "unknown time zone", BTL_ENOTFOUND},
        {"0 9 * * *", "../../etc/passwd", "time zone", BTL_EINVAL},
        {"0 9 * * *", "/etc/localtime", "time zone", BTL_EINVAL},
    };
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++) {
        btl_schedule *s = (btl_schedule *)0x1;
        char err[256] = "";
        int rc = btl_schedule_parse(bad[i].expr, bad[i].tz, &s, err, sizeof err);
        if (rc != bad[i].rc || s != NULL || strstr(err, bad[i].needle) == NULL)
            fail_msg("'%s': rc %d err '%s', want rc %d and '%s'", bad[i].expr, rc, err, bad[i].rc,
                     bad[i].needle);
    }
    /* Over-long input and NULLs are refused, not crashed on. */
    char longexpr[600];
    memset(longexpr, '1', sizeof longexpr - 1);
    longexpr[sizeof longexpr - 1] = '\0';
    btl_schedule *s = NULL;
    char err[64];
    assert_int_equal(btl_schedule_parse(longexpr, NULL, &s, err, sizeof err), BTL_EINVAL);
    assert_int_equal(btl_schedule_parse(NULL, NULL, &s, err, sizeof err), BTL_EINVAL);
    assert_int_equal(btl_schedule_parse("0 9 * * *", NULL, &s, NULL, 0), 0);
    btl_schedule_free(s);
    /* A tiny err buffer truncates, still NUL-terminated. */
    char tiny[8];
    assert_int_equal(btl_schedule_parse("0 25 * * *", NULL, &s, tiny, sizeof tiny), BTL_EINVAL);
    assert_true(strlen(tiny) < sizeof tiny);
}

static void test_parse_accepts(void **state)
{
    (void)state;
    static const char *ok[] = {
        "*/5 * * * *",    "0 0 * * 0-7",     "0 0 * * FRI-SUN",
        "0 0 1-31/2 * *", "0 0 L * *",       "0 0 1,L * *",
        "0 0 * * mon#2",  "0 0 * * 1#1,5#5", " 0 9 * * * ",
        "0\t9 * * *",     "0 9/4 * * *",     "0 0 * jan-DEC *",
        "@HOURLY",        "Every 1h 30m",    "immediate",
        "every 90",       "every 1500ms",    "once 2026-12-01T09:00:00+01:00",
    };
    for (size_t i = 0; i < BTL_ARRAY_LEN(ok); i++) {
        btl_schedule *s = NULL;
        char err[256];
        if (btl_schedule_parse(ok[i], "Europe/Berlin", &s, err, sizeof err) != 0)
            fail_msg("'%s' rejected: %s", ok[i], err);
        btl_schedule_free(s);
    }
}

/* ---- kinds --------------------------------------------------------------- */

static void test_every(void **state)
{
    (void)state;
    static const struct {
        const char *expr;
        int64_t ms;
    } cases[] = {
        {"every 90s", 90000},         {"every 15m", 900000},    {"every 2h", 7200000},
        {"every 1d", 86400000},       {"every 1h30m", 5400000}, {"every 1h 30m", 5400000},
        {"every 90", 90000},          {"every 1500ms", 1500},   {"every 2w", 1209600000},
        {"every 1d2h3m4s", 93784000},
    };
    int64_t t0 = iso("2026-05-05T12:34:56.789Z");
    for (size_t i = 0; i < BTL_ARRAY_LEN(cases); i++) {
        btl_schedule *s = must_parse(cases[i].expr, "Asia/Kolkata");
        assert_int_equal(btl_schedule_kind(s), BTL_SCHED_EVERY);
        assert_int_equal(btl_schedule_period_ms(s), cases[i].ms);
        int64_t next;
        assert_int_equal(btl_schedule_next(s, t0, &next), 0);
        assert_int_equal(next, t0 + cases[i].ms);
        btl_schedule_free(s);
    }
}

static void test_once_immediate(void **state)
{
    (void)state;
    btl_schedule *s = must_parse("once 2026-12-01T09:00:00Z", NULL);
    int64_t at = iso("2026-12-01T09:00:00Z"), next;
    assert_int_equal(btl_schedule_kind(s), BTL_SCHED_ONCE);
    assert_int_equal(btl_schedule_period_ms(s), 0);
    assert_int_equal(btl_schedule_next(s, at - 1, &next), 0);
    assert_int_equal(next, at);
    assert_int_equal(btl_schedule_next(s, at, &next), BTL_ENOTFOUND);
    assert_int_equal(btl_schedule_next(s, at + 5000, &next), BTL_ENOTFOUND);
    btl_schedule_free(s);

    /* Zone-less once is wall time in the schedule's zone. */
    s = must_parse("once 2026-07-01T09:00", "Europe/Berlin");
    assert_int_equal(btl_schedule_next(s, 0, &next), 0);
    assert_int_equal(next, iso("2026-07-01T07:00:00Z"));
    btl_schedule_free(s);
    /* An explicit offset wins over the zone. */
    s = must_parse("once 2026-07-01T09:00:00+05:30", "Europe/Berlin");
    assert_int_equal(btl_schedule_next(s, 0, &next), 0);
    assert_int_equal(next, iso("2026-07-01T03:30:00Z"));
    btl_schedule_free(s);

    s = must_parse("immediate", "UTC");
    assert_int_equal(btl_schedule_kind(s), BTL_SCHED_IMMEDIATE);
    assert_int_equal(btl_schedule_period_ms(s), 0);
    assert_int_equal(btl_schedule_next(s, 0, &next), BTL_ENOTFOUND);
    btl_schedule_free(s);
}

static void test_macros(void **state)
{
    (void)state;
    /* 2026-03-04 is a Wednesday. */
    const char *from = "2026-03-04T10:20:30Z";
    expect_chain("@hourly", NULL, from,
                 (const char *[]){"2026-03-04T11:00:00Z", "2026-03-04T12:00:00Z"}, 2);
    expect_chain("@daily", NULL, from,
                 (const char *[]){"2026-03-05T00:00:00Z", "2026-03-06T00:00:00Z"}, 2);
    expect_chain("@midnight", "Europe/Berlin", from,
                 (const char *[]){"2026-03-04T23:00:00Z", "2026-03-05T23:00:00Z"}, 2);
    expect_chain("@weekly", NULL, from,
                 (const char *[]){"2026-03-08T00:00:00Z", "2026-03-15T00:00:00Z"}, 2);
    expect_chain("@monthly", NULL, from,
                 (const char *[]){"2026-04-01T00:00:00Z", "2026-05-01T00:00:00Z"}, 2);
    expect_chain("@yearly", NULL, from,
                 (const char *[]){"2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"}, 2);
    expect_chain("@annually", NULL, from,
                 (const char *[]){"2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"}, 2);
    btl_schedule *s = must_parse("@daily", NULL);
    assert_int_equal(btl_schedule_kind(s), BTL_SCHED_CRON);
    assert_int_equal(btl_schedule_period_at(s, iso(from)), 86400000);
    btl_schedule_free(s);
    s = must_parse("*/15 * * * *", NULL);
    assert_int_equal(btl_schedule_period_at(s, iso(from)), 900000);
    btl_schedule_free(s);
}

/* ---- L, #N, day names ----------------------------------------------------- */

static int weekday(int64_t days)
{
    return (int)(((days + 4) % 7 + 7) % 7);
}

static void test_last_day(void **state)
{
    (void)state;
    btl_schedule *s = must_parse("0 0 L * *", NULL);
    int64_t t = iso("2027-12-31T12:00:00Z");
    /* 24 months of 2028-2029; last day computed as "day before the 1st". */
    for (int i = 0; i < 24; i++) {
        int y = 2028 + i / 12, m = 1 + i % 12;
        int64_t first_next =
            m == 12 ? btl_days_from_civil(y + 1, 1, 1) : btl_days_from_civil(y, (unsigned)m + 1, 1);
        int64_t next;
        assert_int_equal(btl_schedule_next(s, t, &next), 0);
        assert_int_equal(next, (first_next - 1) * 86400 * 1000);
        t = next;
    }
    btl_schedule_free(s);
    /* Spelled out: February 2028 ends on the 29th, 2027 on the 28th. */
    expect_chain("0 0 L 2 *", NULL, "2027-01-01T00:00:00Z",
                 (const char *[]){"2027-02-28T00:00:00Z", "2028-02-29T00:00:00Z"}, 2);
}

static void test_nth_weekday(void **state)
{
    (void)state;
    static const struct {
        const char *expr;
        int wd, nth;
    } cases[] = {{"0 0 * * MON#2", 1, 2},
                 {"0 0 * * 1#2", 1, 2},
                 {"0 0 * * fri#5", 5, 5},
                 {"0 0 * * 0#1", 0, 1},
                 {"0 0 * * 7#1", 0, 1}};
    for (size_t c = 0; c < BTL_ARRAY_LEN(cases); c++) {
        btl_schedule *s = must_parse(cases[c].expr, NULL);
        int64_t t = iso("2026-01-01T00:00:00Z");
        /* Walk all days of 2026-2027 independently; each match must be the
         * next fire. */
        int64_t d0 = btl_days_from_civil(2026, 1, 1), d1 = btl_days_from_civil(2028, 1, 1);
        int count = 0;
        for (int64_t d = d0; d < d1; d++) {
            int64_t y;
            unsigned m, dom;
            btl_civil_from_days(d, &y, &m, &dom);
            if (weekday(d) != cases[c].wd || (int)(dom - 1) / 7 + 1 != cases[c].nth)
                continue;
            int64_t next;
            assert_int_equal(btl_schedule_next(s, t, &next), 0);
            if (next != d * 86400 * 1000)
                fail_msg("%s: day %lld", cases[c].expr, (long long)d);
            t = next;
            count++;
        }
        assert_true(count >= 8); /* every month for #1/#2, 4+ months/year for #5 */
        btl_schedule_free(s);
    }
}

static void test_dow_names_and_seven(void **state)
{
    (void)state;
    const char *sundays[] = {"2026-03-08T00:00:00Z", "2026-03-15T00:00:00Z",
                             "2026-03-22T00:00:00Z"};
    expect_chain("0 0 * * 0", NULL, "2026-03-04T00:00:00Z", sundays, 3);
    expect_chain("0 0 * * 7", NULL, "2026-03-04T00:00:00Z", sundays, 3);
    expect_chain("0 0 * * SuN", NULL, "2026-03-04T00:00:00Z", sundays, 3);
    /* FRI-SUN = 5-7 = Fri, Sat, Sun. */
    const char *weekend[] = {"2026-03-06T00:00:00Z", "2026-03-07T00:00:00Z", "2026-03-08T00:00:00Z",
                             "2026-03-13T00:00:00Z"};
    expect_chain("0 0 * * FRI-SUN", NULL, "2026-03-04T00:00:00Z", weekend, 4);
    expect_chain("0 0 * * 5-7", NULL, "2026-03-04T00:00:00Z", weekend, 4);
    /* Both restricted: OR. 13th or Friday. */
    expect_chain(
        "0 0 13 * 5", NULL, "2026-03-04T00:00:00Z",
        (const char *[]){"2026-03-06T00:00:00Z", "2026-03-13T00:00:00Z", "2026-03-20T00:00:00Z"},
        3);
    /* dom starts with '*': AND. Odd days that are Fridays. */
    expect_chain(
        "0 0 */2 * 5", NULL, "2026-03-01T00:00:00Z",
        (const char *[]){"2026-03-13T00:00:00Z", "2026-03-27T00:00:00Z", "2026-04-03T00:00:00Z"},
        3);
    /* Month names in ranges and lists. */
    expect_chain("0 0 1 JAN,nov-Dec *", NULL, "2026-03-04T00:00:00Z",
                 (const char *[]){"2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z",
                                  "2027-01-01T00:00:00Z", "2027-11-01T00:00:00Z"},
                 3);
}

static void test_never_fires(void **state)
{
    (void)state;
    const char *never[] = {"0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 FEB *"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(never); i++) {
        btl_schedule *s = must_parse(never[i], "America/New_York");
        int64_t next;
        assert_int_equal(btl_schedule_next(s, iso("2026-01-01T00:00:00Z"), &next), BTL_ENOTFOUND);
        assert_int_equal(btl_schedule_period_at(s, 0), 0);
        btl_schedule_free(s);
    }
    /* Rare but possible is not "never": Feb 29 only in leap years. */
    expect_chain("0 0 29 2 *", NULL, "2029-01-01T00:00:00Z",
                 (const char *[]){"2032-02-29T00:00:00Z", "2036-02-29T00:00:00Z"}, 2);
}

/* ---- DST ------------------------------------------------------------------ */

static void test_cron_dst(void **state)
{
    (void)state;
    /* Spring forward (Berlin 2026-03-29 02:00 -> 03:00): 02:30 fires at
     * 03:30 CEST, i.e. shifted by the gap; the job still runs that day. */
    expect_chain("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z",
                 (const char *[]){"2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"}, 2);
    /* Starting inside the shifted stretch must still find the shifted fire. */
    expect_chain("30 2 * * *", "Europe/Berlin", "2026-03-29T01:10:00Z",
                 (const char *[]){"2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"}, 2);
    /* Fall back (2026-10-25 03:00 CEST -> 02:00 CET): fixed-hour jobs fire
     * once, at the first 02:30. */
    expect_chain("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z",
                 (const char *[]){"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}, 2);
    /* Periodic-hour jobs keep real-time cadence through the repeated hour. */
    expect_chain("*/30 * * * *", "Europe/Berlin", "2026-10-24T23:45:00Z",
                 (const char *[]){"2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z",
                                  "2026-10-25T01:00:00Z", "2026-10-25T01:30:00Z",
                                  "2026-10-25T02:00:00Z"},
                 5);
    /* ... and across the gap no duplicate and no stall. */
    expect_chain(
        "0 * * * *", "Europe/Berlin", "2026-03-28T23:30:00Z",
        (const char *[]){"2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"},
        3);
    /* Sydney (southern hemisphere) fall back 2026-04-05 03:00 AEDT -> 02:00. */
    expect_chain("30 2 * * *", "Australia/Sydney", "2026-04-04T00:00:00Z",
                 (const char *[]){"2026-04-04T15:30:00Z", "2026-04-05T16:30:00Z"}, 2);
    /* Far future (past the TZif table, rule from the footer): 2050-03-27. */
    expect_chain("30 2 * * *", "Europe/Berlin", "2050-03-26T12:00:00Z",
                 (const char *[]){"2050-03-27T01:30:00Z", "2050-03-28T00:30:00Z"}, 2);
}

/* ---- jitter --------------------------------------------------------------- */

static void test_jitter(void **state)
{
    (void)state;
    int64_t due = iso("2026-01-01T00:00:00Z"), period = 7200000;
    assert_int_equal(btl_schedule_jitter(due, period, 25, 0.0), due);
    assert_int_equal(btl_schedule_jitter(due, period, 25, 0.5), due + 900000);
    assert_int_equal(btl_schedule_jitter(due, period, 0, 0.9), due);
    assert_int_equal(btl_schedule_jitter(due, 0, 50, 0.9), due);
    assert_int_equal(btl_schedule_jitter(due, -5, 50, 0.9), due);
    assert_int_equal(btl_schedule_jitter(due, period, 25, -1.0), due);
    assert_int_equal(btl_schedule_jitter(due, period, 25, NAN), due);
    double almost1 = nextafter(1.0, 0.0);
    int64_t hi = btl_schedule_jitter(due, period, 25, almost1);
    assert_true(hi < due + period / 4);
    assert_true(hi >= due + period / 4 - 1);
    /* Percent is clamped to 100. */
    assert_true(btl_schedule_jitter(due, period, 250, almost1) < due + period);
    assert_true(btl_schedule_jitter(due, period, 250, almost1) > due + period / 2);
    /* A huge period must not round the delay up to the bound. */
    int64_t big = (int64_t)3650 * 86400 * 1000;
    assert_true(btl_schedule_jitter(due, big, 100, almost1) < due + big);
    /* Random r: never early, always inside the band. */
    for (int i = 0; i < 10000; i++) {
        int64_t j = btl_schedule_jitter(due, period, 10, btl_rand01());
        assert_true(j >= due && j < due + period / 10);
    }
    /* Saturates instead of overflowing. */
    assert_int_equal(btl_schedule_jitter(INT64_MAX - 10, 1000000, 100, 0.5), INT64_MAX);
}

/* ---- windows -------------------------------------------------------------- */

static void test_window_parse(void **state)
{
    (void)state;
    int m = -1;
    assert_int_equal(btl_window_parse_hhmm("09:00", &m), 0);
    assert_int_equal(m, 540);
    assert_int_equal(btl_window_parse_hhmm("00:00", &m), 0);
    assert_int_equal(m, 0);
    assert_int_equal(btl_window_parse_hhmm("23:59", &m), 0);
    assert_int_equal(m, 1439);
    assert_int_equal(btl_window_parse_hhmm("24:00", &m), 0);
    assert_int_equal(m, 1440);
    const char *bad[] = {"9:00",  "09:0", "09:000", "24:01",  "25:00", "12:60", "ab:cd",
                         "09-00", "",     " 09:00", "09:00 ", "+9:00", NULL};
    for (size_t i = 0; i < BTL_ARRAY_LEN(bad); i++)
        if (btl_window_parse_hhmm(bad[i], &m) != BTL_EINVAL)
            fail_msg("accepted '%s'", bad[i] ? bad[i] : "(null)");
}

static void test_window_utc(void **state)
{
    (void)state;
    btl_window w = {540, 1260, NULL}; /* 09:00-21:00 UTC */
    assert_false(btl_window_contains(&w, iso("2026-05-01T08:59:59Z")));
    assert_true(btl_window_contains(&w, iso("2026-05-01T09:00:00Z")));
    assert_true(btl_window_contains(&w, iso("2026-05-01T20:59:59.999Z")));
    assert_false(btl_window_contains(&w, iso("2026-05-01T21:00:00Z")));
    assert_int_equal(btl_window_adjust(&w, iso("2026-05-01T12:00:00.5Z")),
                     iso("2026-05-01T12:00:00.5Z"));
    assert_int_equal(btl_window_adjust(&w, iso("2026-05-01T03:00:00Z")),
                     iso("2026-05-01T09:00:00Z"));
    assert_int_equal(btl_window_adjust(&w, iso("2026-05-01T21:00:00Z")),
                     iso("2026-05-02T09:00:00Z"));

    btl_window night = {1320, 360, NULL}; /* 22:00-06:00 crosses midnight */
    assert_true(btl_window_contains(&night, iso("2026-05-01T23:00:00Z")));
    assert_true(btl_window_contains(&night, iso("2026-05-01T05:59:00Z")));
    assert_true(btl_window_contains(&night, iso("2026-05-01T00:00:00Z")));
    assert_false(btl_window_contains(&night, iso("2026-05-01T06:00:00Z")));
    assert_false(btl_window_contains(&night, iso("2026-05-01T21:59:59Z")));
    assert_int_equal(btl_window_adjust(&night, iso("2026-05-01T06:00:00Z")),
                     iso("2026-05-01T22:00:00Z"));
    assert_int_equal(btl_window_adjust(&night, iso("2026-05-01T02:00:00Z")),
                     iso("2026-05-01T02:00:00Z"));

    btl_window all = {600, 600, NULL};
    assert_true(btl_window_contains(&all, iso("2026-05-01T03:00:00Z")));
    btl_window to24 = {1200, 1440, NULL}; /* 20:00-24:00 */
    assert_true(btl_window_contains(&to24, iso("2026-05-01T23:59:00Z")));
    assert_false(btl_window_contains(&to24, iso("2026-05-01T00:00:00Z")));
    assert_int_equal(btl_window_adjust(&to24, iso("2026-05-01T00:00:00Z")),
                     iso("2026-05-01T20:00:00Z"));
    assert_true(btl_window_contains(NULL, 0));
    btl_window broken = {-5, 9999, NULL};
    assert_false(btl_window_contains(&broken, 0));
    assert_int_equal(btl_window_adjust(&broken, 1234), 1234);
}

static void test_window_zones(void **state)
{
    (void)state;
    btl_tz *berlin = NULL;
    assert_int_equal(btl_tz_load("Europe/Berlin", &berlin), 0);
    btl_window w = {540, 1260, berlin}; /* 09:00-21:00 Berlin */
    /* Summer: 07:00-19:00Z. */
    assert_false(btl_window_contains(&w, iso("2026-07-01T06:59:00Z")));
    assert_true(btl_window_contains(&w, iso("2026-07-01T07:00:00Z")));
    assert_false(btl_window_contains(&w, iso("2026-07-01T19:00:00Z")));
    assert_int_equal(btl_window_adjust(&w, iso("2026-07-01T05:00:00Z")),
                     iso("2026-07-01T07:00:00Z"));
    assert_int_equal(btl_window_adjust(&w, iso("2026-07-01T19:30:00Z")),
                     iso("2026-07-02T07:00:00Z"));
    /* Across the fall-back night: opens 09:00 CET = 08:00Z. */
    assert_int_equal(btl_window_adjust(&w, iso("2026-10-24T20:00:00Z")),
                     iso("2026-10-25T08:00:00Z"));
    /* Across spring-forward: 09:00 CEST = 07:00Z on the 29th. */
    assert_int_equal(btl_window_adjust(&w, iso("2026-03-28T20:00:00Z")),
                     iso("2026-03-29T07:00:00Z"));
    /* Opening wall time inside the gap: 02:30 does not exist on
     * 2026-03-29, so the window opens when the gap ends (03:00 CEST). */
    btl_window gap = {150, 300, berlin}; /* 02:30-05:00 */
    assert_int_equal(btl_window_adjust(&gap, iso("2026-03-28T23:30:00Z")),
                     iso("2026-03-29T01:00:00Z"));
    assert_true(btl_window_contains(&gap, iso("2026-03-29T01:00:00Z")));
    assert_false(btl_window_contains(&gap, iso("2026-03-29T00:59:59Z")));
    /* A window entirely inside the gap skips that day. */
    btl_window lost = {130, 170, berlin}; /* 02:10-02:50 */
    assert_int_equal(btl_window_adjust(&lost, iso("2026-03-28T23:30:00Z")),
                     iso("2026-03-30T00:10:00Z"));
    /* Crossing midnight in a zone: 22:00-06:00 Kolkata. */
    btl_tz *kol = NULL;
    assert_int_equal(btl_tz_load("Asia/Kolkata", &kol), 0);
    btl_window night = {1320, 360, kol};
    assert_true(btl_window_contains(&night, iso("2026-05-01T17:00:00Z")));  /* 22:30 IST */
    assert_false(btl_window_contains(&night, iso("2026-05-01T06:30:00Z"))); /* 12:00 IST */
    assert_int_equal(btl_window_adjust(&night, iso("2026-05-01T06:30:00Z")),
                     iso("2026-05-01T16:30:00Z"));
    btl_tz_free(kol);
    btl_tz_free(berlin);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cron_vectors),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_parse_accepts),
        cmocka_unit_test(test_every),
        cmocka_unit_test(test_once_immediate),
        cmocka_unit_test(test_macros),
        cmocka_unit_test(test_last_day),
        cmocka_unit_test(test_nth_weekday),
        cmocka_unit_test(test_dow_names_and_seven),
        cmocka_unit_test(test_never_fires),
        cmocka_unit_test(test_cron_dst),
        cmocka_unit_test(test_jitter),
        cmocka_unit_test(test_window_parse),
        cmocka_unit_test(test_window_utc),
        cmocka_unit_test(test_window_zones),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
