/* Configuration loader (DESIGN §6).
 *
 * Two passes. parse_tree() turns libyaml events into a small node tree
 * where every node keeps its 1-based line/column, so later checks can point
 * at the exact spot. walk_map() then walks that tree against tables of key
 * descriptors (name, type, bounds, default, offset, validator); cross-key
 * rules (schedule vs timezone, poster vs platforms, ...) run after a task or
 * the whole file has been read. The first error wins and is reported as
 * "FILE:LINE:COL: message". */
#include "btl/config.h"
#include "btl/err.h"
#include "btl/schedule.h"
#include "btl/tz.h"
#include "btl/util.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define CFG_MAX_FILE ((size_t)1 << 20) /* 1 MiB of YAML is plenty */
#define CFG_MAX_DEPTH 64
#define CFG_MAX_NODES 200000 /* bounds the tree whatever the input shape */
#define CFG_MAX_EXPANDED CFG_MAX_FILE
#define CFG_MAX_ARENA ((size_t)64 << 20)
#define CFG_MAX_LIST 1000 /* entries in a string list */

/* ---------------------------------------------------------------- arena */

/* Bump allocator: everything a config owns dies with one free walk. */
struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    max_align_t data[];
};

struct arena {
    struct arena_blk *head;
    size_t total;
};

static void *arena_alloc(struct arena *a, size_t n)
{
    const size_t align = sizeof(max_align_t);
    n = (n + align - 1) / align * align;
    if (n == 0)
        n = align;
    struct arena_blk *b = a->head;
    if (b == NULL || b->cap - b->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        if (a->total + cap > CFG_MAX_ARENA)
            return NULL;
        b = malloc(sizeof *b + cap);
        if (b == NULL)
            return NULL;
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
        a->total += cap;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

static char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static void arena_free(struct arena *a)
{
    struct arena_blk *b = a->head;
    while (b) {
        struct arena_blk *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->total = 0;
}

/* ------------------------------------------------------- env expansion */

static bool is_var_start(char c)
{
    return c == '_' || isalpha((unsigned char)c);
}

static bool is_var_char(char c)
{
    return c == '_' || isalnum((unsigned char)c);
}

int btl_config_env_expand(const char *in, char **out, char *err, size_t errlen)
{
    int rc = 0;
    btl_buf b;
    btl_buf_init(&b, CFG_MAX_EXPANDED);
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (in == NULL)
        return BTL_EINVAL;
    /* Never hand back NULL for "", callers treat the result as a string. */
    if ((rc = btl_buf_append(&b, "", 0)) != 0)
        goto out;
    const char *p = in;
    while (*p) {
        const char *dollar = strchr(p, '$');
        if (dollar == NULL) {
            rc = btl_buf_puts(&b, p);
            break;
        }
        if ((rc = btl_buf_append(&b, p, (size_t)(dollar - p))) != 0)
            goto out;
        if (dollar[1] == '$') {
            rc = btl_buf_append(&b, "$", 1);
            p = dollar + 2;
        } else if (dollar[1] != '{') {
            rc = btl_buf_append(&b, "$", 1); /* lone '$' stays literal */
            p = dollar + 1;
        } else {
            const char *name = dollar + 2;
            const char *close = strchr(name, '}');
            if (close == NULL) {
                btl_snprintf(err, errlen, "unterminated '${' (missing '}')");
                rc = BTL_ECONFIG;
                goto out;
            }
            const char *q = name;
            if (!is_var_start(*q)) {
                btl_snprintf(err, errlen, "bad variable name in '${%.*s}'",
                             (int)(close - name > 64 ? 64 : close - name), name);
                rc = BTL_ECONFIG;
                goto out;
            }
            while (is_var_char(*q))
                q++;
            size_t nlen = (size_t)(q - name);
            const char *def = NULL;
            if (q[0] == ':' && q[1] == '-') {
                def = q + 2;
            } else if (q != close) {
                btl_snprintf(err, errlen, "bad variable reference '${%.*s}'",
                             (int)(close - name > 64 ? 64 : close - name), name);
                rc = BTL_ECONFIG;
                goto out;
            }
            char var[256];
            if (nlen >= sizeof var) {
                btl_snprintf(err, errlen, "variable name too long");
                rc = BTL_ECONFIG;
                goto out;
            }
            memcpy(var, name, nlen);
            var[nlen] = '\0';
            const char *val = getenv(var);
            if (def != NULL && (val == NULL || *val == '\0'))
                rc = btl_buf_append(&b, def, (size_t)(close - def));
            else if (val != NULL)
                rc = btl_buf_puts(&b, val);
            else {
                btl_snprintf(err, errlen, "environment variable %s is not set", var);
                rc = BTL_ECONFIG;
                goto out;
            }
            p = close + 1;
        }
        if (rc)
            goto out;
    }
    if (rc)
        goto out;
    *out = btl_buf_steal(&b);
out:
    if (rc == BTL_ETOOBIG)
        btl_snprintf(err, errlen, "expanded value is larger than %zu bytes",
                     (size_t)CFG_MAX_EXPANDED);
    else if (rc == BTL_ENOMEM)
        btl_snprintf(err, errlen, "out of memory");
    btl_buf_free(&b);
    return rc;
}

/* ------------------------------------------------------------ the tree */

enum nkind { N_SCALAR, N_MAP, N_SEQ };

struct node {
    enum nkind kind;
    int line, col;                   /* 1-based */
    const char *s;                   /* scalar text (NUL-free) */
    bool plain;                      /* unquoted scalar: may mean null */
    struct node *head, *tail, *next; /* map: key nodes; seq: items */
    struct node *val;                /* on a map key: its value */
    size_t count;
};

struct anchor {
    struct anchor *next;
    const char *name;
    struct node *node;
};

struct frame {
    struct node *n;
    struct node *key; /* map frame: key waiting for its value */
    const char *anchor;
};

struct parser {
    const char *name;
    char *err;
    size_t errlen;
    struct arena *a;
    struct anchor *anchors;
    struct frame stack[CFG_MAX_DEPTH + 1];
    int depth;
    size_t nodes;
    struct node *root;
};

static int failf(const char *name, char *err, size_t errlen, int line, int col, const char *fmt,
                 ...) __attribute__((format(printf, 6, 7)));

static int failf(const char *name, char *err, size_t errlen, int line, int col, const char *fmt,
                 ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = btl_pos_errorv(err, errlen, name, line, col, fmt, ap);
    va_end(ap);
    return rc;
}

/* Printable, bounded copy of user text for messages. */
static const char *show(const char *s, char *buf, size_t n)
{
    size_t i = 0, max = n > 4 ? n - 4 : 0;
    for (; s[i] && i < max; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i]) {
        buf[i++] = '.';
        buf[i++] = '.';
        buf[i++] = '.';
    }
    buf[i] = '\0';
    return buf;
}

static bool is_null_scalar(const struct node *n)
{
    return n->kind == N_SCALAR && n->plain &&
           (n->s[0] == '\0' || strcmp(n->s, "~") == 0 || strcmp(n->s, "null") == 0 ||
            strcmp(n->s, "Null") == 0 || strcmp(n->s, "NULL") == 0);
}

static const char *kind_name(const struct node *n)
{
    switch (n->kind) {
    case N_MAP:
        return "a mapping";
    case N_SEQ:
        return "a sequence";
    default:
        return "a scalar";
    }
}

static struct node *new_node(struct parser *p, enum nkind k, yaml_mark_t m)
{
    if (++p->nodes > CFG_MAX_NODES) {
        failf(p->name, p->err, p->errlen, (int)m.line + 1, (int)m.column + 1,
              "document has more than %d nodes", CFG_MAX_NODES);
        return NULL;
    }
    struct node *n = arena_alloc(p->a, sizeof *n);
    if (n == NULL) {
        btl_snprintf(p->err, p->errlen, "%s:%d:%d: out of memory", p->name, (int)m.line + 1,
                     (int)m.column + 1);
        return NULL;
    }
    n->kind = k;
    n->line = (int)m.line + 1;
    n->col = (int)m.column + 1;
    return n;
}

static struct node *find_key(const struct node *map, const char *key)
{
    if (map == NULL || map->kind != N_MAP)
        return NULL;
    for (struct node *k = map->head; k; k = k->next)
        if (strcmp(k->s, key) == 0)
            return k;
    return NULL;
}

static int remember_anchor(struct parser *p, const char *anchor, struct node *n)
{
    if (anchor == NULL)
        return 0;
    struct anchor *an = arena_alloc(p->a, sizeof *an);
    if (an == NULL)
        return failf(p->name, p->err, p->errlen, n->line, n->col, "out of memory");
    an->name = anchor;
    an->node = n;
    an->next = p->anchors; /* newest first: a redefined anchor shadows the old one */
    p->anchors = an;
    return 0;
}

/* Hang a finished node under the frame on top of the stack. */
static int attach(struct parser *p, struct node *n)
{
    if (p->depth == 0) {
        p->root = n;
        return 0;
    }
    struct frame *f = &p->stack[p->depth - 1];
    struct node *parent = f->n;
    if (parent->kind == N_MAP && f->key == NULL) {
        if (n->kind != N_SCALAR)
            return failf(p->name, p->err, p->errlen, n->line, n->col,
                         "mapping keys must be scalars, found %s", kind_name(n));
        struct node *dup = find_key(parent, n->s);
        if (dup) {
            char b[80];
            return failf(p->name, p->err, p->errlen, n->line, n->col,
                         "duplicate key '%s' (first defined at line %d, column %d)",
                         show(n->s, b, sizeof b), dup->line, dup->col);
        }
        f->key = n;
        return 0;
    }
    struct node *item = n;
    if (parent->kind == N_MAP) {
        item = f->key;
        item->val = n;
        f->key = NULL;
    }
    if (parent->tail)
        parent->tail->next = item;
    else
        parent->head = item;
    parent->tail = item;
    parent->count++;
    return 0;
}

static int yaml_fail(struct parser *p, yaml_parser_t *yp)
{
    yaml_mark_t m = yp->problem_mark;
    const char *problem = yp->problem ? yp->problem : "syntax error";
    if (yp->error == YAML_MEMORY_ERROR)
        problem = "out of memory";
    if (yp->context)
        return failf(p->name, p->err, p->errlen, (int)m.line + 1, (int)m.column + 1,
                     "YAML syntax error: %s %s (started at line %d, column %d)", problem,
                     yp->context, (int)yp->context_mark.line + 1, (int)yp->context_mark.column + 1);
    return failf(p->name, p->err, p->errlen, (int)m.line + 1, (int)m.column + 1,
                 "YAML syntax error: %s", problem);
}

static const char *dup_anchor(struct parser *p, const yaml_char_t *a)
{
    if (a == NULL)
        return NULL;
    return arena_strndup(p->a, (const char *)a, strlen((const char *)a));
}

/* One event; *done set at STREAM_END. */
static int on_event(struct parser *p, yaml_event_t *ev, int *docs, bool *done)
{
    yaml_mark_t m = ev->start_mark;
    struct node *n = NULL;
    switch (ev->type) {
    case YAML_STREAM_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
        return 0;
    case YAML_STREAM_END_EVENT:
        *done = true;
        return 0;
    case YAML_DOCUMENT_START_EVENT:
        if (++*docs > 1)
            return failf(p->name, p->err, p->errlen, (int)m.line + 1, (int)m.column + 1,
                         "only one YAML document is allowed");
        return 0;
    case YAML_SCALAR_EVENT: {
        size_t len = ev->data.scalar.length;
        const char *v = (const char *)ev->data.scalar.value;
        if (memchr(v, '\0', len))
            return failf(p->name, p->err, p->errlen, (int)m.line + 1, (int)m.column + 1,
                         "NUL character in value");
        if ((n = new_node(p, N_SCALAR, m)) == NULL)
            return BTL_ECONFIG;
        n->s = arena_strndup(p->a, v, len);
        n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (n->s == NULL)
            return failf(p->name, p->err, p->errlen, n->line, n->col, "out of memory");
        int rc = remember_anchor(p, dup_anchor(p, ev->data.scalar.anchor), n);
        return rc ? rc : attach(p, n);
    }
    case YAML_ALIAS_EVENT: {
        const char *name = (const char *)ev->data.alias.anchor;
        struct anchor *an = p->anchors;
        while (an && strcmp(an->name, name) != 0)
            an = an->next;
        if (an == NULL) {
            char b[80];
            return failf(p->name, p->err, p->errlen, (int)m.line + 1, (int)m.column + 1,
                         "unknown alias '*%s'", show(name, b, sizeof b));
        }
        /* A shallow copy: children are shared read-only, links are fresh. */
        if ((n = new_node(p, an->node->kind, m)) == NULL)
            return BTL_ECONFIG;
        *n = *an->node;
        n->next = NULL;
        n->val = NULL;
        return attach(p, n);
    }
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT: {
        bool map = ev->type == YAML_MAPPING_START_EVENT;
        if (p->depth >= CFG_MAX_DEPTH)
            return failf(p->name, p->err, p->errlen, (int)m.line + 1, (int)m.column + 1,
                         "nesting deeper than %d levels", CFG_MAX_DEPTH);
        if ((n = new_node(p, map ? N_MAP : N_SEQ, m)) == NULL)
            return BTL_ECONFIG;
        struct frame *f = &p->stack[p->depth++];
        f->n = n;
        f->key = NULL;
        /* Registered when complete, so a node cannot alias its own ancestor. */
        f->anchor =
            dup_anchor(p, map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor);
        return 0;
    }
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT: {
        struct frame *f = &p->stack[--p->depth];
        n = f->n;
        int rc = remember_anchor(p, f->anchor, n);
        return rc ? rc : attach(p, n);
    }
    default:
        return 0;
    }
}

static int parse_tree(struct parser *p, const char *text, size_t len)
{
    int rc = 0;
    yaml_parser_t yp;
    if (!yaml_parser_initialize(&yp))
        return failf(p->name, p->err, p->errlen, 1, 1, "out of memory");
    yaml_parser_set_input_string(&yp, (const unsigned char *)text, len);
    int docs = 0;
    bool done = false;
    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&yp, &ev)) {
            rc = yaml_fail(p, &yp);
            goto out;
        }
        rc = on_event(p, &ev, &docs, &done);
        yaml_event_delete(&ev);
        if (rc)
            goto out;
    }
out:
    yaml_parser_delete(&yp);
    return rc;
}

/* ------------------------------------------------------ key descriptors */

enum ktype {
    T_STR,     /* const char * */
    T_INT,     /* int, [min, max] */
    T_I64,     /* int64_t, [min, max] */
    T_DOUBLE,  /* double, [dmin, dmax] */
    T_BOOL,    /* bool */
    T_DUR,     /* int64_t milliseconds, [min, max] */
    T_ENUM,    /* int-sized enum: index into enums[] */
    T_ENUMSTR, /* const char *, one of enums[] */
    T_CLOCK,   /* int minutes after midnight from "HH:MM" */
    T_STRLIST, /* const char ** plus size_t count at count_off */
    T_MAP,     /* nested table `sub`, its base at off */
    T_CUSTOM,  /* handled by custom() */
};

enum { F_REQUIRED = 1, F_BLOCK = 2 /* optional map with a `set` flag at set_off */ };

struct walk;
struct key_desc;

typedef int (*check_fn)(struct walk *w, const struct node *n, const char *path, void *field);
typedef int (*custom_fn)(struct walk *w, const struct key_desc *d, const struct node *val,
                         const struct node *pos, const char *path, char *base);

struct key_desc {
    const char *name;
    enum ktype type;
    unsigned flags;
    int64_t min, max;
    double dmin, dmax;
    const char *def; /* default, spelled as in YAML; NULL = "" / 0 / false */
    size_t off;
    const char *const *enums; /* NULL-terminated */
    const struct key_desc *sub;
    size_t set_off;
    size_t count_off;
    check_fn check;
    custom_fn custom;
};

struct walk {
    const char *name;
    char *err;
    size_t errlen;
    struct arena *a; /* the config's arena */
    btl_config *cfg;
    const struct node *root;
};

static int wfail(struct walk *w, const struct node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int wfail(struct walk *w, const struct node *n, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return failf(w->name, w->err, w->errlen, n ? n->line : 1, n ? n->col : 1, "%s", msg);
}

static void join_path(char *dst, size_t n, const char *path, const char *key)
{
    if (path[0])
        btl_snprintf(dst, n, "%s.%s", path, key); /* a truncated path only shortens a message */
    else
        btl_snprintf(dst, n, "%s", key);
}

/* Levenshtein distance, for "did you mean". Long keys are never close. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 99;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static void format_dur(int64_t ms, char *buf, size_t n)
{
    static const struct {
        int64_t ms;
        const char *unit;
    } units[] = {{7 * 86400000LL, "w"}, {86400000LL, "d"}, {3600000, "h"},
                 {60000, "m"},          {1000, "s"},       {1, "ms"}};
    for (size_t i = 0; i < BTL_ARRAY_LEN(units); i++) {
        if (ms != 0 && ms % units[i].ms == 0) {
            btl_snprintf(buf, n, "%lld%s", (long long)(ms / units[i].ms), units[i].unit);
            return;
        }
    }
    btl_snprintf(buf, n, "%lldms", (long long)ms);
}

static int enum_index(const char *const *enums, const char *s)
{
    for (int i = 0; enums[i]; i++)
        if (strcmp(enums[i], s) == 0)
            return i;
    return -1;
}

static void enum_list(const char *const *enums, char *buf, size_t n)
{
    btl_buf b;
    btl_buf_init(&b, n > 1 ? n - 1 : 1);
    for (int i = 0; enums[i]; i++)
        btl_buf_printf(&b, "%s%s", i ? ", " : "", enums[i]);
    btl_strlcpy(buf, b.data ? b.data : "", n);
    btl_buf_free(&b);
}

static int parse_clock(const char *s, int *out)
{
    if (strlen(s) != 5 || s[2] != ':' || !isdigit((unsigned char)s[0]) ||
        !isdigit((unsigned char)s[1]) || !isdigit((unsigned char)s[3]) ||
        !isdigit((unsigned char)s[4]))
        return BTL_EINVAL;
    int h = (s[0] - '0') * 10 + (s[1] - '0');
    int m = (s[3] - '0') * 10 + (s[4] - '0');
    if (h > 23 || m > 59)
        return BTL_EINVAL;
    *out = h * 60 + m;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes",
                                      "YES",  "on",   "On",   "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No",
                                     "NO",    "off",   "Off",   "OFF"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(yes); i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return BTL_EINVAL;
}

/* Convert one (expanded) scalar into its field. n may be NULL for defaults. */
static int set_scalar(struct walk *w, const struct key_desc *d, const char *s, const struct node *n,
                      const char *path, char *base)
{
    void *field = base + d->off;
    char b[80], lo[32], hi[32];
    switch (d->type) {
    case T_STR: {
        const char *copy = arena_strndup(w->a, s, strlen(s));
        if (copy == NULL)
            return wfail(w, n, "out of memory");
        *(const char **)field = copy;
        break;
    }
    case T_ENUMSTR: {
        int i = enum_index(d->enums, s);
        /* "" is allowed only for an optional key without default (platform). */
        if (i < 0 && !(s[0] == '\0' && d->def == NULL && !(d->flags & F_REQUIRED))) {
            char list[160];
            enum_list(d->enums, list, sizeof list);
            return wfail(w, n, "%s: '%s' is not one of: %s", path, show(s, b, sizeof b), list);
        }
        *(const char **)field = i < 0 ? "" : d->enums[i];
        break;
    }
    case T_ENUM: {
        int i = enum_index(d->enums, s);
        if (i < 0) {
            char list[160];
            enum_list(d->enums, list, sizeof list);
            return wfail(w, n, "%s: '%s' is not one of: %s", path, show(s, b, sizeof b), list);
        }
        *(int *)field = i;
        break;
    }
    case T_INT:
    case T_I64: {
        int64_t v;
        int rc = btl_parse_i64(s, INT64_MIN, INT64_MAX, &v);
        if (rc == BTL_EINVAL)
            return wfail(w, n, "%s: '%s' is not an integer", path, show(s, b, sizeof b));
        if (rc || v < d->min || v > d->max)
            return wfail(w, n, "%s: %s is out of range %lld..%lld", path, show(s, b, sizeof b),
                         (long long)d->min, (long long)d->max);
        if (d->type == T_INT)
            *(int *)field = (int)v;
        else
            *(int64_t *)field = v;
        break;
    }
    case T_DOUBLE: {
        double v;
        int rc = btl_parse_double(s, &v);
        if (rc == BTL_EINVAL || (rc == 0 && !isfinite(v)))
            return wfail(w, n, "%s: '%s' is not a number", path, show(s, b, sizeof b));
        if (rc || v < d->dmin || v > d->dmax)
            return wfail(w, n, "%s: %s is out of range %g..%g", path, show(s, b, sizeof b), d->dmin,
                         d->dmax);
        *(double *)field = v;
        break;
    }
    case T_BOOL: {
        bool v;
        if (parse_bool(s, &v))
            return wfail(w, n, "%s: '%s' is not a boolean (true or false)", path,
                         show(s, b, sizeof b));
        *(bool *)field = v;
        break;
    }
    case T_DUR: {
        int64_t v;
        int rc = btl_parse_duration_ms(s, &v);
        format_dur(d->min, lo, sizeof lo);
        format_dur(d->max, hi, sizeof hi);
        if (rc == BTL_EINVAL)
            return wfail(w, n, "%s: '%s' is not a duration (like 500ms, 90s, 15m, 2h, 1d)", path,
                         show(s, b, sizeof b));
        if (rc || v < d->min || v > d->max)
            return wfail(w, n, "%s: %s is out of range %s..%s", path, show(s, b, sizeof b), lo, hi);
        *(int64_t *)field = v;
        break;
    }
    case T_CLOCK: {
        int v;
        if (parse_clock(s, &v))
            return wfail(w, n, "%s: '%s' is not a time of day HH:MM (00:00-23:59)", path,
                         show(s, b, sizeof b));
        *(int *)field = v;
        break;
    }
    default:
        return wfail(w, n, "%s: internal error: not a scalar key", path);
    }
    return d->check && n ? d->check(w, n, path, field) : 0;
}

static int walk_map(struct walk *w, const struct key_desc *tab, const struct node *map,
                    const struct node *pos, bool enforce_required, const char *path, char *base);

static int set_list(struct walk *w, const struct key_desc *d, const struct node *val,
                    const char *path, char *base)
{
    const char **items = NULL;
    size_t n = 0;
    if (val && !is_null_scalar(val)) {
        if (val->kind != N_SEQ)
            return wfail(w, val, "%s: expected a list, found %s", path, kind_name(val));
        if (val->count > CFG_MAX_LIST)
            return wfail(w, val, "%s: more than %d entries", path, CFG_MAX_LIST);
        items = arena_alloc(w->a, (val->count + 1) * sizeof *items);
        if (items == NULL)
            return wfail(w, val, "out of memory");
        for (const struct node *it = val->head; it; it = it->next) {
            if (it->kind != N_SCALAR)
                return wfail(w, it, "%s[%zu]: expected a string, found %s", path, n, kind_name(it));
            char *x = NULL, e[256];
            if (btl_config_env_expand(it->s, &x, e, sizeof e))
                return wfail(w, it, "%s", e);
            items[n] = arena_strndup(w->a, x, strlen(x));
            free(x);
            if (items[n] == NULL)
                return wfail(w, it, "out of memory");
            n++;
        }
    }
    *(const char ***)(base + d->off) = items;
    *(size_t *)(base + d->count_off) = n;
    return 0;
}

static const char *zero_default(enum ktype t)
{
    switch (t) {
    case T_BOOL:
        return "false";
    case T_STR:
    case T_ENUMSTR:
        return "";
    default:
        return "0";
    }
}

/* Fill one key from its node, or from its default when val is NULL. pos is
 * the nearest existing node, for messages about absent things. */
static int set_value(struct walk *w, const struct key_desc *d, const struct node *val,
                     const struct node *pos, const char *path, char *base)
{
    switch (d->type) {
    case T_MAP:
        if (d->flags & F_BLOCK)
            *(bool *)(base + d->off + d->set_off) = val != NULL;
        if (val && is_null_scalar(val))
            return walk_map(w, d->sub, NULL, val, true, path, base + d->off);
        if (val && val->kind != N_MAP)
            return wfail(w, val, "%s: expected a mapping, found %s", path, kind_name(val));
        /* An absent optional block gets its defaults but no required checks. */
        return walk_map(w, d->sub, val, val ? val : pos, val != NULL || !(d->flags & F_BLOCK), path,
                        base + d->off);
    case T_STRLIST:
        return set_list(w, d, val, path, base);
    case T_CUSTOM:
        return d->custom(w, d, val, pos, path, base);
    default:
        break;
    }
    if (val == NULL)
        return set_scalar(w, d, d->def ? d->def : zero_default(d->type), NULL, path, base);
    if (val->kind != N_SCALAR)
        return wfail(w, val, "%s: expected a scalar, found %s", path, kind_name(val));
    /* An explicit null is an empty string; numbers reject it below. */
    const char *raw = is_null_scalar(val) ? "" : val->s;
    char *x = NULL, e[256];
    if (btl_config_env_expand(raw, &x, e, sizeof e))
        return wfail(w, val, "%s", e);
    int rc = set_scalar(w, d, x, val, path, base);
    free(x);
    return rc;
}

static int walk_map(struct walk *w, const struct key_desc *tab, const struct node *map,
                    const struct node *pos, bool enforce_required, const char *path, char *base)
{
    char sub[256], b[80];
    if (map) {
        for (const struct node *k = map->head; k; k = k->next) {
            const struct key_desc *d = tab;
            while (d->name && strcmp(d->name, k->s) != 0)
                d++;
            if (d->name == NULL) {
                const char *best = NULL;
                size_t bestd = 3;
                for (const struct key_desc *c = tab; c->name; c++) {
                    size_t dist = edit_distance(k->s, c->name);
                    /* Close relative to the name's length: 'a' is not 'api'. */
                    if (dist < bestd && dist * 3 <= strlen(c->name)) {
                        bestd = dist;
                        best = c->name;
                    }
                }
                const char *where = path[0] ? path : "the top level";
                if (best)
                    return wfail(w, k, "unknown key '%s' in %s (did you mean '%s'?)",
                                 show(k->s, b, sizeof b), where, best);
                return wfail(w, k, "unknown key '%s' in %s", show(k->s, b, sizeof b), where);
            }
            join_path(sub, sizeof sub, path, d->name);
            int rc = set_value(w, d, k->val, k, sub, base);
            if (rc)
                return rc;
        }
    }
    for (const struct key_desc *d = tab; d->name; d++) {
        if (find_key(map, d->name))
            continue;
        if (d->flags & F_REQUIRED) {
            if (!enforce_required)
                continue; /* fields of an absent optional block are never read */
            if (path[0])
                return wfail(w, pos, "%s: missing required key '%s'", path, d->name);
            return wfail(w, pos, "missing required key '%s'", d->name);
        }
        join_path(sub, sizeof sub, path, d->name);
        int rc = set_value(w, d, NULL, pos, sub, base);
        if (rc)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------ validators */

static int check_tz(struct walk *w, const struct node *n, const char *path, void *field)
{
    const char *name = *(const char **)field;
    btl_tz *tz = NULL;
    char b[80];
    if (name[0] == '\0' || btl_tz_load(name, &tz) != 0)
        return wfail(w, n, "%s: unknown time zone '%s'", path, show(name, b, sizeof b));
    btl_tz_free(tz);
    return 0;
}

static int check_bus_url(struct walk *w, const struct node *n, const char *path, void *field)
{
    const char *s = *(const char **)field;
    char b[80];
    if (strncmp(s, "tcp://", 6) != 0 && strncmp(s, "ipc://", 6) != 0 &&
        strncmp(s, "inproc://", 9) != 0)
        return wfail(w, n, "%s: '%s' is not an nng address (tcp://, ipc:// or inproc://)", path,
                     show(s, b, sizeof b));
    return 0;
}

static int check_http_url(struct walk *w, const struct node *n, const char *path, void *field)
{
    const char *s = *(const char **)field;
    char b[80];
    if (s[0] && strncmp(s, "http://", 7) != 0 && strncmp(s, "https://", 8) != 0)
        return wfail(w, n, "%s: '%s' is not an http:// or https:// URL", path,
                     show(s, b, sizeof b));
    return 0;
}

/* "HOST:PORT", HOST may be empty or a [v6] literal. */
static int check_listen(struct walk *w, const struct node *n, const char *path, void *field)
{
    const char *s = *(const char **)field;
    const char *colon = strrchr(s, ':');
    int64_t port;
    char b[80];
    if (colon == NULL || btl_parse_i64(colon + 1, 0, 65535, &port) != 0)
        return wfail(w, n, "%s: '%s' is not HOST:PORT", path, show(s, b, sizeof b));
    return 0;
}

static int check_env_name(struct walk *w, const struct node *n, const char *path, void *field)
{
    const char *s = *(const char **)field;
    char b[80];
    if (s[0] == '\0')
        return 0;
    bool ok = is_var_start(s[0]);
    for (const char *p = s; ok && *p; p++)
        ok = is_var_char(*p);
    if (!ok)
        return wfail(w, n, "%s: '%s' is not an environment variable name", path,
                     show(s, b, sizeof b));
    return 0;
}

static int check_job(struct walk *w, const struct node *n, const char *path, void *field)
{
    const char *s = *(const char **)field;
    char b[80];
    int64_t ms;
    if (s[0] == '\0' || strcmp(s, "noop") == 0)
        return 0;
    if (strncmp(s, "sleep ", 6) == 0) {
        if (btl_parse_i64(s + 6, 0, 3600000, &ms) != 0)
            return wfail(w, n, "%s: 'sleep' needs milliseconds 0..3600000, got '%s'", path,
                         show(s + 6, b, sizeof b));
        return 0;
    }
    if (strncmp(s, "fail ", 5) == 0 && s[5] != '\0')
        return 0;
    return wfail(w, n, "%s: '%s' is not a job (noop, sleep <ms>, fail <message>)", path,
                 show(s, b, sizeof b));
}

/* ---------------------------------------------------------------- tables */

#define STR(T, k, f, d, chk)                                                                       \
    {                                                                                              \
        .name = k, .type = T_STR, .off = offsetof(T, f), .def = d, .check = chk                    \
    }
#define REQSTR(T, k, f, chk)                                                                       \
    {                                                                                              \
        .name = k, .type = T_STR, .flags = F_REQUIRED, .off = offsetof(T, f), .check = chk         \
    }
#define INT(T, k, f, lo, hi, d)                                                                    \
    {                                                                                              \
        .name = k, .type = T_INT, .off = offsetof(T, f), .min = lo, .max = hi, .def = d            \
    }
#define I64(T, k, f, lo, hi, d)                                                                    \
    {                                                                                              \
        .name = k, .type = T_I64, .off = offsetof(T, f), .min = lo, .max = hi, .def = d            \
    }
#define DBL(T, k, f, lo, hi, d)                                                                    \
    {                                                                                              \
        .name = k, .type = T_DOUBLE, .off = offsetof(T, f), .dmin = lo, .dmax = hi, .def = d       \
    }
#define BOOL(T, k, f, d)                                                                           \
    {                                                                                              \
        .name = k, .type = T_BOOL, .off = offsetof(T, f), .def = d                                 \
    }
#define DUR(T, k, f, lo, hi, d)                                                                    \
    {                                                                                              \
        .name = k, .type = T_DUR, .off = offsetof(T, f), .min = lo, .max = hi, .def = d            \
    }
#define ENUM(T, k, f, e, d)                                                                        \
    {                                                                                              \
        .name = k, .type = T_ENUM, .off = offsetof(T, f), .enums = e, .def = d                     \
    }
#define ENUMSTR(T, k, f, e, d, fl)                                                                 \
    {                                                                                              \
        .name = k, .type = T_ENUMSTR, .flags = fl, .off = offsetof(T, f), .enums = e, .def = d     \
    }
#define MAP(k, o, s)                                                                               \
    {                                                                                              \
        .name = k, .type = T_MAP, .off = o, .sub = s                                               \
    }
#define BLOCK(k, o, s, so)                                                                         \
    {                                                                                              \
        .name = k, .type = T_MAP, .flags = F_BLOCK, .off = o, .sub = s, .set_off = so              \
    }
#define END                                                                                        \
    {                                                                                              \
        .name = NULL                                                                               \
    }

#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

/* T_ENUM fields are written through int *. */
_Static_assert(sizeof(enum btl_catchup) == sizeof(int), "enum size");
_Static_assert(sizeof(enum btl_strategy) == sizeof(int), "enum size");
_Static_assert(sizeof(enum btl_curation_mode) == sizeof(int), "enum size");

/* Order matches the enum values in config.h. */
static const char *const catchup_names[] = {"one", "none", NULL};
static const char *const strategy_names[] = {"single_run", "drain_queue", NULL};
static const char *const mode_names[] = {"auto", "manual", NULL};
static const char *const service_names[] = {"generator", "curator", "poster", NULL};
static const char *const llm_kinds[] = {"openai", "gemini", "offline", NULL};
static const char *const platform_names[] = {"discord", "discord_webhook", "mastodon", "file",
                                             NULL};

static const struct key_desc execution_tab[] = {
    INT(btl_execution_cfg, "max_retries", max_retries, 0, 100, "2"),
    BOOL(btl_execution_cfg, "continue_on_error", continue_on_error, "false"),
    BOOL(btl_execution_cfg, "stop_on_unrecoverable", stop_on_unrecoverable, "true"),
    ENUM(btl_execution_cfg, "strategy", strategy, strategy_names, "single_run"),
    END,
};

static const struct key_desc window_tab[] = {
    {.name = "from",
     .type = T_CLOCK,
     .flags = F_REQUIRED,
     .off = offsetof(btl_window_cfg, from_min)},
    {.name = "to", .type = T_CLOCK, .flags = F_REQUIRED, .off = offsetof(btl_window_cfg, to_min)},
    STR(btl_window_cfg, "timezone", timezone, "UTC", check_tz),
    END,
};

/* near_duplicate's fields sit directly in btl_curation_cfg: sub-base offset 0. */
static const struct key_desc near_dup_tab[] = {
    INT(btl_curation_cfg, "days", near_duplicate_days, 0, 3650, "30"),
    DBL(btl_curation_cfg, "threshold", near_duplicate_threshold, 0, 1, "0.8"),
    END,
};

static const struct key_desc curation_tab[] = {
    ENUM(btl_curation_cfg, "mode", mode, mode_names, "auto"),
    INT(btl_curation_cfg, "select_top", select_top, 1, 1000, "3"),
    DBL(btl_curation_cfg, "min_score", min_score, 0, 50, "35"),
    INT(btl_curation_cfg, "max_chars", max_chars, 1, 100000, "2000"),
    INT(btl_curation_cfg, "batch_size", batch_size, 1, 50, "5"),
    BOOL(btl_curation_cfg, "on_event", on_event, "true"),
    BOOL(btl_curation_cfg, "keep_unselected", keep_unselected, "false"),
    {.name = "banned_phrases",
     .type = T_STRLIST,
     .off = offsetof(btl_curation_cfg, banned_phrases),
     .count_off = offsetof(btl_curation_cfg, n_banned_phrases)},
    MAP("near_duplicate", 0, near_dup_tab),
    END,
};

static const struct key_desc task_tab[] = {
    ENUMSTR(btl_task_cfg, "service", service, service_names, NULL, F_REQUIRED),
    REQSTR(btl_task_cfg, "schedule", schedule, NULL),
    STR(btl_task_cfg, "timezone", timezone, "UTC", check_tz),
    ENUM(btl_task_cfg, "catchup", catchup, catchup_names, "one"),
    INT(btl_task_cfg, "jitter_percent", jitter_percent, 0, 100, "0"),
    STR(btl_task_cfg, "narrative", narrative, NULL, NULL),
    INT(btl_task_cfg, "iterations", iterations, 1, 1000, "1"),
    ENUMSTR(btl_task_cfg, "platform", platform, platform_names, NULL, 0),
    STR(btl_task_cfg, "job", job, NULL, check_job),
    INT(btl_task_cfg, "fanout", fanout, 1, 10000,
        "1"), /* BTL_JOBS_BATCH_MAX: one enqueue per fire */
    INT(btl_task_cfg, "posts_per_job", posts_per_job, 1, 1000, "1"),
    BOOL(btl_task_cfg, "enabled", enabled, "true"),
    MAP("execution", offsetof(btl_task_cfg, execution), execution_tab),
    BLOCK("window", offsetof(btl_task_cfg, window), window_tab, offsetof(btl_window_cfg, set)),
    MAP("curation", offsetof(btl_task_cfg, curation), curation_tab),
    END,
};

static const struct key_desc budget_tab[] = {
    INT(btl_budget_cfg, "rpm", rpm, 0, 1000000000, "0"),
    INT(btl_budget_cfg, "rpd", rpd, 0, 1000000000, "0"),
    I64(btl_budget_cfg, "tpm", tpm, 0, 1000000000000000LL, "0"),
    I64(btl_budget_cfg, "tpd", tpd, 0, 1000000000000000LL, "0"),
    DBL(btl_budget_cfg, "multiplier", multiplier, 0, 1, "0.8"),
    END,
};

static const struct key_desc llm_tab[] = {
    ENUMSTR(btl_llm_cfg, "kind", kind, llm_kinds, "offline", 0),
    STR(btl_llm_cfg, "base_url", base_url, NULL, check_http_url),
    STR(btl_llm_cfg, "model", model, NULL, NULL),
    STR(btl_llm_cfg, "api_key_env", api_key_env, NULL, check_env_name),
    DUR(btl_llm_cfg, "timeout", timeout_ms, 1 * SEC, HOUR, "60s"),
    MAP("budget", offsetof(btl_llm_cfg, budget), budget_tab),
    END,
};

static const struct key_desc providers_tab[] = {
    MAP("llm", offsetof(btl_config, providers.llm), llm_tab),
    END,
};

/* Platform blocks live in anonymous structs: offsets are from btl_config. */
static const struct key_desc discord_tab[] = {
    STR(btl_config, "api_base", platforms.discord.api_base, "https://discord.com/api/v10",
        check_http_url),
    STR(btl_config, "token_env", platforms.discord.token_env, "DISCORD_TOKEN", check_env_name),
    STR(btl_config, "channel_id", platforms.discord.channel_id, NULL, NULL),
    END,
};

static const struct key_desc webhook_tab[] = {
    STR(btl_config, "url_env", platforms.discord_webhook.url_env, "DISCORD_WEBHOOK_URL",
        check_env_name),
    END,
};

static const struct key_desc mastodon_tab[] = {
    {.name = "base_url",
     .type = T_STR,
     .flags = F_REQUIRED,
     .off = offsetof(btl_config, platforms.mastodon.base_url),
     .check = check_http_url},
    STR(btl_config, "token_env", platforms.mastodon.token_env, "MASTODON_TOKEN", check_env_name),
    INT(btl_config, "max_chars", platforms.mastodon.max_chars, 1, 100000, "500"),
    END,
};

static const struct key_desc file_tab[] = {
    STR(btl_config, "path", platforms.file.path, "var/posts.log", NULL),
    END,
};

static const struct key_desc platforms_tab[] = {
    BLOCK("discord", 0, discord_tab, offsetof(btl_config, platforms.discord.set)),
    BLOCK("discord_webhook", 0, webhook_tab, offsetof(btl_config, platforms.discord_webhook.set)),
    BLOCK("mastodon", 0, mastodon_tab, offsetof(btl_config, platforms.mastodon.set)),
    BLOCK("file", 0, file_tab, offsetof(btl_config, platforms.file.set)),
    END,
};

static const struct key_desc database_tab[] = {
    REQSTR(btl_config, "url", database.url, NULL),
    END,
};

static const struct key_desc bus_tab[] = {
    STR(btl_config, "publish", bus.publish, "tcp://0.0.0.0:7450", check_bus_url),
    STR(btl_config, "collect", bus.collect, "tcp://0.0.0.0:7451", check_bus_url),
    STR(btl_config, "control", bus.control, "tcp://0.0.0.0:7452", check_bus_url),
    STR(btl_config, "connect", bus.connect, "tcp://127.0.0.1", check_bus_url),
    END,
};

static const struct key_desc http_tab[] = {
    STR(btl_config, "listen", http.listen, "0.0.0.0:8080", check_listen),
    END,
};

static const struct key_desc api_tab[] = {
    STR(btl_config, "jwt_secret", api.jwt_secret, NULL, NULL),
    BOOL(btl_config, "public_reads", api.public_reads, "false"),
    END,
};

static const struct key_desc alerts_tab[] = {
    STR(btl_config, "webhook_url", alerts.webhook_url, NULL, check_http_url),
    END,
};

static const struct key_desc scheduler_tab[] = {
    DUR(btl_config, "check_interval", scheduler.check_interval_ms, 10, HOUR, "1s"),
    INT(btl_config, "max_consecutive_failures", scheduler.max_consecutive_failures, 1, 1000, "5"),
    DUR(btl_config, "circuit_reset", scheduler.circuit_reset_ms, SEC, 7 * DAY, "5m"),
    DUR(btl_config, "failover", scheduler.failover_ms, SEC, HOUR, "10s"),
    DUR(btl_config, "history_retention", scheduler.history_retention_ms, HOUR, 3650 * DAY, "30d"),
    END,
};

static const struct key_desc worker_tab[] = {
    INT(btl_config, "concurrency", worker.concurrency, 1, 256, "4"),
    DUR(btl_config, "lease", worker.lease_ms, SEC, DAY, "60s"),
    DUR(btl_config, "poll_fallback", worker.poll_fallback_ms, 10, HOUR, "5s"),
    INT(btl_config, "batch_size", worker.batch_size, 1, 1000, "16"),
    INT(btl_config, "max_attempts", worker.max_attempts, 1, 100, "5"),
    END,
};

static int walk_tasks(struct walk *w, const struct key_desc *d, const struct node *val,
                      const struct node *pos, const char *path, char *base);
static int walk_db_update(struct walk *w, const struct key_desc *d, const struct node *val,
                          const struct node *pos, const char *path, char *base);

static const struct key_desc bot_tab[] = {
    {.name = "db_update", .type = T_CUSTOM, .custom = walk_db_update},
    END,
};

/* The sub-tables of the top level share btl_config as their base. */
static const struct key_desc top_tab[] = {
    {.name = "database", .type = T_MAP, .sub = database_tab},
    {.name = "bus", .type = T_MAP, .sub = bus_tab},
    {.name = "http", .type = T_MAP, .sub = http_tab},
    {.name = "api", .type = T_MAP, .sub = api_tab},
    {.name = "alerts", .type = T_MAP, .sub = alerts_tab},
    {.name = "scheduler", .type = T_MAP, .sub = scheduler_tab},
    {.name = "worker", .type = T_MAP, .sub = worker_tab},
    {.name = "providers", .type = T_MAP, .sub = providers_tab},
    {.name = "platforms", .type = T_MAP, .sub = platforms_tab},
    {.name = "bot", .type = T_MAP, .sub = bot_tab},
    {.name = "tasks", .type = T_CUSTOM, .custom = walk_tasks},
    END,
};

/* ---------------------------------------------------- cross-key checks */

static const struct node *key_or(const struct node *map, const char *key, const struct node *dflt)
{
    const struct node *k = find_key(map, key);
    return k && k->val ? k->val : dflt;
}

static bool platform_configured(const btl_config *c, const char *p)
{
    if (strcmp(p, "discord") == 0)
        return c->platforms.discord.set;
    if (strcmp(p, "discord_webhook") == 0)
        return c->platforms.discord_webhook.set;
    if (strcmp(p, "mastodon") == 0)
        return c->platforms.mastodon.set;
    if (strcmp(p, "file") == 0)
        return c->platforms.file.set;
    return false;
}

/* Rules spanning several keys of one task. map is the task's mapping. */
static int check_task(struct walk *w, btl_task_cfg *t, const struct node *map, const char *path)
{
    char b[80], e[256];
    bool generator = strcmp(t->service, "generator") == 0;
    bool curator = strcmp(t->service, "curator") == 0;
    bool poster = strcmp(t->service, "poster") == 0;

    btl_schedule *s = NULL;
    e[0] = '\0';
    if (btl_schedule_parse(t->schedule, t->timezone, &s, e, sizeof e) != 0)
        return wfail(w, key_or(map, "schedule", map), "%s.schedule: invalid schedule '%s': %s",
                     path, show(t->schedule, b, sizeof b), e[0] ? e : "not understood");
    btl_schedule_free(s);

    const struct node *k;
    if ((k = find_key(map, "narrative")) && !generator)
        return wfail(w, k, "%s: 'narrative' only applies to generator tasks", path);
    if ((k = find_key(map, "curation")) && !curator)
        return wfail(w, k, "%s: 'curation' only applies to curator tasks", path);
    if ((k = find_key(map, "platform")) && !poster)
        return wfail(w, k, "%s: 'platform' only applies to poster tasks", path);
    if ((k = find_key(map, "posts_per_job")) && !poster)
        return wfail(w, k, "%s: 'posts_per_job' only applies to poster tasks", path);

    /* An operational `job` replaces the service's own work and its inputs. */
    if (t->job[0] != '\0')
        return 0;
    if (generator && t->narrative[0] == '\0')
        return wfail(w, map, "%s: generator task needs 'narrative'", path);
    if (poster && t->platform[0] == '\0')
        t->platform = "file";
    return 0; /* whether the platform is configured: check_top(), after `platforms` */
}

static bool valid_task_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
            return false;
    return true;
}

static int walk_tasks(struct walk *w, const struct key_desc *d, const struct node *val,
                      const struct node *pos, const char *path, char *base)
{
    (void)d;
    (void)pos;
    (void)base;
    btl_config *c = w->cfg;
    c->tasks = NULL;
    c->n_tasks = 0;
    if (val == NULL || is_null_scalar(val))
        return 0;
    if (val->kind != N_MAP)
        return wfail(w, val, "%s: expected a mapping of task names, found %s", path,
                     kind_name(val));
    size_t n = val->count < BTL_CONFIG_MAX_TASKS ? val->count : BTL_CONFIG_MAX_TASKS;
    c->tasks = arena_alloc(w->a, (n ? n : 1) * sizeof *c->tasks);
    if (c->tasks == NULL)
        return wfail(w, val, "out of memory");
    char tpath[256], b[80];
    for (const struct node *k = val->head; k; k = k->next) {
        if (c->n_tasks == BTL_CONFIG_MAX_TASKS)
            return wfail(w, k, "%s: more than %d tasks", path, BTL_CONFIG_MAX_TASKS);
        if (!valid_task_name(k->s))
            return wfail(w, k, "%s: bad task name '%s' (1-64 of A-Z a-z 0-9 _ - .)", path,
                         show(k->s, b, sizeof b));
        btl_task_cfg *t = &c->tasks[c->n_tasks];
        t->name = arena_strndup(w->a, k->s, strlen(k->s));
        if (t->name == NULL)
            return wfail(w, k, "out of memory");
        t->line = k->line;
        join_path(tpath, sizeof tpath, path, k->s);
        const struct node *m = k->val;
        if (is_null_scalar(m))
            m = NULL; /* "name:" alone: reported as missing keys at the name */
        else if (m->kind != N_MAP)
            return wfail(w, m, "%s: expected a mapping, found %s", tpath, kind_name(m));
        int rc = walk_map(w, task_tab, m, m ? m : k, true, tpath, (char *)t);
        if (rc)
            return rc;
        if ((rc = check_task(w, t, m ? m : k, tpath)) != 0)
            return rc;
        c->n_tasks++;
    }
    return 0;
}

/* Names that db.update quotes as identifiers: plain ones only, so the
 * whitelist reads the way PostgreSQL spells the real objects. */
static bool valid_sql_ident(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || !is_var_start(s[0]))
        return false;
    for (; *s; s++)
        if (!is_var_char(*s))
            return false;
    return true;
}

static int walk_db_update(struct walk *w, const struct key_desc *d, const struct node *val,
                          const struct node *pos, const char *path, char *base)
{
    (void)d;
    (void)pos;
    (void)base;
    btl_config *c = w->cfg;
    c->bot.db_update = NULL;
    c->bot.n_db_update = 0;
    if (val == NULL || is_null_scalar(val))
        return 0;
    if (val->kind != N_MAP)
        return wfail(w, val, "%s: expected a mapping of table names to column lists, found %s",
                     path, kind_name(val));
    if (val->count > BTL_CONFIG_MAX_BOT_TABLES)
        return wfail(w, val, "%s: more than %d tables", path, BTL_CONFIG_MAX_BOT_TABLES);
    c->bot.db_update = arena_alloc(w->a, (val->count ? val->count : 1) * sizeof *c->bot.db_update);
    if (c->bot.db_update == NULL)
        return wfail(w, val, "out of memory");
    /* Reuse the string-list reader with the column fields as its target. */
    const struct key_desc cols = {.name = "columns",
                                  .type = T_STRLIST,
                                  .off = offsetof(btl_bot_table_cfg, columns),
                                  .count_off = offsetof(btl_bot_table_cfg, n_columns)};
    char tpath[256], b[80];
    for (const struct node *k = val->head; k; k = k->next) {
        if (!valid_sql_ident(k->s))
            return wfail(w, k, "%s: bad table name '%s' (1-63 of A-Z a-z 0-9 _, not a digit first)",
                         path, show(k->s, b, sizeof b));
        btl_bot_table_cfg *t = &c->bot.db_update[c->bot.n_db_update];
        if ((t->table = arena_strndup(w->a, k->s, strlen(k->s))) == NULL)
            return wfail(w, k, "out of memory");
        join_path(tpath, sizeof tpath, path, k->s);
        const struct node *v = k->val && !is_null_scalar(k->val) ? k->val : NULL;
        if (v == NULL)
            return wfail(w, k, "%s: needs a list of columns", tpath);
        int rc = set_list(w, &cols, v, tpath, (char *)t);
        if (rc)
            return rc;
        if (t->n_columns == 0)
            return wfail(w, v, "%s: needs at least one column", tpath);
        const struct node *it = v->head;
        for (size_t i = 0; i < t->n_columns; i++, it = it ? it->next : NULL) {
            if (!valid_sql_ident(t->columns[i]))
                return wfail(w, it ? it : v,
                             "%s[%zu]: bad column name '%s' (1-63 of A-Z a-z 0-9 _, not a "
                             "digit first)",
                             tpath, i, show(t->columns[i], b, sizeof b));
        }
        c->bot.n_db_update++;
    }
    return 0;
}

/* Rules spanning sections. */
static int check_top(struct walk *w)
{
    const btl_config *c = w->cfg;
    const struct node *prov = key_or(w->root, "providers", w->root);
    const struct node *llm = key_or(prov, "llm", prov);
    const char *kind = c->providers.llm.kind;
    if (c->database.url[0] == '\0')
        return wfail(w, key_or(key_or(w->root, "database", w->root), "url", w->root),
                     "database.url: is empty");
    if (strcmp(kind, "offline") != 0 && c->providers.llm.model[0] == '\0')
        return wfail(w, llm, "providers.llm: kind %s needs 'model'", kind);
    /* An empty base_url means the provider's own default (openai: a local
     * Ollama, gemini: Google), so a key never goes to the other one's URL. */
    const struct node *tasks = key_or(w->root, "tasks", NULL);
    for (size_t i = 0; i < c->n_tasks; i++) {
        const btl_task_cfg *t = &c->tasks[i];
        if (strcmp(t->service, "poster") != 0 || t->job[0] != '\0' ||
            platform_configured(c, t->platform))
            continue;
        const struct node *tk = find_key(tasks, t->name);
        const struct node *tm = tk && tk->val && tk->val->kind == N_MAP ? tk->val : tk;
        char b[80];
        return wfail(w, key_or(tm, "platform", tm),
                     "tasks.%s: platform '%s' is not configured under 'platforms'", t->name,
                     show(t->platform, b, sizeof b));
    }
    return 0;
}

/* ------------------------------------------------------------ public API */

int btl_config_load_string(const char *name, const char *yaml, btl_config **out, char *err,
                           size_t errlen)
{
    int rc = 0;
    struct arena tree = {0};
    struct arena *cfga = NULL;
    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (name == NULL)
        name = "<string>";
    if (yaml == NULL)
        return BTL_EINVAL;
    size_t len = strlen(yaml);
    if (len > CFG_MAX_FILE)
        return failf(name, err, errlen, 1, 1, "larger than %zu bytes", CFG_MAX_FILE);

    struct parser *p = calloc(1, sizeof *p);
    cfga = calloc(1, sizeof *cfga);
    if (p == NULL || cfga == NULL) {
        rc = failf(name, err, errlen, 1, 1, "out of memory");
        goto out;
    }
    p->name = name;
    p->err = err;
    p->errlen = errlen;
    p->a = &tree;
    if ((rc = parse_tree(p, yaml, len)) != 0)
        goto out;
    const struct node *root = p->root;
    if (root == NULL || is_null_scalar(root)) {
        rc = failf(name, err, errlen, 1, 1, "empty configuration (missing 'database')");
        goto out;
    }
    if (root->kind != N_MAP) {
        rc = failf(name, err, errlen, root->line, root->col,
                   "top level must be a mapping, found %s", kind_name(root));
        goto out;
    }

    btl_config *cfg = arena_alloc(cfga, sizeof *cfg);
    if (cfg == NULL || (cfg->path = arena_strndup(cfga, name, strlen(name))) == NULL) {
        rc = failf(name, err, errlen, 1, 1, "out of memory");
        goto out;
    }
    cfg->priv = cfga;
    struct walk w = {
        .name = name, .err = err, .errlen = errlen, .a = cfga, .cfg = cfg, .root = root};
    if ((rc = walk_map(&w, top_tab, root, root, true, "", (char *)cfg)) != 0)
        goto out;
    if ((rc = check_top(&w)) != 0)
        goto out;
    *out = cfg;
    cfga = NULL; /* now owned by *out */
out:
    if (cfga) {
        arena_free(cfga);
        free(cfga);
    }
    arena_free(&tree);
    free(p);
    return rc;
}

int btl_config_load(const char *path, btl_config **out, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    if (path == NULL)
        return BTL_EINVAL;
    int rc = btl_read_file(path, CFG_MAX_FILE, &text, &len);
    if (rc == BTL_ETOOBIG)
        return failf(path, err, errlen, 1, 1, "larger than %zu bytes", CFG_MAX_FILE);
    if (rc) {
        int e = errno;
        btl_snprintf(err, errlen, "%s:1:1: cannot read: %s", path,
                     e ? strerror(e) : btl_strerror(rc));
        return rc == BTL_ENOTFOUND ? BTL_ENOTFOUND : BTL_EIO;
    }
    if (strlen(text) != len) {
        free(text);
        return failf(path, err, errlen, 1, 1, "file contains a NUL byte");
    }
    rc = btl_config_load_string(path, text, out, err, errlen);
    free(text);
    return rc;
}

void btl_config_free(btl_config *cfg)
{
    if (cfg == NULL)
        return;
    struct arena *a = cfg->priv; /* cfg itself lives in the arena */
    arena_free(a);
    free(a);
}

const btl_task_cfg *btl_config_task(const btl_config *cfg, const char *name)
{
    if (cfg == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->n_tasks; i++)
        if (strcmp(cfg->tasks[i].name, name) == 0)
            return &cfg->tasks[i];
    return NULL;
}

const char *btl_config_default_path(const char *explicit_path)
{
    if (explicit_path && explicit_path[0])
        return explicit_path;
    const char *env = getenv("BTL_CONFIG");
    if (env && env[0])
        return env;
    return "config/botticelli.yaml";
}
