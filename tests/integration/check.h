/* Assertions for the C programs the integration tests run: count instead
 * of aborting, report "N passed, M failed" at the end (check_summary). */
#ifndef BTL_TEST_CHECK_H
#define BTL_TEST_CHECK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "btl/db.h"
#include "btl/err.h"

static atomic_int g_pass, g_fail;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (cond) {                                                                                \
            atomic_fetch_add(&g_pass, 1);                                                          \
        } else {                                                                                   \
            atomic_fetch_add(&g_fail, 1);                                                          \
            fprintf(stderr, "FAIL %s:%d: %s: ", __func__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* Abort the current test function when a precondition fails; cond is
 * evaluated once (it often has side effects such as a claim). */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        bool req_ok_ = (cond);                                                                     \
        CHECK(req_ok_, __VA_ARGS__);                                                               \
        if (!req_ok_)                                                                              \
            return;                                                                                \
    } while (0)

/* A connection or exit(2): without a database nothing can be checked. */
static inline btl_db *check_open_db(const char *url)
{
    btl_db *db = NULL;
    char err[512];
    int rc = btl_db_open(url, &db, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "FATAL: cannot connect: %s (%s)\n", err, btl_strerror(rc));
        exit(2);
    }
    return db;
}

/* Prints the closing line; returns the process exit status. */
static inline int check_summary(void)
{
    int fail = atomic_load(&g_fail);
    printf("%d passed, %d failed\n", atomic_load(&g_pass), fail);
    return fail == 0 ? 0 : 1;
}

#endif
