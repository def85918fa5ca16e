#include "btl/log.h"
#include "btl/util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

volatile int btl__log_level = BTL_LOG_INFO;
static char log_service[64] = "btl";
static char log_instance[128] = "";
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int btl_log_level_parse(const char *s)
{
    for (int i = 0; i < (int)BTL_ARRAY_LEN(level_names); i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return BTL_LOG_WARN;
    return -1;
}

void btl_log_init(const char *service, const char *instance)
{
    btl_strlcpy(log_service, service ? service : "btl", sizeof log_service);
    btl_strlcpy(log_instance, instance ? instance : "", sizeof log_instance);
    const char *env = getenv("BTL_LOG");
    int lvl = env ? btl_log_level_parse(env) : -1;
    if (lvl >= 0)
        btl__log_level = lvl;
}

void btl_log_set_level(enum btl_log_level lvl)
{
    btl__log_level = (int)lvl;
}

const char *btl_log_i64(char buf[32], long long v)
{
    btl_snprintf(buf, 32, "\001%lld", v);
    return buf;
}

/* Raw values are numbers or true/false/null only: a string from outside
 * that happens to start with the marker byte is quoted like any other. */
static bool raw_scalar(const char *v)
{
    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0 || strcmp(v, "null") == 0)
        return true;
    if (*v == '\0')
        return false;
    for (; *v; v++)
        if (!strchr("0123456789+-.eE", *v))
            return false;
    return true;
}

void btl__log_emit(enum btl_log_level lvl, const char *msg, ...)
{
    char ts[40];
    btl_buf b;
    btl_buf_init(&b, 64 * 1024); /* one line is bounded; overflow drops fields */
    btl_format_iso8601(btl_now_ms(), ts, sizeof ts);
    btl_buf_printf(&b, "{\"ts\":\"%s\",\"level\":\"%s\",\"service\":", ts,
                   level_names[lvl < BTL_LOG_OFF ? lvl : BTL_LOG_ERROR]);
    btl_buf_json_str(&b, log_service);
    btl_buf_puts(&b, ",\"instance\":");
    btl_buf_json_str(&b, log_instance);
    btl_buf_puts(&b, ",\"msg\":");
    btl_buf_json_str(&b, msg ? msg : "");
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (k == NULL)
            break;
        const char *v = va_arg(ap, const char *);
        btl_buf_puts(&b, ",");
        btl_buf_json_str(&b, k);
        btl_buf_puts(&b, ":");
        if (v == NULL)
            btl_buf_puts(&b, "null");
        else if (v[0] == '\001' && raw_scalar(v + 1))
            btl_buf_puts(&b, v + 1);
        else
            btl_buf_json_str(&b, v);
    }
    va_end(ap);
    btl_buf_puts(&b, "}\n");
    pthread_mutex_lock(&log_lock);
    if (b.data)
        fputs(b.data, stderr);
    fflush(stderr);
    pthread_mutex_unlock(&log_lock);
    btl_buf_free(&b);
}
