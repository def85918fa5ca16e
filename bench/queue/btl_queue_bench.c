/* Queue benchmark for Botticelli's job queue (libshared jobs.c + bus.c).
 *
 *   btl_queue_bench throughput --url U --migrations DIR --jobs N --workers W --batch B
 *   btl_queue_bench latency    --url U --migrations DIR --samples S --gap-ms G
 *
 * throughput: N noop jobs are enqueued first (btl_jobs_enqueue_n, 10,000 a
 * statement), then W threads, each with its own connection, loop
 * btl_jobs_complete_claim (the batch done and the next B claimed in one
 * statement, after a first btl_jobs_claim) until the queue is empty. Time = first claim returned to
 * last completion. This is the library-level path of libshared/src/worker.c without its per-job
 * JSON parse, metrics and exec.result reporting.
 *
 * latency: the wake-up path of the real worker. A publisher thread does what
 * the scheduler does on a fire (BEGIN; enqueue; COMMIT; publish a msgpack
 * tick.generator over nng PUB), a receiver thread does what btl_worker_main
 * does (SUB recv, strict decode, bump a generation + broadcast a condvar) and
 * a worker thread does what worker.c's thread_main does (drain, then sleep on
 * the condvar up to a 5 s fallback poll). Pickup latency = from just before
 * BEGIN to the claim statement returning the job.
 *
 * Prints "RESULT key=value ..." lines that run.sh turns into a table. The
 * database must be fresh (run.sh creates one per run); the schema is applied
 * from --migrations. */
#include "btl/bus.h"
#include "btl/db.h"
#include "btl/err.h"
#include "btl/jobs.h"
#include "btl/proto.h"
#include "btl/util.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QUEUE "generator"
#define TOPIC "tick.generator"
#define LEASE_MS 60000
#define POLL_FALLBACK_MS 5000
#define SAMPLES_MAX 100000

typedef struct opts {
    const char *mode;
    const char *url;
    const char *migrations;
    const char *bus_url;
    int jobs, workers, batch;
    int samples, gap_ms, warmup;
} opts;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int parse_int(const char *s, int64_t min, int64_t max, int *out)
{
    int64_t v;
    if (s == NULL || btl_parse_i64(s, min, max, &v) != 0)
        return BTL_EINVAL;
    *out = (int)v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: btl_queue_bench throughput|latency --url URL --migrations DIR\n"
                    "         [--jobs N] [--workers W] [--batch B]\n"
                    "         [--samples S] [--gap-ms G] [--warmup K] [--bus URL]\n");
}

static int parse_args(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof *o);
    o->jobs = 20000;
    o->workers = 1;
    o->batch = 100;
    o->samples = 2000;
    o->gap_ms = 5;
    o->warmup = 50;
    o->bus_url = "tcp://127.0.0.1:0";
    if (argc < 2)
        return BTL_EINVAL;
    o->mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (v == NULL)
            return BTL_EINVAL;
        i++;
        if (strcmp(a, "--url") == 0)
            o->url = v;
        else if (strcmp(a, "--migrations") == 0)
            o->migrations = v;
        else if (strcmp(a, "--bus") == 0)
            o->bus_url = v;
        else if (strcmp(a, "--jobs") == 0)
            rc = parse_int(v, 1, 10000000, &o->jobs);
        else if (strcmp(a, "--workers") == 0)
            rc = parse_int(v, 1, 64, &o->workers);
        else if (strcmp(a, "--batch") == 0)
            rc = parse_int(v, 1, BTL_JOBS_CLAIM_MAX, &o->batch);
        else if (strcmp(a, "--samples") == 0)
            rc = parse_int(v, 1, SAMPLES_MAX, &o->samples);
        else if (strcmp(a, "--gap-ms") == 0)
            rc = parse_int(v, 0, 10000, &o->gap_ms);
        else if (strcmp(a, "--warmup") == 0)
            rc = parse_int(v, 0, 10000, &o->warmup);
        else
            return BTL_EINVAL;
        if (rc != 0)
            return rc;
    }
    if (o->url == NULL || o->migrations == NULL)
        return BTL_EINVAL;
    if (strcmp(o->mode, "throughput") != 0 && strcmp(o->mode, "latency") != 0)
        return BTL_EINVAL;
    return 0;
}

/* Opens a connection and applies the schema; *db owned by the caller. */
static int setup_db(const opts *o, btl_db **db)
{
    char err[1024];
    int applied = 0;
    int rc = btl_db_open(o->url, db, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "bench: connect: %s\n", err);
        return rc;
    }
    if ((rc = btl_db_migrate(*db, o->migrations, &applied, err, sizeof err)) != 0) {
        fprintf(stderr, "bench: migrate: %s\n", err);
        return rc;
    }
    return 0;
}

static const btl_job_spec noop_spec = {
    .queue = QUEUE, .kind = "op", .task_id = "bench", .payload_json = "{\"op\":\"noop\"}"};

/* ---- throughput -------------------------------------------------------- */

typedef struct tp_shared {
    const opts *o;
    pthread_barrier_t start;
    atomic_long done;
    atomic_int failed;
} tp_shared;

typedef struct tp_thread {
    pthread_t tid;
    int index;
    tp_shared *sh;
    int64_t t_first_claim, t_last_done;
    long claims;
} tp_thread;

static void *tp_main(void *arg)
{
    tp_thread *t = arg;
    tp_shared *sh = t->sh;
    const opts *o = sh->o;
    btl_db *db = NULL;
    char err[512], worker[64];
    btl_job *batch = calloc((size_t)o->batch, sizeof *batch);
    int64_t *ids = calloc((size_t)o->batch, sizeof *ids);
    int64_t *done = calloc((size_t)o->batch, sizeof *done);
    int rc = 0;

    btl_snprintf(worker, sizeof worker, "bench/%d", t->index);
    if (batch == NULL || ids == NULL || done == NULL) {
        rc = BTL_ENOMEM;
    } else if ((rc = btl_db_open(o->url, &db, err, sizeof err)) != 0) {
        fprintf(stderr, "bench: worker %d connect: %s\n", t->index, err);
    }
    /* Every thread reaches the barrier, even a failed one, or the rest hang. */
    pthread_barrier_wait(&sh->start);
    if (rc != 0)
        goto out;
    int n = 0;
    if ((rc = btl_jobs_claim(db, QUEUE, worker, o->batch, LEASE_MS, batch, &n)) != 0) {
        fprintf(stderr, "bench: claim: %s\n", btl_db_last_error(db));
        goto out;
    }
    t->claims++;
    while (n > 0) {
        /* Clock starts at the first pickup, as the peers' handler-start does. */
        if (t->t_first_claim == 0)
            t->t_first_claim = now_ns();
        int n_ids = n;
        for (int i = 0; i < n; i++) {
            ids[i] = batch[i].id; /* the noop "handler" */
            btl_job_clear(&batch[i]);
        }
        /* As worker.c: this batch done and the next claimed in one statement. */
        int n_done = 0;
        if ((rc = btl_jobs_complete_claim(db, ids, n_ids, done, &n_done, QUEUE, worker, o->batch,
                                          LEASE_MS, batch, &n)) != 0) {
            fprintf(stderr, "bench: complete+claim: %s\n", btl_db_last_error(db));
            goto out;
        }
        t->claims++;
        atomic_fetch_add(&sh->done, n_done);
        t->t_last_done = now_ns();
    }
out:
    if (rc != 0)
        atomic_store(&sh->failed, 1);
    btl_db_close(db);
    free(batch);
    free(ids);
    free(done);
    return NULL;
}

static int run_throughput(const opts *o)
{
    btl_db *db = NULL;
    tp_shared sh = {.o = o};
    tp_thread *th = NULL;
    int started = 0;
    int rc = 0;
    bool barrier = false;

    if ((rc = setup_db(o, &db)) != 0)
        goto out;
    int64_t e0 = now_ns();
    for (int left = o->jobs; left > 0;) {
        int n = left > BTL_JOBS_BATCH_MAX ? BTL_JOBS_BATCH_MAX : left, ins = 0;
        if ((rc = btl_jobs_enqueue_n(db, &noop_spec, n, NULL, &ins)) != 0) {
            fprintf(stderr, "bench: enqueue: %s\n", btl_db_last_error(db));
            goto out;
        }
        left -= ins;
    }
    int64_t e1 = now_ns();
    /* Same for every implementation: fresh statistics before the drain. */
    if ((rc = btl_db_exec(db, "VACUUM ANALYZE jobs")) != 0)
        goto out;

    th = calloc((size_t)o->workers, sizeof *th);
    if (th == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    pthread_barrier_init(&sh.start, NULL, (unsigned)o->workers);
    barrier = true;
    for (; started < o->workers; started++) {
        th[started].index = started;
        th[started].sh = &sh;
        if (pthread_create(&th[started].tid, NULL, tp_main, &th[started]) != 0) {
            /* The barrier counts on every thread: give up loudly. */
            fprintf(stderr, "bench: pthread_create failed\n");
            abort();
        }
    }
    int64_t t0 = INT64_MAX, t1 = 0;
    long claims = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i].tid, NULL);
        if (th[i].t_first_claim && th[i].t_first_claim < t0)
            t0 = th[i].t_first_claim;
        if (th[i].t_last_done > t1)
            t1 = th[i].t_last_done;
        claims += th[i].claims;
    }
    if (atomic_load(&sh.failed)) {
        rc = BTL_EDB;
        goto out;
    }
    btl_jobs_counts c;
    if ((rc = btl_jobs_count(db, QUEUE, &c)) != 0)
        goto out;
    long done = atomic_load(&sh.done);
    if (done != o->jobs || c.done != o->jobs || c.queued != 0 || c.running != 0) {
        fprintf(stderr,
                "bench: lost work: completed %ld, table done %" PRId64 " queued %" PRId64
                " running %" PRId64 " of %d\n",
                done, c.done, c.queued, c.running, o->jobs);
        rc = BTL_EDB;
        goto out;
    }
    double secs = (double)(t1 - t0) / 1e9;
    printf("RESULT impl=botticelli mode=throughput jobs=%d workers=%d batch=%d lease_ms=%d "
           "seconds=%.3f jobs_per_s=%.0f enqueue_per_s=%.0f claims=%ld\n",
           o->jobs, o->workers, o->batch, LEASE_MS, secs, (double)o->jobs / secs,
           (double)o->jobs / ((double)(e1 - e0) / 1e9), claims);
out:
    if (barrier)
        pthread_barrier_destroy(&sh.start);
    free(th);
    btl_db_close(db);
    return rc;
}

/* ---- latency ----------------------------------------------------------- */

typedef struct lat_shared {
    const opts *o;
    pthread_mutex_t lock;
    pthread_cond_t wake; /* worker: a tick arrived (worker.c's wake_all) */
    pthread_cond_t done; /* publisher: the job was claimed */
    uint64_t wake_gen;
    int64_t expect_id; /* job the publisher is waiting for, 0 = none */
    int64_t picked_ns; /* claim returned it */
    int stop;
    int worker_rc;
    atomic_long ticks_in;
    btl_bus_sock sub;
} lat_shared;

static void *lat_receiver(void *arg)
{
    lat_shared *sh = arg;
    for (;;) {
        char *frame = NULL;
        size_t len = 0;
        int r = btl_bus_recv(&sh->sub, 200, &frame, &len);
        if (r == BTL_ECLOSED)
            break;
        if (r != 0)
            continue;
        btl_msg m;
        r = btl_proto_decode(frame, len, &m, NULL, NULL, 0);
        free(frame);
        btl_msg_free(&m);
        if (r != 0)
            continue;
        atomic_fetch_add(&sh->ticks_in, 1);
        pthread_mutex_lock(&sh->lock);
        sh->wake_gen++;
        pthread_cond_broadcast(&sh->wake);
        pthread_mutex_unlock(&sh->lock);
    }
    return NULL;
}

static void *lat_worker(void *arg)
{
    lat_shared *sh = arg;
    btl_db *db = NULL;
    btl_job batch[16];
    int64_t ids[16];
    char err[512];
    uint64_t seen = 0;
    int rc = btl_db_open(sh->o->url, &db, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "bench: worker connect: %s\n", err);
        goto out;
    }
    for (;;) {
        pthread_mutex_lock(&sh->lock);
        int stop = sh->stop;
        pthread_mutex_unlock(&sh->lock);
        if (stop)
            break;
        int n = 0;
        /* Batch 16: worker.batch_size's default. */
        if ((rc = btl_jobs_claim(db, QUEUE, "bench/lat", 16, LEASE_MS, batch, &n)) != 0) {
            fprintf(stderr, "bench: claim: %s\n", btl_db_last_error(db));
            goto out;
        }
        int64_t t = now_ns();
        if (n > 0) {
            for (int i = 0; i < n; i++) {
                ids[i] = batch[i].id;
                btl_job_clear(&batch[i]);
            }
            int n_done = 0;
            if ((rc = btl_jobs_complete(db, ids, n, "bench/lat", &n_done)) != 0)
                goto out;
            pthread_mutex_lock(&sh->lock);
            for (int i = 0; i < n; i++) {
                if (ids[i] == sh->expect_id) {
                    sh->picked_ns = t;
                    pthread_cond_signal(&sh->done);
                }
            }
            pthread_mutex_unlock(&sh->lock);
            continue; /* more may be waiting, as worker.c does */
        }
        pthread_mutex_lock(&sh->lock);
        if (sh->wake_gen == seen && !sh->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += POLL_FALLBACK_MS / 1000;
            pthread_cond_timedwait(&sh->wake, &sh->lock, &ts);
        }
        seen = sh->wake_gen;
        pthread_mutex_unlock(&sh->lock);
    }
out:
    pthread_mutex_lock(&sh->lock);
    sh->worker_rc = rc;
    pthread_cond_broadcast(&sh->done);
    pthread_mutex_unlock(&sh->lock);
    btl_db_close(db);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const int64_t *sorted, int n, double p)
{
    int i = (int)(p * n + 0.999999) - 1; /* nearest-rank */
    if (i < 0)
        i = 0;
    if (i >= n)
        i = n - 1;
    return (double)sorted[i] / 1e6;
}

/* Enqueue one job the way the scheduler fires (own transaction), publish the
 * tick, wait until the worker claimed it. total and after_commit in ns. */
static int one_sample(lat_shared *sh, btl_db *db, btl_bus_sock *pub, int64_t *total,
                      int64_t *after_commit)
{
    int rc = 0;
    int64_t id = 0;
    btl_msg m;
    memset(&m, 0, sizeof m);
    int64_t t0 = now_ns();
    if ((rc = btl_db_begin(db)) != 0 || (rc = btl_jobs_enqueue(db, &noop_spec, &id)) != 0) {
        btl_db_rollback(db);
        goto out;
    }
    pthread_mutex_lock(&sh->lock);
    sh->expect_id = id;
    sh->picked_ns = 0;
    pthread_mutex_unlock(&sh->lock);
    if ((rc = btl_db_commit(db)) != 0)
        goto out;
    int64_t tc = now_ns();
    if ((rc = btl_proto_init(&m, TOPIC, "bench")) != 0)
        goto out;
    btl_strlcpy(m.body.tick.task, "bench", sizeof m.body.tick.task);
    m.body.tick.run_id = id;
    btl_strlcpy(m.body.tick.reason, "manual", sizeof m.body.tick.reason);
    m.body.tick.due_ts = btl_now_ms();
    if ((rc = btl_bus_send_msg(pub, &m)) != 0)
        goto out;
    pthread_mutex_lock(&sh->lock);
    while (sh->picked_ns == 0 && sh->worker_rc == 0)
        pthread_cond_wait(&sh->done, &sh->lock);
    int64_t t1 = sh->picked_ns;
    rc = sh->worker_rc;
    sh->expect_id = 0;
    pthread_mutex_unlock(&sh->lock);
    *total = t1 - t0;
    *after_commit = t1 - tc;
out:
    btl_msg_free(&m);
    return rc;
}

static int run_latency(const opts *o)
{
    btl_db *db = NULL;
    btl_bus_sock pub = {0};
    lat_shared sh;
    pthread_t recv_tid, work_tid;
    bool recv_started = false, work_started = false;
    int64_t *total = NULL, *tick = NULL;
    char url[128];
    int rc = 0;

    memset(&sh, 0, sizeof sh);
    sh.o = o;
    pthread_mutex_init(&sh.lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sh.wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&sh.done, NULL);

    total = calloc((size_t)o->samples, sizeof *total);
    tick = calloc((size_t)o->samples, sizeof *tick);
    if (total == NULL || tick == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    if ((rc = setup_db(o, &db)) != 0)
        goto out;
    if ((rc = btl_bus_pub_listen(&pub, o->bus_url)) != 0)
        goto out;
    btl_strlcpy(url, o->bus_url, sizeof url);
    if (strncmp(o->bus_url, "tcp://", 6) == 0) {
        int port = 0;
        if ((rc = btl_bus_local_port(&pub, &port)) != 0)
            goto out;
        btl_snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    }
    const char *topics[] = {TOPIC};
    if ((rc = btl_bus_sub_dial(&sh.sub, url, topics, 1)) != 0)
        goto out;
    if (pthread_create(&recv_tid, NULL, lat_receiver, &sh) != 0) {
        rc = BTL_ENOMEM;
        goto out;
    }
    recv_started = true;
    if (pthread_create(&work_tid, NULL, lat_worker, &sh) != 0) {
        rc = BTL_ENOMEM;
        goto out;
    }
    work_started = true;
    /* The SUB connects asynchronously; a tick sent before that is lost. */
    for (int i = 0; i < 100 && atomic_load(&sh.ticks_in) == 0; i++) {
        btl_msg m;
        memset(&m, 0, sizeof m);
        if (btl_proto_init(&m, TOPIC, "bench") == 0) {
            btl_strlcpy(m.body.tick.task, "warmup", sizeof m.body.tick.task);
            btl_strlcpy(m.body.tick.reason, "manual", sizeof m.body.tick.reason);
            btl_bus_send_msg(&pub, &m);
        }
        btl_msg_free(&m);
        btl_sleep_ms(20);
    }
    if (atomic_load(&sh.ticks_in) == 0) {
        fprintf(stderr, "bench: subscriber never connected\n");
        rc = BTL_EBUS;
        goto out;
    }
    for (int i = 0; i < o->warmup + o->samples; i++) {
        int64_t a = 0, b = 0;
        if ((rc = one_sample(&sh, db, &pub, &a, &b)) != 0) {
            fprintf(stderr, "bench: sample %d: %s (%s)\n", i, btl_strerror(rc),
                    btl_db_last_error(db));
            goto out;
        }
        if (i >= o->warmup) {
            total[i - o->warmup] = a;
            tick[i - o->warmup] = b;
        }
        if (o->gap_ms > 0)
            btl_sleep_ms((int64_t)(btl_rand01() * o->gap_ms));
    }
    qsort(total, (size_t)o->samples, sizeof *total, cmp_i64);
    qsort(tick, (size_t)o->samples, sizeof *tick, cmp_i64);
    int n = o->samples;
    printf("RESULT impl=botticelli mode=latency samples=%d gap_ms=0..%d wake=nng-tick "
           "fallback_poll_ms=%d p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f "
           "commit_to_claim_p50_ms=%.3f commit_to_claim_p99_ms=%.3f\n",
           n, o->gap_ms, POLL_FALLBACK_MS, pct_ms(total, n, 0.50), pct_ms(total, n, 0.90),
           pct_ms(total, n, 0.99), (double)total[n - 1] / 1e6, pct_ms(tick, n, 0.50),
           pct_ms(tick, n, 0.99));
out:
    if (work_started) {
        pthread_mutex_lock(&sh.lock);
        sh.stop = 1;
        sh.wake_gen++;
        pthread_cond_broadcast(&sh.wake);
        pthread_mutex_unlock(&sh.lock);
        pthread_join(work_tid, NULL);
    }
    /* Closing the SUB ends the receiver's recv with BTL_ECLOSED. */
    btl_bus_close(&sh.sub);
    if (recv_started)
        pthread_join(recv_tid, NULL);
    btl_bus_close(&pub);
    btl_db_close(db);
    free(total);
    free(tick);
    pthread_cond_destroy(&sh.wake);
    pthread_cond_destroy(&sh.done);
    pthread_mutex_destroy(&sh.lock);
    return rc;
}

int main(int argc, char **argv)
{
    opts o;
    if (parse_args(argc, argv, &o) != 0) {
        usage();
        return 2;
    }
    /* Line-buffered so run.sh sees results as they come. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    int rc = strcmp(o.mode, "throughput") == 0 ? run_throughput(&o) : run_latency(&o);
    if (rc != 0) {
        fprintf(stderr, "bench: %s failed: %s\n", o.mode, btl_strerror(rc));
        return 1;
    }
    return 0;
}
