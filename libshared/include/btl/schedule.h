/* Task schedules (DESIGN §6 tasks.*.schedule / timezone / jitter_percent /
 * window): intervals, 5-field cron evaluated in an IANA zone, one-shots,
 * jitter and posting windows. Pure computation; nothing here logs or reads
 * the clock except btl_schedule_period_ms(). Times are unix milliseconds. */
#ifndef BTL_SCHEDULE_H
#define BTL_SCHEDULE_H

#include "btl/tz.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum btl_schedule_kind { BTL_SCHED_EVERY, BTL_SCHED_CRON, BTL_SCHED_ONCE, BTL_SCHED_IMMEDIATE };

/* Immutable after parse (safe to share across threads); owns its btl_tz.
 * Free with btl_schedule_free(). */
typedef struct btl_schedule btl_schedule;

#define BTL_SCHEDULE_EXPR_MAX 256 /* longer expressions are rejected */

/* expr:
 *   "every 90s" | "every 15m" | "every 2h" | "every 1d" | "every 1h30m"
 *       units ms s m h d w, combinable; must be > 0 and <= 3650 days.
 *   5-field cron "min hour dom month dow": * a-b lists, steps
 *       a-b/n a/n and star-slash-n,
 *       JAN-DEC, SUN-SAT (any case, also in ranges; FRI-SUN works), 0 and 7
 *       are Sunday, L in day-of-month (last day), DOW#N in day-of-week
 *       (Nth weekday, N 1-5). Day-of-month and day-of-week: if both are
 *       restricted (neither starts with '*') a day matches if either
 *       matches, else both must.
 *   "@hourly" "@daily" "@midnight" "@weekly" "@monthly" "@yearly" "@annually"
 *   "once <ISO-8601>": with no zone designator the time is wall time in tz.
 *   "immediate"
 * tz: IANA zone name; NULL or "" = UTC.
 * Returns 0 and *out (caller frees), or BTL_EINVAL (BTL_ENOTFOUND for an
 * unknown zone) with a human reason in err (may be NULL), e.g.
 * "cron field 'hour': 25 out of range 0-23".
 *
 * DST: cron wall times are matched on the zone's clock. A wall time that
 * falls in a spring-forward gap fires shifted forward by the gap (02:30 ->
 * 03:30 when 02:00 jumps to 03:00). A wall time repeated by a fall-back
 * fires once, at its first occurrence, unless the hour field starts with
 * '*' (a periodic job such as every 15 minutes), which keeps firing through
 * the repeated hour in real time. */
int btl_schedule_parse(const char *expr, const char *tz, btl_schedule **out, char *err,
                       size_t errlen);
void btl_schedule_free(btl_schedule *s);

enum btl_schedule_kind btl_schedule_kind(const btl_schedule *s);
/* The zone (borrowed; lives as long as s). */
const btl_tz *btl_schedule_tz(const btl_schedule *s);

/* every: the interval. cron: the gap between the next two fires after now
 * (0 if it never fires). once/immediate: 0. */
int64_t btl_schedule_period_ms(const btl_schedule *s);
/* Same, with "now" given (deterministic). */
int64_t btl_schedule_period_at(const btl_schedule *s, int64_t at_ms);

/* Next fire time strictly after after_ms into *next_ms.
 * every: after_ms + interval. cron: next matching minute in the zone, or
 * BTL_ENOTFOUND if none within 8 years ("0 0 30 2 *"). once: its instant if
 * > after_ms, else BTL_ENOTFOUND. immediate: BTL_ENOTFOUND (the scheduler
 * fires it once itself). BTL_EINVAL for bad arguments. */
int btl_schedule_next(const btl_schedule *s, int64_t after_ms, int64_t *next_ms);

/* Jitter only delays: due_ms + floor(r * percent/100 * period_ms), always
 * < due_ms + period_ms*percent/100 when that bound is positive. r in [0,1)
 * comes from the caller (btl_rand01() in production, fixed in tests);
 * percent is clamped to 0..100, r to [0,1), negative period counts as 0. */
int64_t btl_schedule_jitter(int64_t due_ms, int64_t period_ms, int percent, double r);

/* Posting window: local wall clock [from, to) in its zone; from > to crosses
 * midnight; from == to means all day. Minutes of the day: from_min 0..1439,
 * to_min 0..1440 (1440 = "24:00" = end of day). tz NULL = UTC. */
typedef struct btl_window {
    int from_min, to_min;
    const btl_tz *tz; /* borrowed */
} btl_window;

/* "09:00" -> 540. Strict: exactly HH:MM, 00:00..23:59, plus "24:00" (1440,
 * meant for `to`). BTL_EINVAL otherwise. */
int btl_window_parse_hhmm(const char *s, int *out_min);
/* NULL window = always open. A window with out-of-range fields is never
 * open (validate with btl_window_parse_hhmm). */
bool btl_window_contains(const btl_window *w, int64_t t_ms);
/* t_ms if inside the window, else the next instant the window opens:
 * normally its from time on the zone's clock; if that wall time does not
 * exist that day (spring-forward gap), the first instant after the gap; a
 * repeated (fall-back) from time opens it at either occurrence. Returns
 * t_ms if the window can never open. */
int64_t btl_window_adjust(const btl_window *w, int64_t t_ms);

#endif
