/* Narrative loader and engine (see btl/narrative.h for the file format).
 *
 * Loading: libyaml events build a small tree (aliases share the anchored
 * node; anchors are registered when their node is complete, so a node
 * cannot alias its own ancestor and the tree is acyclic). Merge keys `<<`
 * are resolved when a mapping is read. Every template is compiled into
 * segments at load time, so a bad reference is found by `btl validate`
 * rather than in the middle of a run. */
#include "btl/narrative.h"
#include "btl/botcmd.h"
#include "btl/err.h"
#include "btl/state.h"
#include "btl/util.h"

#include <jansson.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#define MAX_DEPTH 64
#define MAX_NODES 200000
#define MAX_PAIRS 256
#define MAX_MERGE_DEPTH 8
#define MAX_MERGE_WORK 1000
#define MAX_ARG_NODES 1000
#define NAME_MAX_LEN 64
#define ENV_NAME_MAX 128
#define MAX_RETRIES 5

/* ---- arena: everything of a loaded file lives in one ------------------- */

struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    max_align_t data[];
};

typedef struct arena {
    struct arena_block *head;
} arena;

static void *arena_alloc(arena *a, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n == 0)
        n = sizeof(max_align_t);
    struct arena_block *b = a->head;
    if (b == NULL || b->cap - b->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        b = malloc(sizeof *b + cap);
        if (b == NULL)
            return NULL;
        b->used = 0;
        b->cap = cap;
        b->next = a->head;
        a->head = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

static char *arena_strndup(arena *a, const char *s, size_t n)
{
    char *d = arena_alloc(a, n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static void arena_free(arena *a)
{
    struct arena_block *b = a->head;
    while (b) {
        struct arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
}

/* ---- compiled form ----------------------------------------------------- */

enum seg_kind { SEG_TEXT, SEG_ACT, SEG_STATE, SEG_VAR, SEG_ENV, SEG_ANGLE, SEG_ITER };

typedef struct seg {
    enum seg_kind k;
    const char *s; /* TEXT: the text; STATE: key; ENV: name */
    size_t len;    /* TEXT length */
    size_t idx;    /* ACT: act index; VAR: var index */
} seg;

typedef struct tmpl {
    bool set;
    seg *segs;
    size_t n;
} tmpl;

enum arg_kind { ARG_TMPL, ARG_LIT, ARG_MAP, ARG_SEQ };

typedef struct arg_node {
    enum arg_kind k;
    const char *key; /* in a map */
    tmpl t;          /* ARG_TMPL */
    const char *lit; /* ARG_LIT: JSON literal text */
    struct arg_node *kids;
    size_t n;
} arg_node;

typedef struct act {
    const char *name;
    tmpl prompt, system, output_var, skip_if;
    const char *command; /* NULL for prompt acts */
    arg_node *args;      /* ARG_MAP or NULL */
    const char *model;   /* NULL = provider default */
    double temperature;  /* < 0 = provider default */
    int max_tokens;      /* 0 = provider default */
    int64_t output_ttl_ms;
    bool expect_json;
    const char **required; /* NULL-terminated, or NULL */
    int retries;
} act;

typedef struct act_list {
    act *acts;
    size_t n;
} act_list;

typedef struct narr {
    const char *name;
    const char *angle;
    const act_list *list;
} narr;

struct btl_narrative_file {
    arena a;
    const char **var_names, **var_values;
    size_t nvars;
    const char **env_names;
    size_t nenv;
    narr *narrs;
    size_t n;
};

/* ---- YAML tree --------------------------------------------------------- */

enum ykind { Y_SCALAR, Y_MAP, Y_SEQ };

typedef struct ynode {
    enum ykind k;
    int line, col, end_line; /* 1-based */
    int style;               /* yaml_scalar_style_t for scalars */
    const char *s;           /* scalar value */
    size_t slen;
    struct ynode **kids; /* map: key, value, key, value ... */
    size_t n, cap;
} ynode;

struct anchor {
    const char *name;
    ynode *node;
    struct anchor *next;
};

struct frame {
    ynode *n;
    const char *anchor;
};

/* Cache of compiled act lists by node: an aliased list compiles once. */
struct list_cache {
    const ynode *node;
    act_list *list;
};

typedef struct loader {
    const char *name;
    const char *src;
    size_t srclen;
    char *err;
    size_t errlen;
    arena tmp; /* the tree */
    btl_narrative_file *f;
    struct anchor *anchors;
    struct frame stack[MAX_DEPTH + 1];
    int depth;
    size_t nodes;
    ynode *root;
    struct list_cache cache[BTL_NARRATIVE_MAX_NARRATIVES + 1];
    size_t ncache;
    size_t merge_work; /* mappings visited by one ymap_read (aliases can fan out) */
} loader;

static int lfail(loader *L, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int lfail(loader *L, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = btl_pos_errorv(L->err, L->errlen, L->name, line, col, fmt, ap);
    va_end(ap);
    return rc;
}

static int nfail(loader *L, const ynode *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int nfail(loader *L, const ynode *n, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return lfail(L, n->line, n->col, "%s", msg);
}

/* Bounded, printable copy of user text for messages. */
static const char *show(const char *s, size_t len, char *buf, size_t n)
{
    size_t i = 0, max = n > 4 ? n - 4 : 0;
    for (; i < len && s[i] && i < max; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (i < len && s[i]) {
        buf[i++] = '.';
        buf[i++] = '.';
        buf[i++] = '.';
    }
    buf[i] = '\0';
    return buf;
}

static ynode *new_node(loader *L, enum ykind k, yaml_mark_t m)
{
    if (++L->nodes > MAX_NODES) {
        lfail(L, (int)m.line + 1, (int)m.column + 1, "document has more than %d nodes", MAX_NODES);
        return NULL;
    }
    ynode *n = arena_alloc(&L->tmp, sizeof *n);
    if (n == NULL) {
        lfail(L, (int)m.line + 1, (int)m.column + 1, "out of memory");
        return NULL;
    }
    n->k = k;
    n->line = n->end_line = (int)m.line + 1;
    n->col = (int)m.column + 1;
    return n;
}

static int add_kid(loader *L, ynode *parent, ynode *kid)
{
    if (parent->n == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 8;
        ynode **k = arena_alloc(&L->tmp, cap * sizeof *k);
        if (k == NULL)
            return lfail(L, kid->line, kid->col, "out of memory");
        if (parent->n)
            memcpy(k, parent->kids, parent->n * sizeof *k);
        parent->kids = k;
        parent->cap = cap;
    }
    parent->kids[parent->n++] = kid;
    return 0;
}

static int attach(loader *L, ynode *n)
{
    if (L->depth == 0) {
        L->root = n;
        return 0;
    }
    ynode *parent = L->stack[L->depth - 1].n;
    if (parent->k == Y_MAP && parent->n % 2 == 0) {
        if (n->k != Y_SCALAR)
            return nfail(L, n, "mapping keys must be scalars");
        for (size_t i = 0; i < parent->n; i += 2) {
            const ynode *k = parent->kids[i];
            if (k->slen == n->slen && memcmp(k->s, n->s, n->slen) == 0) {
                char b[80];
                return nfail(L, n, "duplicate key '%s' (first at line %d, column %d)",
                             show(n->s, n->slen, b, sizeof b), k->line, k->col);
            }
        }
    }
    return add_kid(L, parent, n);
}

static int remember_anchor(loader *L, const yaml_char_t *name, ynode *n)
{
    if (name == NULL)
        return 0;
    struct anchor *an = arena_alloc(&L->tmp, sizeof *an);
    const char *nm = arena_strndup(&L->tmp, (const char *)name, strlen((const char *)name));
    if (an == NULL || nm == NULL)
        return nfail(L, n, "out of memory");
    an->name = nm;
    an->node = n;
    an->next = L->anchors; /* newest first: a redefined anchor shadows the old one */
    L->anchors = an;
    return 0;
}

static int yaml_fail(loader *L, yaml_parser_t *yp)
{
    yaml_mark_t m = yp->problem_mark;
    const char *problem = yp->problem ? yp->problem : "syntax error";
    if (yp->error == YAML_MEMORY_ERROR)
        problem = "out of memory";
    if (yp->context)
        return lfail(L, (int)m.line + 1, (int)m.column + 1,
                     "YAML syntax error: %s %s (started at line %d, column %d)", problem,
                     yp->context, (int)yp->context_mark.line + 1, (int)yp->context_mark.column + 1);
    return lfail(L, (int)m.line + 1, (int)m.column + 1, "YAML syntax error: %s", problem);
}

static int on_event(loader *L, yaml_event_t *ev, int *docs, bool *done)
{
    yaml_mark_t m = ev->start_mark;
    ynode *n;
    switch (ev->type) {
    case YAML_STREAM_END_EVENT:
        *done = true;
        return 0;
    case YAML_DOCUMENT_START_EVENT:
        if (++*docs > 1)
            return lfail(L, (int)m.line + 1, (int)m.column + 1,
                         "only one YAML document is allowed");
        return 0;
    case YAML_SCALAR_EVENT: {
        const char *v = (const char *)ev->data.scalar.value;
        size_t len = ev->data.scalar.length;
        if (memchr(v, '\0', len))
            return lfail(L, (int)m.line + 1, (int)m.column + 1, "NUL character in value");
        if ((n = new_node(L, Y_SCALAR, m)) == NULL)
            return BTL_ECONFIG;
        n->end_line = (int)ev->end_mark.line + 1;
        n->style = ev->data.scalar.style;
        n->slen = len;
        if ((n->s = arena_strndup(&L->tmp, v, len)) == NULL)
            return nfail(L, n, "out of memory");
        int rc = remember_anchor(L, ev->data.scalar.anchor, n);
        return rc ? rc : attach(L, n);
    }
    case YAML_ALIAS_EVENT: {
        const char *name = (const char *)ev->data.alias.anchor;
        struct anchor *an = L->anchors;
        while (an && strcmp(an->name, name) != 0)
            an = an->next;
        if (an == NULL) {
            char b[80];
            return lfail(L, (int)m.line + 1, (int)m.column + 1, "unknown alias '*%s'",
                         show(name, strlen(name), b, sizeof b));
        }
        return attach(L, an->node); /* shared: the tree is read-only */
    }
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT: {
        bool map = ev->type == YAML_MAPPING_START_EVENT;
        if (L->depth >= MAX_DEPTH)
            return lfail(L, (int)m.line + 1, (int)m.column + 1, "nesting deeper than %d levels",
                         MAX_DEPTH);
        if ((n = new_node(L, map ? Y_MAP : Y_SEQ, m)) == NULL)
            return BTL_ECONFIG;
        const yaml_char_t *a = map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor;
        struct frame *fr = &L->stack[L->depth++];
        fr->n = n;
        fr->anchor = NULL;
        if (a &&
            (fr->anchor = arena_strndup(&L->tmp, (const char *)a, strlen((const char *)a))) == NULL)
            return nfail(L, n, "out of memory");
        return 0;
    }
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT: {
        struct frame *fr = &L->stack[--L->depth];
        n = fr->n;
        n->end_line = (int)ev->end_mark.line + 1;
        int rc = remember_anchor(L, (const yaml_char_t *)fr->anchor, n);
        return rc ? rc : attach(L, n);
    }
    default:
        return 0;
    }
}

static int parse_tree(loader *L)
{
    yaml_parser_t yp;
    int rc = 0, docs = 0;
    bool done = false;
    if (!yaml_parser_initialize(&yp))
        return lfail(L, 1, 1, "out of memory");
    yaml_parser_set_input_string(&yp, (const unsigned char *)L->src, L->srclen);
    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&yp, &ev)) {
            rc = yaml_fail(L, &yp);
            break;
        }
        rc = on_event(L, &ev, &docs, &done);
        yaml_event_delete(&ev);
        if (rc)
            break;
    }
    yaml_parser_delete(&yp);
    if (rc == 0 && L->root == NULL)
        rc = lfail(L, 1, 1, "empty narrative file");
    return rc;
}

/* ---- tree access ------------------------------------------------------- */

typedef struct ypair {
    const ynode *key, *val;
} ypair;

typedef struct ymap {
    ypair p[MAX_PAIRS];
    size_t n;
} ymap;

static bool is_merge_key(const ynode *k)
{
    return k->style == YAML_PLAIN_SCALAR_STYLE && strcmp(k->s, "<<") == 0;
}

static bool ymap_has(const ymap *m, const char *key)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->p[i].key->s, key) == 0)
            return true;
    return false;
}

static int ymap_merge(loader *L, const ynode *map, ymap *out, int depth);

static int ymap_merge_value(loader *L, const ynode *v, ymap *out, int depth)
{
    if (v->k == Y_MAP)
        return ymap_merge(L, v, out, depth + 1);
    if (v->k == Y_SEQ) {
        /* Earlier mappings of the list win, as in YAML's merge spec. */
        for (size_t i = 0; i < v->n; i++) {
            if (v->kids[i]->k != Y_MAP)
                return nfail(L, v->kids[i], "'<<' list items must be mappings");
            int rc = ymap_merge(L, v->kids[i], out, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    return nfail(L, v, "'<<' needs a mapping or a list of mappings");
}

/* Adds map's entries not already in out: own keys first, then merged ones. */
static int ymap_merge(loader *L, const ynode *map, ymap *out, int depth)
{
    if (depth > MAX_MERGE_DEPTH)
        return nfail(L, map, "merge keys nested deeper than %d levels", MAX_MERGE_DEPTH);
    if (++L->merge_work > MAX_MERGE_WORK)
        return nfail(L, map, "merge keys expand to more than %d mappings", MAX_MERGE_WORK);
    for (size_t i = 0; i + 1 < map->n; i += 2) {
        const ynode *k = map->kids[i];
        if (is_merge_key(k) || ymap_has(out, k->s))
            continue;
        if (out->n == MAX_PAIRS)
            return nfail(L, k, "mapping has more than %d keys", MAX_PAIRS);
        out->p[out->n].key = k;
        out->p[out->n].val = map->kids[i + 1];
        out->n++;
    }
    for (size_t i = 0; i + 1 < map->n; i += 2)
        if (is_merge_key(map->kids[i])) {
            int rc = ymap_merge_value(L, map->kids[i + 1], out, depth);
            if (rc)
                return rc;
        }
    return 0;
}

static int ymap_read(loader *L, const ynode *map, ymap *out, const char *what)
{
    out->n = 0;
    L->merge_work = 0;
    if (map->k != Y_MAP)
        return nfail(L, map, "%s must be a mapping", what);
    return ymap_merge(L, map, out, 0);
}

static const ynode *ymap_get(const ymap *m, const char *key)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->p[i].key->s, key) == 0)
            return m->p[i].val;
    return NULL;
}

static int ymap_check_keys(loader *L, const ymap *m, const char *const *allowed, const char *what)
{
    for (size_t i = 0; i < m->n; i++) {
        bool ok = false;
        for (size_t j = 0; allowed[j] && !ok; j++)
            ok = strcmp(m->p[i].key->s, allowed[j]) == 0;
        if (!ok) {
            char b[80];
            return nfail(L, m->p[i].key, "unknown key '%s' in %s",
                         show(m->p[i].key->s, m->p[i].key->slen, b, sizeof b), what);
        }
    }
    return 0;
}

static int want_scalar(loader *L, const ynode *n, const char *what)
{
    if (n->k != Y_SCALAR)
        return nfail(L, n, "%s must be a scalar", what);
    return 0;
}

static bool valid_name(const char *s, size_t maxlen)
{
    size_t n = strlen(s);
    if (n == 0 || n > maxlen)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

static bool valid_env_name(const char *s, size_t len)
{
    if (len == 0 || len > ENV_NAME_MAX || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xc0) != 0x80)
            c++;
    return c;
}

/* Source position of byte off inside scalar n: exact for literal blocks
 * and single-line flow scalars, the scalar's start otherwise. */
static void pos_of(const loader *L, const ynode *n, size_t off, int *line, int *col)
{
    *line = n->line;
    *col = n->col;
    if (n->style == YAML_LITERAL_SCALAR_STYLE) {
        size_t nl = 0, ls = 0;
        for (size_t i = 0; i < off && i < n->slen; i++)
            if (n->s[i] == '\n') {
                nl++;
                ls = i + 1;
            }
        /* Indentation of the block: the first non-blank line after the
         * indicator's line. */
        size_t p = 0;
        int cur = 1;
        while (p < L->srclen && cur < n->line + 1) {
            if (L->src[p] == '\n')
                cur++;
            p++;
        }
        int indent = 0;
        while (p < L->srclen) {
            size_t q = p;
            int sp = 0;
            while (q < L->srclen && L->src[q] == ' ') {
                q++;
                sp++;
            }
            if (q < L->srclen && L->src[q] != '\n' && L->src[q] != '\r') {
                indent = sp;
                break;
            }
            while (q < L->srclen && L->src[q] != '\n')
                q++;
            p = q + 1;
        }
        *line = n->line + 1 + (int)nl;
        *col = indent + (int)utf8_chars(n->s + ls, off - ls) + 1;
        return;
    }
    if (n->style == YAML_FOLDED_SCALAR_STYLE || n->end_line != n->line ||
        memchr(n->s, '\n', n->slen))
        return;
    bool quoted =
        n->style == YAML_SINGLE_QUOTED_SCALAR_STYLE || n->style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    *col = n->col + (quoted ? 1 : 0) + (int)utf8_chars(n->s, off);
}

/* A failure at byte off of scalar n. The position costs a scan of the
 * source, so it is computed only here. */
static int reffail(loader *L, const ynode *n, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int reffail(loader *L, const ynode *n, size_t off, const char *fmt, ...)
{
    char msg[512];
    int line, col;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pos_of(L, n, off, &line, &col);
    return lfail(L, line, col, "%s", msg);
}

/* ---- templates --------------------------------------------------------- */

/* What a template may reference. */
typedef struct scope {
    const act *acts; /* names of the list being compiled */
    size_t nacts;
    size_t cur; /* index of the act being compiled */
    const char *field;
} scope;

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static int tmpl_compile(loader *L, const ynode *n, const scope *sc, tmpl *out)
{
    btl_narrative_file *f = L->f;
    if (n->k != Y_SCALAR)
        return nfail(L, n, "%s must be a string", sc->field);
    if (n->slen > BTL_NARRATIVE_RENDER_MAX)
        return nfail(L, n, "%s is longer than %d bytes", sc->field, BTL_NARRATIVE_RENDER_MAX);
    /* Worst case: one text segment between every two references. */
    size_t maxsegs = 1, nseg = 0;
    for (const char *p = n->s; (p = strstr(p, "{{")) != NULL; p += 2)
        maxsegs += 2;
    seg *segs = arena_alloc(&f->a, maxsegs * sizeof *segs);
    if (segs == NULL)
        return nfail(L, n, "out of memory");
    const char *s = n->s, *end = n->s + n->slen, *p = s;
    while (p < end) {
        const char *open = strstr(p, "{{");
        if (open == NULL || open >= end)
            open = end;
        if (open > p) {
            segs[nseg].k = SEG_TEXT;
            segs[nseg].len = (size_t)(open - p);
            /* The tree is freed after loading: the file keeps its own copy. */
            if ((segs[nseg].s = arena_strndup(&f->a, p, segs[nseg].len)) == NULL)
                return nfail(L, n, "out of memory");
            nseg++;
        }
        if (open == end)
            break;
        size_t off = (size_t)(open - s);
        const char *close = strstr(open + 2, "}}");
        if (close == NULL)
            return reffail(L, n, off, "%s: unterminated '{{' (no matching '}}')", sc->field);
        const char *a = open + 2, *b = close;
        while (a < b && is_blank(*a))
            a++;
        while (b > a && is_blank(b[-1]))
            b--;
        size_t rlen = (size_t)(b - a);
        char ref[256], shown[80];
        if (rlen >= sizeof ref)
            return reffail(L, n, off, "%s: reference '{{%s}}' is too long", sc->field,
                           show(a, rlen, shown, sizeof shown));
        memcpy(ref, a, rlen);
        ref[rlen] = '\0';
        seg *sg = &segs[nseg];
        memset(sg, 0, sizeof *sg);
        if (strcmp(ref, "angle") == 0) {
            sg->k = SEG_ANGLE;
        } else if (strcmp(ref, "iteration") == 0) {
            sg->k = SEG_ITER;
        } else if (strncmp(ref, "act.", 4) == 0) {
            const char *nm = ref + 4;
            size_t j = 0;
            while (j < sc->nacts && strcmp(sc->acts[j].name, nm) != 0)
                j++;
            if (j == sc->nacts)
                return reffail(L, n, off, "%s: unknown act '%s' in {{%s}}", sc->field,
                               show(nm, strlen(nm), shown, sizeof shown), ref);
            if (j == sc->cur)
                return reffail(L, n, off, "%s: act '%s' cannot reference its own output", sc->field,
                               sc->acts[j].name);
            if (j > sc->cur)
                return reffail(L, n, off,
                               "%s: act '%s' runs later (only earlier acts can be referenced)",
                               sc->field, sc->acts[j].name);
            sg->k = SEG_ACT;
            sg->idx = j;
        } else if (strncmp(ref, "state.", 6) == 0) {
            if (btl_state_valid_key(ref + 6) != 0)
                return reffail(L, n, off, "%s: invalid state key '%s'", sc->field,
                               show(ref + 6, strlen(ref + 6), shown, sizeof shown));
            sg->k = SEG_STATE;
            if ((sg->s = arena_strndup(&f->a, ref + 6, strlen(ref + 6))) == NULL)
                return reffail(L, n, off, "out of memory");
        } else if (strncmp(ref, "var.", 4) == 0) {
            size_t j = 0;
            while (j < f->nvars && strcmp(f->var_names[j], ref + 4) != 0)
                j++;
            if (j == f->nvars)
                return reffail(L, n, off, "%s: unknown var '%s' (not in vars)", sc->field,
                               show(ref + 4, strlen(ref + 4), shown, sizeof shown));
            sg->k = SEG_VAR;
            sg->idx = j;
        } else if (strncmp(ref, "env.", 4) == 0) {
            size_t j = 0;
            while (j < f->nenv && strcmp(f->env_names[j], ref + 4) != 0)
                j++;
            if (j == f->nenv)
                return reffail(L, n, off, "%s: environment variable '%s' is not in env_whitelist",
                               sc->field, show(ref + 4, strlen(ref + 4), shown, sizeof shown));
            sg->k = SEG_ENV;
            sg->s = f->env_names[j];
        } else {
            return reffail(L, n, off,
                           "%s: unknown reference '{{%s}}' (act.NAME, state.KEY, var.NAME, "
                           "env.NAME, angle, iteration)",
                           sc->field, show(ref, rlen, shown, sizeof shown));
        }
        nseg++;
        p = close + 2;
    }
    out->set = true;
    out->segs = segs;
    out->n = nseg;
    return 0;
}

/* ---- acts -------------------------------------------------------------- */

static bool plain_literal(const ynode *n)
{
    if (n->style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = n->s;
    if (strcmp(s, "true") == 0 || strcmp(s, "false") == 0 || strcmp(s, "null") == 0)
        return true;
    int64_t i;
    if (btl_parse_i64(s, INT64_MIN, INT64_MAX, &i) == 0)
        return true;
    /* A JSON number: jansson decides, so the literal is always valid JSON. */
    json_error_t je;
    json_t *v = json_loads(s, JSON_DECODE_ANY, &je);
    bool num = v && json_is_number(v);
    json_decref(v);
    return num;
}

static int args_compile(loader *L, const ynode *n, const scope *sc, arg_node *out, int depth,
                        size_t *budget)
{
    btl_narrative_file *f = L->f;
    if (depth > 16)
        return nfail(L, n, "args nested deeper than 16 levels");
    if (++*budget > MAX_ARG_NODES)
        return nfail(L, n, "args have more than %d values", MAX_ARG_NODES);
    if (n->k == Y_SCALAR) {
        if (plain_literal(n)) {
            out->k = ARG_LIT;
            out->lit = n->s;
            if ((out->lit = arena_strndup(&f->a, n->s, n->slen)) == NULL)
                return nfail(L, n, "out of memory");
            return 0;
        }
        out->k = ARG_TMPL;
        return tmpl_compile(L, n, sc, &out->t);
    }
    if (n->k == Y_SEQ) {
        out->k = ARG_SEQ;
        out->n = n->n;
        if (n->n && (out->kids = arena_alloc(&f->a, n->n * sizeof *out->kids)) == NULL)
            return nfail(L, n, "out of memory");
        for (size_t i = 0; i < n->n; i++) {
            int rc = args_compile(L, n->kids[i], sc, &out->kids[i], depth + 1, budget);
            if (rc)
                return rc;
        }
        return 0;
    }
    ymap *m = malloc(sizeof *m);
    if (m == NULL)
        return nfail(L, n, "out of memory");
    int rc = ymap_read(L, n, m, "args");
    if (rc == 0) {
        out->k = ARG_MAP;
        out->n = m->n;
        if (m->n && (out->kids = arena_alloc(&f->a, m->n * sizeof *out->kids)) == NULL)
            rc = nfail(L, n, "out of memory");
        for (size_t i = 0; rc == 0 && i < m->n; i++) {
            out->kids[i].key = arena_strndup(&f->a, m->p[i].key->s, m->p[i].key->slen);
            if (out->kids[i].key == NULL)
                rc = nfail(L, n, "out of memory");
            else
                rc = args_compile(L, m->p[i].val, sc, &out->kids[i], depth + 1, budget);
        }
    }
    free(m);
    return rc;
}

static int parse_num(loader *L, const ynode *n, const char *what, double lo, double hi, double *out)
{
    int rc = want_scalar(L, n, what);
    if (rc)
        return rc;
    double d;
    if (btl_parse_double(n->s, &d) != 0 || !(d >= lo && d <= hi))
        return nfail(L, n, "%s must be a number in %g..%g, got '%s'", what, lo, hi, n->s);
    *out = d;
    return 0;
}

static int act_compile(loader *L, const ymap *m, const ynode *node, act *acts, size_t nacts,
                       size_t k)
{
    static const char *const keys[] = {"name",       "prompt",     "command",     "args",
                                       "system",     "model",      "temperature", "max_tokens",
                                       "output_var", "output_ttl", "skip_if",     "expect",
                                       "required",   "retries",    NULL};
    btl_narrative_file *f = L->f;
    act *a = &acts[k];
    int rc = ymap_check_keys(L, m, keys, "an act");
    if (rc)
        return rc;
    scope sc = {.acts = acts, .nacts = nacts, .cur = k};
    const ynode *prompt = ymap_get(m, "prompt"), *command = ymap_get(m, "command"),
                *args = ymap_get(m, "args"), *v;
    if ((prompt == NULL) == (command == NULL))
        return nfail(L, node, "act '%s' needs exactly one of 'prompt' and 'command'", a->name);
    if (args && command == NULL)
        return nfail(L, args, "act '%s': 'args' goes with 'command'", a->name);
    a->temperature = -1;
    a->retries = BTL_NARRATIVE_DEFAULT_RETRIES;
    if (prompt) {
        sc.field = "prompt";
        if ((rc = tmpl_compile(L, prompt, &sc, &a->prompt)) != 0)
            return rc;
    } else {
        if ((rc = want_scalar(L, command, "command")) != 0)
            return rc;
        if (!btl_botcmd_known(command->s))
            return nfail(L, command,
                         "unknown bot command '%s' (state.set, state.get, state.delete, "
                         "db.update, discord.messages.send, discord.channels.create)",
                         command->s);
        if ((a->command = arena_strndup(&f->a, command->s, command->slen)) == NULL)
            return nfail(L, command, "out of memory");
        if (args) {
            if (args->k != Y_MAP)
                return nfail(L, args, "args must be a mapping");
            size_t budget = 0;
            sc.field = "args";
            if ((a->args = arena_alloc(&f->a, sizeof *a->args)) == NULL)
                return nfail(L, args, "out of memory");
            if ((rc = args_compile(L, args, &sc, a->args, 0, &budget)) != 0)
                return rc;
        }
    }
    if ((v = ymap_get(m, "system")) != NULL) {
        sc.field = "system";
        if ((rc = tmpl_compile(L, v, &sc, &a->system)) != 0)
            return rc;
    }
    if ((v = ymap_get(m, "skip_if")) != NULL) {
        sc.field = "skip_if";
        if ((rc = tmpl_compile(L, v, &sc, &a->skip_if)) != 0)
            return rc;
    }
    if ((v = ymap_get(m, "output_var")) != NULL) {
        sc.field = "output_var";
        if ((rc = tmpl_compile(L, v, &sc, &a->output_var)) != 0)
            return rc;
        /* A key without references can be checked now. */
        if (a->output_var.n == 1 && a->output_var.segs[0].k == SEG_TEXT) {
            char key[BTL_STATE_KEY_MAX + 2];
            const seg *sg = &a->output_var.segs[0];
            if (sg->len >= sizeof key ||
                (memcpy(key, sg->s, sg->len), key[sg->len] = '\0', btl_state_valid_key(key) != 0))
                return nfail(L, v, "output_var: invalid state key '%s'", v->s);
        } else if (a->output_var.n == 0) {
            return nfail(L, v, "output_var: empty state key");
        }
    }
    if ((v = ymap_get(m, "output_ttl")) != NULL) {
        if ((rc = want_scalar(L, v, "output_ttl")) != 0)
            return rc;
        if (btl_parse_duration_ms(v->s, &a->output_ttl_ms) != 0 || a->output_ttl_ms <= 0 ||
            a->output_ttl_ms > BTL_STATE_TTL_MAX_MS)
            return nfail(L, v, "output_ttl must be a duration like 7d, got '%s'", v->s);
        if (!a->output_var.set)
            return nfail(L, v, "act '%s': output_ttl needs output_var", a->name);
    }
    if ((v = ymap_get(m, "model")) != NULL) {
        if ((rc = want_scalar(L, v, "model")) != 0)
            return rc;
        if (v->slen == 0 || v->slen > 200)
            return nfail(L, v, "model must be 1..200 characters");
        if ((a->model = arena_strndup(&f->a, v->s, v->slen)) == NULL)
            return nfail(L, v, "out of memory");
    }
    double d;
    if ((v = ymap_get(m, "temperature")) != NULL) {
        if ((rc = parse_num(L, v, "temperature", 0, 2, &d)) != 0)
            return rc;
        a->temperature = d;
    }
    if ((v = ymap_get(m, "max_tokens")) != NULL) {
        if ((rc = parse_num(L, v, "max_tokens", 1, 1000000, &d)) != 0)
            return rc;
        if (d != (double)(int)d)
            return nfail(L, v, "max_tokens must be an integer");
        a->max_tokens = (int)d;
    }
    if ((v = ymap_get(m, "retries")) != NULL) {
        if ((rc = parse_num(L, v, "retries", 0, MAX_RETRIES, &d)) != 0)
            return rc;
        if (d != (double)(int)d)
            return nfail(L, v, "retries must be an integer");
        a->retries = (int)d;
    }
    if ((v = ymap_get(m, "expect")) != NULL) {
        if ((rc = want_scalar(L, v, "expect")) != 0)
            return rc;
        if (strcmp(v->s, "json") == 0)
            a->expect_json = true;
        else if (strcmp(v->s, "text") != 0)
            return nfail(L, v, "expect must be json or text, got '%s'", v->s);
    }
    if ((v = ymap_get(m, "required")) != NULL) {
        if (!a->expect_json)
            return nfail(L, v, "act '%s': required needs expect: json", a->name);
        if (v->k != Y_SEQ || v->n == 0 || v->n > 64)
            return nfail(L, v, "required must be a list of 1..64 field names");
        if ((a->required = arena_alloc(&f->a, (v->n + 1) * sizeof *a->required)) == NULL)
            return nfail(L, v, "out of memory");
        for (size_t i = 0; i < v->n; i++) {
            const ynode *it = v->kids[i];
            if ((rc = want_scalar(L, it, "a required field")) != 0)
                return rc;
            if (it->slen == 0 || it->slen > 128)
                return nfail(L, it, "required field names must be 1..128 characters");
            if ((a->required[i] = arena_strndup(&f->a, it->s, it->slen)) == NULL)
                return nfail(L, it, "out of memory");
        }
    }
    return 0;
}

static int list_compile(loader *L, const ynode *n, const act_list **out)
{
    btl_narrative_file *f = L->f;
    for (size_t i = 0; i < L->ncache; i++)
        if (L->cache[i].node == n) {
            *out = L->cache[i].list;
            return 0;
        }
    if (n->k != Y_SEQ)
        return nfail(L, n, "acts must be a list");
    if (n->n == 0 || n->n > BTL_NARRATIVE_MAX_ACTS)
        return nfail(L, n, "acts must hold 1..%d acts", BTL_NARRATIVE_MAX_ACTS);
    act_list *list = arena_alloc(&f->a, sizeof *list);
    act *acts = arena_alloc(&f->a, n->n * sizeof *acts);
    ymap *maps = malloc(n->n * sizeof *maps);
    int rc = 0;
    if (list == NULL || acts == NULL || maps == NULL) {
        rc = nfail(L, n, "out of memory");
        goto out;
    }
    /* Names first: a reference to a later act is told apart from an
     * unknown one. */
    for (size_t i = 0; i < n->n; i++) {
        const ynode *it = n->kids[i];
        if ((rc = ymap_read(L, it, &maps[i], "an act")) != 0)
            goto out;
        const ynode *nm = ymap_get(&maps[i], "name");
        if (nm == NULL) {
            rc = nfail(L, it, "act without a name");
            goto out;
        }
        if ((rc = want_scalar(L, nm, "name")) != 0)
            goto out;
        if (!valid_name(nm->s, NAME_MAX_LEN)) {
            rc = nfail(L, nm, "act name '%s' must be 1..%d of [A-Za-z0-9_-]", nm->s, NAME_MAX_LEN);
            goto out;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(acts[j].name, nm->s) == 0) {
                rc = nfail(L, nm, "duplicate act name '%s'", nm->s);
                goto out;
            }
        if ((acts[i].name = arena_strndup(&f->a, nm->s, nm->slen)) == NULL) {
            rc = nfail(L, nm, "out of memory");
            goto out;
        }
    }
    for (size_t i = 0; i < n->n; i++)
        if ((rc = act_compile(L, &maps[i], n->kids[i], acts, n->n, i)) != 0)
            goto out;
    list->acts = acts;
    list->n = n->n;
    if (L->ncache < BTL_ARRAY_LEN(L->cache)) {
        L->cache[L->ncache].node = n;
        L->cache[L->ncache].list = list;
        L->ncache++;
    }
    *out = list;
out:
    free(maps);
    return rc;
}

/* ---- the file ---------------------------------------------------------- */

static int load_vars(loader *L, const ynode *n)
{
    btl_narrative_file *f = L->f;
    ymap *m = malloc(sizeof *m);
    if (m == NULL)
        return nfail(L, n, "out of memory");
    int rc = ymap_read(L, n, m, "vars");
    if (rc == 0 && m->n) {
        f->var_names = arena_alloc(&f->a, m->n * sizeof *f->var_names);
        f->var_values = arena_alloc(&f->a, m->n * sizeof *f->var_values);
        if (f->var_names == NULL || f->var_values == NULL)
            rc = nfail(L, n, "out of memory");
    }
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        const ynode *k = m->p[i].key, *v = m->p[i].val;
        if (!valid_name(k->s, NAME_MAX_LEN)) {
            rc = nfail(L, k, "var name '%s' must be 1..%d of [A-Za-z0-9_-]", k->s, NAME_MAX_LEN);
            break;
        }
        if ((rc = want_scalar(L, v, "a var value")) != 0)
            break;
        f->var_names[i] = arena_strndup(&f->a, k->s, k->slen);
        f->var_values[i] = arena_strndup(&f->a, v->s, v->slen);
        if (f->var_names[i] == NULL || f->var_values[i] == NULL)
            rc = nfail(L, v, "out of memory");
        f->nvars = i + 1;
    }
    free(m);
    return rc;
}

static int load_env(loader *L, const ynode *n)
{
    btl_narrative_file *f = L->f;
    if (n->k != Y_SEQ)
        return nfail(L, n, "env_whitelist must be a list of names");
    if (n->n && (f->env_names = arena_alloc(&f->a, n->n * sizeof *f->env_names)) == NULL)
        return nfail(L, n, "out of memory");
    for (size_t i = 0; i < n->n; i++) {
        const ynode *it = n->kids[i];
        int rc = want_scalar(L, it, "an env_whitelist entry");
        if (rc)
            return rc;
        if (!valid_env_name(it->s, it->slen))
            return nfail(L, it, "'%s' is not an environment variable name", it->s);
        if ((f->env_names[f->nenv++] = arena_strndup(&f->a, it->s, it->slen)) == NULL)
            return nfail(L, it, "out of memory");
    }
    return 0;
}

static int load_narrative(loader *L, const ynode *n, const act_list *deflt, narr *out)
{
    static const char *const keys[] = {"name", "angle", "acts", "description", NULL};
    btl_narrative_file *f = L->f;
    ymap m;
    int rc = ymap_read(L, n, &m, "a narrative");
    if (rc == 0)
        rc = ymap_check_keys(L, &m, keys, "a narrative");
    if (rc)
        return rc;
    const ynode *nm = ymap_get(&m, "name"), *angle = ymap_get(&m, "angle"),
                *acts = ymap_get(&m, "acts"), *desc = ymap_get(&m, "description");
    if (nm == NULL)
        return nfail(L, n, "narrative without a name");
    if ((rc = want_scalar(L, nm, "name")) != 0)
        return rc;
    if (!valid_name(nm->s, 100))
        return nfail(L, nm, "narrative name '%s' must be 1..100 of [A-Za-z0-9_-]", nm->s);
    if (desc && (rc = want_scalar(L, desc, "description")) != 0)
        return rc;
    if (angle) {
        if ((rc = want_scalar(L, angle, "angle")) != 0)
            return rc;
        if (angle->slen > 100)
            return nfail(L, angle, "angle is longer than 100 characters");
    }
    out->name = arena_strndup(&f->a, nm->s, nm->slen);
    out->angle = angle ? arena_strndup(&f->a, angle->s, angle->slen) : "";
    if (out->name == NULL || out->angle == NULL)
        return nfail(L, n, "out of memory");
    if (acts)
        return list_compile(L, acts, &out->list);
    if (deflt == NULL)
        return nfail(L, n, "narrative '%s' has no acts (and the file has no top-level acts)",
                     out->name);
    out->list = deflt;
    return 0;
}

static int load_root(loader *L)
{
    btl_narrative_file *f = L->f;
    const ynode *root = L->root;
    ymap *m = malloc(sizeof *m);
    if (m == NULL)
        return lfail(L, 1, 1, "out of memory");
    int rc = ymap_read(L, root, m, "a narrative file");
    for (size_t i = 0; rc == 0 && i < m->n; i++) {
        const char *k = m->p[i].key->s;
        if (strcmp(k, "vars") && strcmp(k, "env_whitelist") && strcmp(k, "acts") &&
            strcmp(k, "narratives") && strcmp(k, "defaults") && strncmp(k, "x-", 2) != 0) {
            char b[80];
            rc = nfail(L, m->p[i].key,
                       "unknown key '%s' (vars, env_whitelist, acts, narratives, defaults, x-*)",
                       show(k, m->p[i].key->slen, b, sizeof b));
        }
    }
    const ynode *v, *narratives = NULL;
    const act_list *deflt = NULL;
    /* vars and env_whitelist first: templates check against them. */
    if (rc == 0 && (v = ymap_get(m, "vars")) != NULL)
        rc = load_vars(L, v);
    if (rc == 0 && (v = ymap_get(m, "env_whitelist")) != NULL)
        rc = load_env(L, v);
    if (rc == 0 && (v = ymap_get(m, "acts")) != NULL)
        rc = list_compile(L, v, &deflt);
    if (rc == 0)
        narratives = ymap_get(m, "narratives");
    if (rc == 0 && narratives == NULL) {
        if (deflt == NULL) {
            rc = nfail(L, root, "no narratives (and no top-level acts)");
        } else if ((f->narrs = arena_alloc(&f->a, sizeof *f->narrs)) == NULL) {
            rc = nfail(L, root, "out of memory");
        } else {
            f->narrs[0].name = "main";
            f->narrs[0].angle = "";
            f->narrs[0].list = deflt;
            f->n = 1;
        }
    } else if (rc == 0) {
        if (narratives->k != Y_SEQ || narratives->n == 0 ||
            narratives->n > BTL_NARRATIVE_MAX_NARRATIVES)
            rc = nfail(L, narratives, "narratives must be a list of 1..%d narratives",
                       BTL_NARRATIVE_MAX_NARRATIVES);
        else if ((f->narrs = arena_alloc(&f->a, narratives->n * sizeof *f->narrs)) == NULL)
            rc = nfail(L, narratives, "out of memory");
        for (size_t i = 0; rc == 0 && i < narratives->n; i++) {
            rc = load_narrative(L, narratives->kids[i], deflt, &f->narrs[i]);
            for (size_t j = 0; rc == 0 && j < i; j++)
                if (strcmp(f->narrs[j].name, f->narrs[i].name) == 0)
                    rc = nfail(L, narratives->kids[i], "duplicate narrative name '%s'",
                               f->narrs[i].name);
            if (rc == 0)
                f->n = i + 1;
        }
    }
    free(m);
    return rc;
}

int btl_narrative_load_string(const char *name, const char *yaml, size_t len,
                              btl_narrative_file **out, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (name == NULL || yaml == NULL || out == NULL)
        return BTL_EINVAL;
    *out = NULL;
    if (len > BTL_NARRATIVE_FILE_MAX) {
        if (err && errlen)
            btl_snprintf(err, errlen, "%s: larger than %d bytes", name, BTL_NARRATIVE_FILE_MAX);
        return BTL_ETOOBIG;
    }
    loader *L = calloc(1, sizeof *L);
    btl_narrative_file *f = calloc(1, sizeof *f);
    int rc;
    if (L == NULL || f == NULL) {
        rc = BTL_ENOMEM;
        goto out;
    }
    L->name = name;
    L->src = yaml;
    L->srclen = len;
    L->err = err;
    L->errlen = errlen;
    L->f = f;
    if ((rc = parse_tree(L)) == 0)
        rc = load_root(L);
    if (rc == 0) {
        *out = f;
        f = NULL;
    }
out:
    if (L)
        arena_free(&L->tmp);
    free(L);
    btl_narrative_free(f);
    return rc;
}

int btl_narrative_load(const char *path, btl_narrative_file **out, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (path == NULL || out == NULL)
        return BTL_EINVAL;
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = btl_read_file(path, BTL_NARRATIVE_FILE_MAX, &text, &len);
    if (rc != 0) {
        if (err && errlen)
            btl_snprintf(err, errlen, "%s: %s", path,
                         rc == BTL_ETOOBIG ? "larger than 1 MiB" : btl_strerror(rc));
        return rc;
    }
    rc = btl_narrative_load_string(path, text, len, out, err, errlen);
    free(text);
    return rc;
}

void btl_narrative_free(btl_narrative_file *f)
{
    if (f == NULL)
        return;
    arena_free(&f->a);
    free(f);
}

size_t btl_narrative_count(const btl_narrative_file *f)
{
    return f ? f->n : 0;
}

const char *btl_narrative_name(const btl_narrative_file *f, size_t i)
{
    return f && i < f->n ? f->narrs[i].name : NULL;
}

const char *btl_narrative_angle(const btl_narrative_file *f, size_t i)
{
    return f && i < f->n ? f->narrs[i].angle : NULL;
}

int btl_narrative_find(const btl_narrative_file *f, const char *name, size_t *i)
{
    if (f == NULL || name == NULL)
        return BTL_EINVAL;
    for (size_t k = 0; k < f->n; k++)
        if (strcmp(f->narrs[k].name, name) == 0) {
            if (i)
                *i = k;
            return 0;
        }
    return BTL_ENOTFOUND;
}

size_t btl_narrative_act_count(const btl_narrative_file *f, size_t i)
{
    return f && i < f->n ? f->narrs[i].list->n : 0;
}

/* ---- engine ------------------------------------------------------------ */

bool btl_narrative_truthy(const char *s)
{
    if (s == NULL)
        return false;
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    static const char *const falsy[] = {"", "false", "0", "no", "null"};
    for (size_t i = 0; i < BTL_ARRAY_LEN(falsy); i++)
        if (strlen(falsy[i]) == n && strncasecmp(s, falsy[i], n) == 0)
            return false;
    return true;
}

typedef struct run {
    const btl_narrative_file *f;
    const narr *nv;
    btl_narrative_ctx *ctx;
    char **outputs;
    const act *cur;
    const char *angle;
    char *err;
    size_t errlen;
} run;

static int rfail(run *r, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int rfail(run *r, int rc, const char *fmt, ...)
{
    if (r->err && r->errlen) {
        char msg[768];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (r->cur)
            btl_snprintf(r->err, r->errlen, "narrative %s, act %s: %s", r->nv->name, r->cur->name,
                         msg);
        else
            btl_snprintf(r->err, r->errlen, "narrative %s: %s", r->nv->name, msg);
    }
    return rc;
}

static int state_read(run *r, const char *key, char **json)
{
    btl_narrative_ctx *c = r->ctx;
    *json = NULL;
    if (c->state_get)
        return c->state_get(c->state_ud, key, json);
    if (c->db)
        return btl_state_get(c->db, key, json);
    return BTL_EUNSUPPORTED;
}

static int state_write(run *r, const char *key, const char *json, int64_t ttl)
{
    btl_narrative_ctx *c = r->ctx;
    if (c->state_set)
        return c->state_set(c->state_ud, key, json, ttl);
    if (c->db)
        return btl_state_set(c->db, key, json, ttl);
    return BTL_EUNSUPPORTED;
}

/* A state value as template text: strings unquoted, null as "". */
static int append_state(run *r, const char *key, btl_buf *out)
{
    char *json = NULL;
    int rc = state_read(r, key, &json);
    if (rc == BTL_ENOTFOUND)
        return 0;
    if (rc == BTL_EUNSUPPORTED)
        return rfail(r, BTL_EINVAL, "{{state.%s}} needs a database (or a state seam)", key);
    if (rc != 0)
        return rfail(r, rc, "reading state '%s': %s", key, btl_strerror(rc));
    json_error_t je;
    json_t *v = json_loads(json, JSON_DECODE_ANY, &je);
    if (v == NULL) {
        rc = btl_buf_puts(out, json); /* not JSON after all: as stored */
    } else if (json_is_string(v)) {
        rc = btl_buf_append(out, json_string_value(v), json_string_length(v));
    } else if (!json_is_null(v)) {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        rc = s ? btl_buf_puts(out, s) : BTL_ENOMEM;
        free(s);
    }
    json_decref(v);
    free(json);
    return rc;
}

/* Renders t into out (whose limit bounds the result). field names the
 * template in errors. */
static int render(run *r, const tmpl *t, btl_buf *out, const char *field)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < t->n; i++) {
        const seg *s = &t->segs[i];
        switch (s->k) {
        case SEG_TEXT:
            rc = btl_buf_append(out, s->s, s->len);
            break;
        case SEG_ACT:
            rc = btl_buf_puts(out, r->outputs[s->idx] ? r->outputs[s->idx] : "");
            break;
        case SEG_STATE:
            rc = append_state(r, s->s, out);
            if (rc != 0 && rc != BTL_ETOOBIG)
                return rc; /* err already set */
            break;
        case SEG_VAR:
            rc = btl_buf_puts(out, r->f->var_values[s->idx]);
            break;
        case SEG_ENV: {
            const char *v = getenv(s->s);
            rc = btl_buf_puts(out, v ? v : "");
            break;
        }
        case SEG_ANGLE:
            rc = btl_buf_puts(out, r->angle);
            break;
        case SEG_ITER:
            rc = btl_buf_printf(out, "%d", r->ctx->iteration);
            break;
        }
    }
    if (rc == BTL_ETOOBIG)
        return rfail(r, rc, "rendered %s is larger than %d bytes", field, BTL_NARRATIVE_RENDER_MAX);
    if (rc != 0)
        return rfail(r, rc, "rendering %s: %s", field, btl_strerror(rc));
    return 0;
}

static int render_args(run *r, const arg_node *n, btl_buf *out)
{
    int rc = 0;
    switch (n->k) {
    case ARG_LIT:
        rc = btl_buf_puts(out, n->lit);
        break;
    case ARG_TMPL: {
        btl_buf t;
        btl_buf_init(&t, BTL_NARRATIVE_RENDER_MAX);
        if ((rc = render(r, &n->t, &t, "args")) == 0)
            rc = btl_buf_json_str(out, t.data ? t.data : "");
        btl_buf_free(&t);
        if (rc != 0 && rc != BTL_ETOOBIG && rc != BTL_ENOMEM)
            return rc;
        break;
    }
    case ARG_MAP:
    case ARG_SEQ:
        rc = btl_buf_puts(out, n->k == ARG_MAP ? "{" : "[");
        for (size_t i = 0; rc == 0 && i < n->n; i++) {
            if (i)
                rc = btl_buf_puts(out, ",");
            if (rc == 0 && n->k == ARG_MAP) {
                rc = btl_buf_json_str(out, n->kids[i].key);
                if (rc == 0)
                    rc = btl_buf_puts(out, ":");
            }
            if (rc == 0)
                rc = render_args(r, &n->kids[i], out);
        }
        if (rc == 0)
            rc = btl_buf_puts(out, n->k == ARG_MAP ? "}" : "]");
        break;
    }
    if (rc == BTL_ETOOBIG)
        return rfail(r, rc, "rendered args are larger than %d bytes", BTL_NARRATIVE_RENDER_MAX);
    return rc;
}

/* Extracts the JSON of an act's reply and checks its required fields. On
 * failure why says what was wrong (fed back to the LLM). */
static int check_json(const act *a, const char *text, char **json_out, char *why, size_t whylen)
{
    char *j = NULL;
    char e[256];
    *json_out = NULL;
    if (btl_llm_extract_json(text, &j, e, sizeof e) != 0) {
        btl_snprintf(why, whylen, "no JSON found (%s)", e);
        return BTL_EPROTO;
    }
    json_error_t je;
    json_t *v = json_loads(j, JSON_DECODE_ANY, &je);
    if (v == NULL) {
        btl_snprintf(why, whylen, "invalid JSON: %s", je.text);
        free(j);
        return BTL_EPROTO;
    }
    int rc = 0;
    if (a->required) {
        if (!json_is_object(v)) {
            btl_snprintf(why, whylen, "expected a JSON object");
            rc = BTL_EPROTO;
        }
        for (size_t i = 0; rc == 0 && a->required[i]; i++)
            if (json_object_get(v, a->required[i]) == NULL) {
                btl_snprintf(why, whylen, "missing required field \"%s\"", a->required[i]);
                rc = BTL_EPROTO;
            }
    }
    json_decref(v);
    if (rc)
        free(j);
    else
        *json_out = j;
    return rc;
}

static const char *req_list(const act *a, char *buf, size_t n)
{
    btl_buf b;
    btl_buf_init(&b, n > 1 ? n - 1 : 1);
    for (size_t i = 0; a->required && a->required[i]; i++)
        if (btl_buf_printf(&b, "%s\"%s\"", i ? ", " : "", a->required[i]) != 0)
            break;
    btl_strlcpy(buf, b.data ? b.data : "", n);
    btl_buf_free(&b);
    return buf;
}

typedef struct act_stats {
    int attempts;
    int64_t prompt_tokens, completion_tokens;
} act_stats;

static int llm_call(run *r, const btl_llm_request *req, btl_llm_response *resp, char *e,
                    size_t elen)
{
    btl_narrative_ctx *c = r->ctx;
    memset(resp, 0, sizeof *resp);
    if (c->complete)
        return c->complete(c->complete_ud, req, resp, e, elen);
    if (c->llm == NULL) {
        btl_strlcpy(e, "no LLM in the narrative context", elen);
        return BTL_EINVAL;
    }
    return btl_llm_complete(c->llm, c->db, req, resp, e, elen);
}

static int run_prompt(run *r, const act *a, char **output, act_stats *st)
{
    btl_buf prompt, sys, fb;
    btl_buf_init(&prompt, BTL_NARRATIVE_RENDER_MAX);
    btl_buf_init(&sys, BTL_NARRATIVE_RENDER_MAX);
    btl_buf_init(&fb, BTL_NARRATIVE_RENDER_MAX + 2048);
    char why[512] = "";
    int rc;
    if ((rc = render(r, &a->prompt, &prompt, "prompt")) != 0)
        goto out;
    if (a->system.set && (rc = render(r, &a->system, &sys, "system")) != 0)
        goto out;
    for (int attempt = 0; attempt <= (a->expect_json ? a->retries : 0); attempt++) {
        const char *p = prompt.data ? prompt.data : "";
        if (attempt > 0) {
            /* The parse error goes back to the model with the same prompt. */
            char fields[512];
            btl_buf_reset(&fb);
            rc = btl_buf_printf(&fb,
                                "%s\n\nYour previous reply could not be used: %s.\nReply with "
                                "exactly one JSON object%s%s and nothing else.",
                                p, why, a->required ? " with the fields " : "",
                                req_list(a, fields, sizeof fields));
            if (rc != 0) {
                rc = rfail(r, rc, "retry prompt is larger than %d bytes", (int)fb.limit);
                goto out;
            }
            p = fb.data;
        }
        btl_llm_request req = {.system = a->system.set ? sys.data : NULL,
                               .prompt = p,
                               .model = a->model,
                               .temperature = a->temperature,
                               .max_tokens = a->max_tokens,
                               .json = a->expect_json,
                               .json_fields = (const char *const *)a->required};
        btl_llm_response resp;
        char e[512] = "";
        st->attempts++;
        rc = llm_call(r, &req, &resp, e, sizeof e);
        if (rc != 0) {
            if (rc == BTL_EAGAIN)
                r->ctx->retry_after_ms = resp.retry_after_ms;
            btl_llm_response_free(&resp);
            if (rc == BTL_EAGAIN)
                rc = rfail(r, rc, "LLM: %s (retry after %lld ms)", e[0] ? e : btl_strerror(rc),
                           (long long)r->ctx->retry_after_ms);
            else
                rc = rfail(r, rc, "LLM: %s", e[0] ? e : btl_strerror(rc));
            goto out;
        }
        st->prompt_tokens += resp.prompt_tokens;
        st->completion_tokens += resp.completion_tokens;
        const char *text = resp.text ? resp.text : "";
        if (strlen(text) > BTL_NARRATIVE_OUTPUT_MAX) {
            btl_llm_response_free(&resp);
            rc = rfail(r, BTL_ETOOBIG, "reply is larger than %d bytes", BTL_NARRATIVE_OUTPUT_MAX);
            goto out;
        }
        if (!a->expect_json) {
            *output = strdup(text);
            btl_llm_response_free(&resp);
            rc = *output ? 0 : rfail(r, BTL_ENOMEM, "out of memory");
            goto out;
        }
        rc = check_json(a, text, output, why, sizeof why);
        btl_llm_response_free(&resp);
        if (rc == 0)
            goto out;
    }
    rc = rfail(r, BTL_EPROTO, "no usable JSON after %d attempt%s: %s", st->attempts,
               st->attempts == 1 ? "" : "s", why);
out:
    btl_buf_free(&prompt);
    btl_buf_free(&sys);
    btl_buf_free(&fb);
    return rc;
}

static int run_command(run *r, const act *a, char **output, act_stats *st)
{
    btl_narrative_ctx *c = r->ctx;
    btl_buf args;
    btl_buf_init(&args, BTL_NARRATIVE_RENDER_MAX);
    char *out = NULL;
    char e[512] = "";
    int rc;
    if (a->args)
        rc = render_args(r, a->args, &args);
    else
        rc = btl_buf_puts(&args, "{}");
    if (rc != 0)
        goto out;
    if (c->command == NULL) {
        rc = rfail(r, BTL_EUNSUPPORTED, "bot command '%s': no command runner", a->command);
        goto out;
    }
    st->attempts = 1;
    if ((rc = c->command(c->command_ud, a->command, args.data, &out, e, sizeof e)) != 0) {
        rc = rfail(r, rc, "bot command '%s': %s", a->command, e[0] ? e : btl_strerror(rc));
        goto out;
    }
    if (out && strlen(out) > BTL_NARRATIVE_OUTPUT_MAX) {
        rc = rfail(r, BTL_ETOOBIG, "bot command output is larger than %d bytes",
                   BTL_NARRATIVE_OUTPUT_MAX);
        goto out;
    }
    if (a->expect_json) {
        char why[512];
        /* No retry: a command has side effects. */
        if ((rc = check_json(a, out ? out : "", output, why, sizeof why)) != 0)
            rc = rfail(r, rc, "bot command '%s': %s", a->command, why);
    } else {
        *output = out ? out : strdup("");
        out = NULL;
        rc = *output ? 0 : rfail(r, BTL_ENOMEM, "out of memory");
    }
out:
    free(out);
    btl_buf_free(&args);
    return rc;
}

static int store_output(run *r, const act *a, const char *output)
{
    btl_buf key, val;
    btl_buf_init(&key, BTL_STATE_KEY_MAX + 1);
    btl_buf_init(&val, 2 * (size_t)BTL_NARRATIVE_OUTPUT_MAX);
    int rc = render(r, &a->output_var, &key, "output_var");
    if (rc != 0) {
        if (rc == BTL_ETOOBIG)
            rc = rfail(r, BTL_EINVAL, "output_var renders to a key over %d bytes",
                       BTL_STATE_KEY_MAX);
        goto out;
    }
    if (btl_state_valid_key(key.data ? key.data : "") != 0) {
        char b[80];
        rc = rfail(r, BTL_EINVAL, "output_var renders to an invalid state key '%s'",
                   show(key.data ? key.data : "", key.len, b, sizeof b));
        goto out;
    }
    json_error_t je;
    json_t *v = json_loads(output, JSON_DECODE_ANY, &je);
    json_decref(v);
    /* JSON output is stored as is, text as a JSON string. */
    rc = v ? btl_buf_puts(&val, output) : btl_buf_json_str(&val, output);
    if (rc == 0)
        rc = state_write(r, key.data, val.data, a->output_ttl_ms);
    if (rc == BTL_EUNSUPPORTED)
        rc = rfail(r, BTL_EINVAL, "output_var '%s' needs a database (or a state seam)", key.data);
    else if (rc != 0)
        rc = rfail(r, rc, "storing output_var '%s': %s", key.data, btl_strerror(rc));
out:
    btl_buf_free(&key);
    btl_buf_free(&val);
    return rc;
}

static void report_act(json_t *arr, const act *a, bool skipped, const char *output,
                       const act_stats *st)
{
    if (arr == NULL)
        return;
    json_t *o = json_pack("{s:s, s:b, s:I, s:i, s:I, s:I}", "name", a->name, "skipped", skipped,
                          "bytes", (json_int_t)(output ? strlen(output) : 0), "attempts",
                          st->attempts, "prompt_tokens", (json_int_t)st->prompt_tokens,
                          "completion_tokens", (json_int_t)st->completion_tokens);
    if (o)
        json_array_append_new(arr, o);
}

/* The final JSON: an expect-json act's extracted JSON, else the whole
 * output when it is JSON, else {"text": output}. */
static int final_of(run *r, const act *a, const char *output, char **final_json)
{
    if (a->expect_json) {
        *final_json = strdup(output);
    } else {
        json_error_t je;
        json_t *v = json_loads(output, JSON_DECODE_ANY, &je);
        if (v == NULL)
            v = json_pack("{s:s}", "text", output);
        *final_json = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        json_decref(v);
    }
    return *final_json ? 0 : rfail(r, BTL_ENOMEM, "out of memory (or output not UTF-8)");
}

int btl_narrative_run(const btl_narrative_file *f, size_t i, btl_narrative_ctx *ctx,
                      char **final_json, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (f == NULL || ctx == NULL || final_json == NULL || i >= f->n) {
        if (err && errlen)
            btl_snprintf(err, errlen, "bad arguments (narrative index %zu of %zu)", i,
                         f ? f->n : 0);
        return BTL_EINVAL;
    }
    *final_json = NULL;
    if ((ctx->state_get == NULL) != (ctx->state_set == NULL)) {
        btl_strlcpy(err, "state_get and state_set seams go together", errlen);
        return BTL_EINVAL;
    }
    const narr *nv = &f->narrs[i];
    const act_list *list = nv->list;
    run r = {.f = f,
             .nv = nv,
             .ctx = ctx,
             .angle = ctx->angle ? ctx->angle : nv->angle,
             .err = err,
             .errlen = errlen};
    json_t *acts = json_array();
    int rc = 0;
    size_t last = SIZE_MAX;
    ctx->retry_after_ms = 0;
    r.outputs = calloc(list->n, sizeof *r.outputs);
    if (r.outputs == NULL) {
        rc = rfail(&r, BTL_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < list->n; k++) {
        const act *a = &list->acts[k];
        act_stats st = {0};
        r.cur = a;
        if (ctx->stop && *ctx->stop) {
            rc = rfail(&r, BTL_ECLOSED, "interrupted by shutdown");
            goto out;
        }
        if (a->skip_if.set) {
            btl_buf b;
            btl_buf_init(&b, BTL_NARRATIVE_RENDER_MAX);
            rc = render(&r, &a->skip_if, &b, "skip_if");
            bool skip = rc == 0 && btl_narrative_truthy(b.data ? b.data : "");
            btl_buf_free(&b);
            if (rc != 0)
                goto out;
            if (skip) {
                if ((r.outputs[k] = strdup("")) == NULL) {
                    rc = rfail(&r, BTL_ENOMEM, "out of memory");
                    goto out;
                }
                report_act(acts, a, true, NULL, &st);
                continue;
            }
        }
        rc = a->command ? run_command(&r, a, &r.outputs[k], &st)
                        : run_prompt(&r, a, &r.outputs[k], &st);
        report_act(acts, a, false, r.outputs[k], &st);
        if (rc != 0)
            goto out;
        if (a->output_var.set && (rc = store_output(&r, a, r.outputs[k])) != 0)
            goto out;
        last = k;
    }
    r.cur = NULL;
    if (last == SIZE_MAX) {
        rc = rfail(&r, BTL_EINVAL, "every act was skipped: no output");
        goto out;
    }
    rc = final_of(&r, &list->acts[last], r.outputs[last], final_json);
out:
    if (acts) {
        json_t *rep = json_object();
        if (rep && json_object_set(rep, "acts", acts) == 0 && ctx->report == NULL)
            ctx->report = json_dumps(rep, JSON_COMPACT);
        json_decref(rep);
        json_decref(acts);
    }
    if (r.outputs)
        for (size_t k = 0; k < list->n; k++)
            free(r.outputs[k]);
    free(r.outputs);
    return rc;
}
