/* JSON-lines logging to stderr, for services and tools only (libraries
 * return errors and never log). One object a line:
 *   {"ts":"...","level":"info","service":"scheduler","instance":"h/1","msg":"...", fields...}
 * The level comes from BTL_LOG (debug|info|warn|error, default info).
 * Macros test the level before any formatting happens. */
#ifndef BTL_LOG_H
#define BTL_LOG_H

#include <stdbool.h>

enum btl_log_level { BTL_LOG_DEBUG = 0, BTL_LOG_INFO, BTL_LOG_WARN, BTL_LOG_ERROR, BTL_LOG_OFF };

/* Call once at start; strings are copied. */
void btl_log_init(const char *service, const char *instance);
void btl_log_set_level(enum btl_log_level lvl);
/* Parse "debug|info|warn|error|off"; returns -1 if unknown. */
int btl_log_level_parse(const char *s);

extern volatile int btl__log_level;

/* Emit msg plus extra fields given as key/value string pairs ending with
 * NULL. A value starting with the byte 0x01 is written raw (numbers,
 * booleans, nested JSON): use BTL_LOG_RAW("42"). */
void btl__log_emit(enum btl_log_level lvl, const char *msg, ...) __attribute__((sentinel));

#define BTL_LOG_RAW(s) "\001" s

#define BTL_LOG(lvl, msg, ...)                                                                     \
    do {                                                                                           \
        if ((int)(lvl) >= btl__log_level)                                                          \
            btl__log_emit((lvl), (msg), ##__VA_ARGS__, (const char *)0);                           \
    } while (0)

#define BTL_DEBUG(msg, ...) BTL_LOG(BTL_LOG_DEBUG, msg, ##__VA_ARGS__)
#define BTL_INFO(msg, ...) BTL_LOG(BTL_LOG_INFO, msg, ##__VA_ARGS__)
#define BTL_WARN(msg, ...) BTL_LOG(BTL_LOG_WARN, msg, ##__VA_ARGS__)
#define BTL_ERROR(msg, ...) BTL_LOG(BTL_LOG_ERROR, msg, ##__VA_ARGS__)

/* Key/value helpers for numeric fields: format into a caller buffer with a
 * raw marker so btl__log_emit writes the number unquoted. */
const char *btl_log_i64(char buf[32], long long v);

#endif
