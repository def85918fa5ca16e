/* Webhook alerts without Prometheus (alerts.webhook_url).
 *
 * The scheduler posts a short message when a circuit opens (first trip from
 * closed; failed half-open trials stay quiet) or closes, when a task is
 * paused by an unrecoverable error, and when a post ends `unknown`. The body
 * is {"content": "...", "text": "..."}: Discord webhooks read `content`,
 * Slack incoming webhooks read `text`, each ignores the other.
 *
 * Never blocks scheduling: sched_alert only copies the message into a
 * bounded queue (ALERTS_QUEUE_MAX; full = dropped and counted); one sender
 * thread does the HTTP with libcurl (timeouts, at most ALERTS_TRIES tries
 * with backoff, 429 Retry-After honoured up to a cap).
 * Rate limits, applied when an alert is raised: one per (kind, task) per
 * ALERTS_KEY_INTERVAL_MS (key is (kind, text) when task is NULL, so each
 * post gets its own alert), and at most ALERTS_BURST alerts a minute in all.
 *
 * The URL is read from the current configuration for every alert, so a
 * reload turns alerts on, off or elsewhere. Empty or unset: off. The URL
 * holds a secret (Discord webhook token): it is never logged.
 *
 * Metrics: btl_alerts_sent_total{kind,result=ok|failed},
 * btl_alerts_dropped_total{kind,reason=queue_full|rate_limited|stopped}. */
#ifndef BTL_SCHED_ALERTS_H
#define BTL_SCHED_ALERTS_H

#include "scheduler.h"

#define ALERTS_QUEUE_MAX 64
#define ALERTS_TRIES 3
#define ALERTS_KEY_INTERVAL_MS 60000
#define ALERTS_BURST 10
#define ALERTS_TEXT_MAX 1500 /* bytes; Discord allows 2000 characters */

/* Alert kinds used by the scheduler. */
#define ALERT_CIRCUIT_OPEN "circuit_open"
#define ALERT_CIRCUIT_CLOSED "circuit_closed"
#define ALERT_TASK_PAUSED "task_paused"
#define ALERT_POST_UNKNOWN "post_unknown"

/* Registers the metrics and starts the sender thread; call once from the
 * main thread before the threads that raise alerts start (it also runs
 * curl_global_init). s must outlive sched_alerts_stop. Errors: BTL_ENOMEM,
 * BTL_EHTTP (curl init), BTL_EIO (thread). On error sched_alert is a no-op. */
int sched_alerts_start(scheduler *s);

/* Stops the sender (an in-flight request is aborted) and drops what is
 * still queued. Call after every thread that raises alerts has ended. */
void sched_alerts_stop(void);

/* Queue an alert; returns at once. kind: one of the ALERT_* names; task may
 * be NULL; text: the detail (cut to ALERTS_TEXT_MAX bytes at a UTF-8
 * boundary). Strings are copied. Thread-safe. */
void sched_alert(scheduler *s, const char *kind, const char *task, const char *text);

#endif
