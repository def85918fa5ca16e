/* Bounded helpers (util), logging level parsing and the operational job
 * kinds of the worker loop. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "btl/err.h"
#include "btl/log.h"
#include "btl/util.h"
#include "btl/utf8.h"
#include "btl/worker.h"

static void test_strlcpy_snprintf(void **state)
{
    (void)state;
    char b[4];
    assert_int_equal(btl_strlcpy(b, "abc", sizeof b), 0);
    assert_string_equal(b, "abc");
    assert_int_equal(btl_strlcpy(b, "abcd", sizeof b), BTL_ETOOBIG);
    assert_string_equal(b, "abc");
    assert_int_equal(btl_snprintf(b, sizeof b, "%d", 123), 0);
    assert_int_equal(btl_snprintf(b, sizeof b, "%d", 1234), BTL_ETOOBIG);
    assert_string_equal(b, "123");
}

static void test_parse_numbers(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(btl_parse_i64("42", 0, 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(btl_parse_i64("-5", -10, 10, &v), 0);
    assert_int_equal(v, -5);
    assert_int_equal(btl_parse_i64("101", 0, 100, &v), BTL_ETOOBIG);
    assert_int_equal(btl_parse_i64("12x", 0, 100, &v), BTL_EINVAL);
    assert_int_equal(btl_parse_i64("", 0, 100, &v), BTL_EINVAL);
    assert_int_equal(btl_parse_i64(" 1", 0, 100, &v), BTL_EINVAL);
    assert_int_equal(btl_parse_i64("99999999999999999999", INT64_MIN, INT64_MAX, &v), BTL_ETOOBIG);
    double d;
    assert_int_equal(btl_parse_double("0.25", &d), 0);
    assert_true(d == 0.25);
    assert_int_equal(btl_parse_double("0.25.1", &d), BTL_EINVAL);
}

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int64_t ms;
    } ok[] = {{"1500ms", 1500}, {"90s", 90000},     {"15m", 900000}, {"2h", 7200000},
              {"1d", 86400000}, {"2w", 1209600000}, {"7", 7000}};
    for (size_t i = 0; i < BTL_ARRAY_LEN(ok); i++) {
        int64_t ms = -1;
        assert_int_equal(btl_parse_duration_ms(ok[i].in, &ms), 0);
        assert_int_equal(ms, ok[i].ms);
    }
    int64_t ms;
    assert_int_equal(btl_parse_duration_ms("5x", &ms), BTL_EINVAL);
    assert_int_equal(btl_parse_duration_ms("-5s", &ms), BTL_EINVAL);
    assert_int_equal(btl_parse_duration_ms("", &ms), BTL_EINVAL);
    assert_int_equal(btl_parse_duration_ms("99999999999999999d", &ms), BTL_ETOOBIG);
}

static void test_iso8601(void **state)
{
    (void)state;
    int64_t ms;
    char buf[40];
    assert_int_equal(btl_parse_iso8601("2026-01-01T09:00:00Z", &ms), 0);
    assert_int_equal(ms, 1767258000000LL);
    assert_int_equal(btl_format_iso8601(ms, buf, sizeof buf), 0);
    assert_string_equal(buf, "2026-01-01T09:00:00Z");
    assert_int_equal(btl_parse_iso8601("2026-01-01T10:00:00+01:00", &ms), 0);
    assert_int_equal(ms, 1767258000000LL);
    assert_int_equal(btl_parse_iso8601("2024-02-29T00:00:00.5Z", &ms), 0);
    assert_int_equal(btl_format_iso8601(ms, buf, sizeof buf), 0);
    assert_string_equal(buf, "2024-02-29T00:00:00.500Z");
    assert_int_equal(btl_parse_iso8601("2023-02-29T00:00:00Z", &ms), BTL_EINVAL);
    assert_int_equal(btl_parse_iso8601("2026-13-01T00:00:00Z", &ms), BTL_EINVAL);
    assert_int_equal(btl_parse_iso8601("2026-01-01T00:00:00Zjunk", &ms), BTL_EINVAL);
    assert_int_equal(btl_parse_iso8601("1969-12-31T23:59:59Z", &ms), 0);
    assert_int_equal(ms, -1000);
    assert_int_equal(btl_format_iso8601(-1, buf, sizeof buf), 0);
    assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
    /* Civil-day conversion agrees with itself over four centuries. */
    for (int64_t z = -146097; z <= 146097; z += 97) {
        int64_t y;
        unsigned m, d;
        btl_civil_from_days(z, &y, &m, &d);
        assert_int_equal(btl_days_from_civil(y, m, d), z);
    }
}

static void test_epoch_seconds(void **state)
{
    (void)state;
    char b[32];
    assert_int_equal(btl_format_epoch_s(1767258000123LL, b, sizeof b), 0);
    assert_string_equal(b, "1767258000.123");
    assert_int_equal(btl_format_epoch_s(5, b, sizeof b), 0);
    assert_string_equal(b, "0.005");
    assert_int_equal(btl_format_epoch_s(-1, b, sizeof b), 0);
    assert_string_equal(b, "-0.001");
    assert_int_equal(btl_format_epoch_s(-1500, b, sizeof b), 0);
    assert_string_equal(b, "-1.500");
}

static void test_utf8(void **state)
{
    (void)state;
    size_t n = 99;
    uint32_t cp;
    assert_int_equal(btl_utf8_decode("\xe2\x82\xac", 3, &cp), 3);
    assert_int_equal(cp, 0x20AC);
    assert_int_equal(btl_utf8_decode("\xe2\x82", 2, &cp), 0);         /* cut short */
    assert_int_equal(btl_utf8_decode("\xc0\xaf", 2, &cp), 0);         /* overlong */
    assert_int_equal(btl_utf8_decode("\xed\xa0\x80", 3, &cp), 0);     /* surrogate */
    assert_int_equal(btl_utf8_decode("\xf4\x90\x80\x80", 4, &cp), 0); /* > U+10FFFF */
    assert_int_equal(btl_utf8_count("a\xc3\xa9\xf0\x9f\x98\x80", 7, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(btl_utf8_count("a\0b", 3, &n), BTL_EINVAL);
    assert_int_equal(btl_utf8_count("\xff", 1, &n), BTL_EINVAL);
    char t[8];
    btl_utf8_copy(t, sizeof t, "a\xc3\xa9", 2); /* never half a character */
    assert_string_equal(t, "a");
    btl_utf8_copy(t, sizeof t, "ab\xff\xc3\xa9", 10);
    assert_string_equal(t, "ab?\xc3\xa9");
    btl_utf8_copy(t, sizeof t, "abcdefghijk", 100); /* bounded by dst */
    assert_string_equal(t, "abcdefg");
    btl_utf8_copy(t, sizeof t, NULL, 5);
    assert_string_equal(t, "");
}

static void test_buf(void **state)
{
    (void)state;
    btl_buf b;
    btl_buf_init(&b, 16);
    assert_int_equal(btl_buf_puts(&b, "0123456789"), 0);
    assert_int_equal(btl_buf_printf(&b, "%s", "abcdef"), 0);
    assert_int_equal(b.len, 16);
    assert_int_equal(btl_buf_puts(&b, "x"), BTL_ETOOBIG);
    assert_int_equal(b.len, 16); /* unchanged on failure */
    assert_string_equal(b.data, "0123456789abcdef");
    btl_buf_reset(&b);
    assert_int_equal(btl_buf_json_str(&b, "a\"b\\\n\x01"), 0);
    assert_string_equal(b.data, "\"a\\\"b\\\\\\n\\u0001\"");
    btl_buf_reset(&b);
    /* An escape that does not fit leaves nothing half-written. */
    assert_int_equal(btl_buf_puts(&b, "0123456789"), 0);
    assert_int_equal(btl_buf_json_str(&b, "\n\n\n\n"), BTL_ETOOBIG);
    assert_string_equal(b.data, "0123456789");
    char *s = btl_buf_steal(&b);
    assert_string_equal(s, "0123456789");
    free(s);
    btl_buf_free(&b);
}

static void test_log_levels(void **state)
{
    (void)state;
    assert_int_equal(btl_log_level_parse("debug"), BTL_LOG_DEBUG);
    assert_int_equal(btl_log_level_parse("WARN"), BTL_LOG_WARN);
    assert_int_equal(btl_log_level_parse("error"), BTL_LOG_ERROR);
    assert_int_equal(btl_log_level_parse("loud"), -1);
}

static void test_worker_ops(void **state)
{
    (void)state;
    volatile sig_atomic_t stop = 0;
    btl_job_outcome oc;
    assert_int_equal(btl_worker_run_op("noop", &stop, &oc), 0);
    int64_t t0 = btl_mono_ms();
    assert_int_equal(btl_worker_run_op("sleep 30", &stop, &oc), 0);
    assert_true(btl_mono_ms() - t0 >= 30);
    assert_int_equal(btl_worker_run_op("fail boom", &stop, &oc), BTL_EINVAL);
    assert_string_equal(oc.error, "boom");
    assert_false(oc.unrecoverable);
    assert_false(oc.permanent);
    assert_int_equal(btl_worker_run_op("fail unrecoverable: bad key", &stop, &oc), BTL_EINVAL);
    assert_true(oc.unrecoverable);
    assert_true(oc.permanent);
    assert_string_equal(oc.error, "bad key");
    assert_int_equal(btl_worker_run_op("sleep x", &stop, &oc), BTL_EINVAL);
    assert_true(oc.permanent);
    assert_int_equal(btl_worker_run_op("dance", &stop, &oc), BTL_EINVAL);
    assert_true(oc.permanent);
    stop = 1; /* a stopping worker gives the job back instead of sleeping on */
    t0 = btl_mono_ms();
    assert_int_equal(btl_worker_run_op("sleep 60000", &stop, &oc), BTL_ECLOSED);
    assert_true(btl_mono_ms() - t0 < 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strlcpy_snprintf),
        cmocka_unit_test(test_parse_numbers),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_iso8601),
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_epoch_seconds),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_worker_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
