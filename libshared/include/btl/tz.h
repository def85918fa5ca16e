/* IANA time zones read from TZif files (RFC 8536), without touching the
 * process-wide TZ state (no setenv/tzset/localtime), so any thread may use
 * any zone at any time.
 *
 * Files come from $TZDIR or /usr/share/zoneinfo. The 64-bit (v2+) data is
 * used when present, and the POSIX TZ footer string extends the zone past
 * its last transition (years 2037+, "slim" tzdata). Leap-second records
 * ("right/" zones) are ignored: times are POSIX seconds.
 *
 * "Wall seconds" below means seconds since 1970-01-01T00:00 on the local
 * civil clock (UTC seconds + UTC offset). */
#ifndef BTL_TZ_H
#define BTL_TZ_H

#include <stddef.h>
#include <stdint.h>

/* Immutable after load: share freely across threads. */
typedef struct btl_tz btl_tz;

#define BTL_TZ_NAME_MAX 128

/* Load zone `name` ("Europe/Berlin"). "UTC" and "Etc/UTC" are built in and
 * need no file. Names longer than BTL_TZ_NAME_MAX bytes, absolute paths,
 * names containing ".." or characters outside [A-Za-z0-9/_+-.] are
 * BTL_EINVAL; a missing zone is BTL_ENOTFOUND; a corrupt file BTL_EINVAL.
 * On success *out is owned by the caller: free with btl_tz_free(). */
int btl_tz_load(const char *name, btl_tz **out);
void btl_tz_free(btl_tz *tz);

/* The name given to btl_tz_load (borrowed, lives as long as tz). */
const char *btl_tz_name(const btl_tz *tz);

/* UTC offset in seconds east of Greenwich at that instant. tz NULL = UTC. */
int32_t btl_tz_offset_at(const btl_tz *tz, int64_t unix_s);

/* First instant strictly after after_s at which the UTC offset changes.
 * 0 and *out_s set, or BTL_ENOTFOUND if the offset never changes again
 * (within a few years past the table when only the footer rule is left). */
int btl_tz_next_transition(const btl_tz *tz, int64_t after_s, int64_t *out_s);

/* Map a local wall time to UTC. Returns how many instants show that wall
 * time:
 *   1: normal; *first = *second = the instant.
 *   2: fall-back overlap; *first is the earlier instant, *second the later.
 *   0: spring-forward gap (the wall time never happens); *first is the wall
 *      time read with the offset in force before the gap (i.e. pushed
 *      forward by the gap length: 02:30 -> 03:30 when 02:00 jumps to 03:00)
 *      and *second is the instant the gap ends (03:00).
 * Either out pointer may be NULL. */
int btl_tz_resolve(const btl_tz *tz, int64_t wall_s, int64_t *first, int64_t *second);

#endif
