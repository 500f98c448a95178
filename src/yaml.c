/* yaml.c — a YAML document a server sent (an Omni model file), read within
 * limits (cc_yaml_load_l), and the slot a mapping keeps a key under;
 * policies.c reads a model file's policies from the document
 * (core.model_policies).
 *
 * A loader builds the whole document with no bound: merge keys copied
 * without limit, aliases shared (a billion laughs), anchors that contain
 * their own alias (a cycle), deep nesting. Here libyaml's parser events are
 * read one by one and the document is built from them, counting as it goes:
 * nesting depth, events, nodes with every alias and merge key expanded, keys
 * per mapping, bytes per key, and a deadline. Past a limit the reading stops
 * at once, so memory and time stay bounded by the limits.
 *
 * Scalars are resolved like lyaml's `lyaml.implicit` and `lyaml.explicit`
 * rules (`true`, `1`, `1.5`, `~` ...), with Lua's own number conversion, so
 * that a value reads as it did when those rules ran in Lua: a value that is
 * not a finite number stays text, and so does a plain scalar on which one of
 * lyaml's rules raised (`01_`, `0b1_`: the next rule is tried); a tagged one
 * (`!!int 01_`) is refused as not what its tag says.
 *
 * The nodes are Lua tables (policies.c walks them): a mapping
 * { own = {key, ...}, merged = {key, ...}, values = {[slot] = value},
 * from_merge = {[slot] = true}, count, n, h }; a sequence { items, n, h };
 * n: nodes with aliases expanded, h: height (1 for an empty collection).
 *
 * libyaml's parser and event live in a userdata closed after the reading
 * and by __gc, so an error raised by Lua (out of memory, the caller's clock)
 * leaks nothing; the building runs under lua_pcall. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include "cachectl.h"

#define TAG "tag:yaml.org,2002:"
#define READER_MT "cachectl.yaml_reader"

/* The limits of a document (docs/lua.md), in the order of limit_names. */
enum { LIM_DEPTH, LIM_EVENTS, LIM_NODES, LIM_KEYS, LIM_KEY_BYTES, LIM_COUNT };
static const char *const limit_names[LIM_COUNT] = { "depth", "events", "nodes", "keys", "key_bytes" };
static const lua_Integer limit_defaults[LIM_COUNT] = { 64, 100000, 100000, 10000, 1024 };

/* An open mapping or sequence. Its table, its pending key and its anchor
 * are in the work table at 3d-2, 3d-1, 3d (d: its depth). */
typedef struct frame {
    int map, has_key, merging, anchored;
    lua_Integer count, n, h, own, merged, items;
} frame;

typedef struct reader {
    yaml_parser_t parser;
    yaml_event_t event;
    int parser_live, event_live;
    frame *frames;
    size_t nframes;
    char *scratch;
    size_t scratch_cap;
} reader;

typedef struct st {
    lua_State *L;
    reader *r;
    lua_Integer lim[LIM_COUNT];
    double deadline;
    int has_deadline, clock;          /* clock: stack index of a Lua clock, or 0 */
    int null, work, anchors, open, root;
    size_t depth;
    lua_Integer nodes, events;
    int documents;
    const char *reason;
    char msg[160];
} st;

/* ------------------------------------------------------------ the reader */

static void reader_close(reader *r)
{
    if (r->event_live) yaml_event_delete(&r->event);
    if (r->parser_live) yaml_parser_delete(&r->parser);
    r->event_live = r->parser_live = 0;
    free(r->frames);
    free(r->scratch);
    r->frames = NULL;
    r->scratch = NULL;
    r->nframes = r->scratch_cap = 0;
}

static int reader_gc(lua_State *L)
{
    reader_close((reader *)luaL_checkudata(L, 1, READER_MT));
    return 0;
}

/* A byte buffer of n + 1 bytes for a copy of a scalar's text; NULL when out
 * of memory. */
static char *scratch(reader *r, size_t n)
{
    if (n + 1 > r->scratch_cap) {
        char *p = realloc(r->scratch, n + 1);
        if (!p) return NULL;
        r->scratch = p;
        r->scratch_cap = n + 1;
    }
    return r->scratch;
}

static int refuse(st *s, const char *reason, const char *fmt, lua_Integer n)
{
    s->reason = reason;
    snprintf(s->msg, sizeof s->msg, fmt, (long long)n);
    return -1;
}

/* ------------------------------------------------------------ numbers */

/* A Lua number as lyaml's rules compute it: integer arithmetic wraps on
 * Lua 5.3+, and everything is a float on 5.1 and LuaJIT. */
#if LUA_VERSION_NUM >= 503
#define HAS_INTEGERS 1
#else
#define HAS_INTEGERS 0
#endif

typedef struct num { int integer; lua_Integer i; lua_Number f; } num;

static num num_int(lua_Integer i)
{
    num r;
    r.integer = HAS_INTEGERS;
    r.i = i;
    r.f = (lua_Number)i;
    return r;
}

static num num_float(lua_Number f)
{
    num r;
    r.integer = 0;
    r.i = 0;
    r.f = f;
    return r;
}

static lua_Number as_float(num a) { return a.integer ? (lua_Number)a.i : a.f; }

static num num_add(num a, num b)
{
#if HAS_INTEGERS
    if (a.integer && b.integer) return num_int((lua_Integer)((lua_Unsigned)a.i + (lua_Unsigned)b.i));
#endif
    return num_float(as_float(a) + as_float(b));
}

static num num_mul(num a, lua_Integer k)
{
#if HAS_INTEGERS
    if (a.integer) return num_int((lua_Integer)((lua_Unsigned)a.i * (lua_Unsigned)k));
#endif
    return num_float(as_float(a) * (lua_Number)k);
}

/* Lua's tonumber of the NUL-terminated text t (n bytes): 1 and *out, or 0. */
static int to_number(lua_State *L, const char *t, size_t n, num *out)
{
#if LUA_VERSION_NUM >= 503
    if (strlen(t) != n || lua_stringtonumber(L, t) != n + 1) return 0;
    *out = lua_isinteger(L, -1) ? num_int(lua_tointeger(L, -1)) : num_float(lua_tonumber(L, -1));
    lua_pop(L, 1);
    return 1;
#else
    int ok;
    lua_pushlstring(L, t, n);
    ok = lua_isnumber(L, -1);
    if (ok) *out = num_float(lua_tonumber(L, -1));
    lua_pop(L, 1);
    return ok;
#endif
}

/* lyaml's int(): tonumber, then a number whose fractional part is 0 (a
 * float stays a float: lyaml's tointeger is its fallback on every Lua). */
static int to_int(lua_State *L, const char *t, size_t n, num *out)
{
    lua_Number f;
    if (!to_number(L, t, n, out)) return 0;
    if (out->integer) return 1;
    f = out->f;
    return f - floor(f) == 0.0;
}

/* ------------------------------------------------------------ lyaml's rules */

/* What a rule made of a text: nothing (the next rule is tried), a value, a
 * raise (lyaml's rule fails with a Lua error), or out of memory. */
enum { R_NONE, R_NUM, R_BOOL, R_NULL, R_TEXT, R_RAISE, R_MEMORY };
typedef struct val { int kind, b; num n; } val;
typedef struct text { lua_State *L; reader *r; const char *s; size_t n; } text;
typedef int (*rule)(const text *t, val *v);

static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_hex(int c) { return is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'); }

static int one_of(const text *t, const char *const *list)
{
    for (; *list; list++)
        if (strlen(*list) == t->n && memcmp(*list, t->s, t->n) == 0) return 1;
    return 0;
}

/* The sign of `^([+-]?)`: the offset after it. */
static size_t sign(const text *t, int *neg)
{
    *neg = t->n > 0 && t->s[0] == '-';
    return t->n > 0 && (t->s[0] == '-' || t->s[0] == '+');
}

static int numeric(val *v, num n, int neg)
{
    v->kind = R_NUM;
    v->n = neg ? num_mul(n, -1) : n;
    return R_NUM;
}

static int rule_null(const text *t, val *v)
{
    static const char *const names[] = { "", "~", "null", "Null", "NULL", NULL };
    return v->kind = one_of(t, names) ? R_NULL : R_NONE;
}

static int rule_bool(const text *t, val *v)
{
    static const char *const yes[] = { "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", NULL };
    static const char *const no[] = { "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", NULL };
    v->b = one_of(t, yes);
    return v->kind = v->b || one_of(t, no) ? R_BOOL : R_NONE;
}

static int rule_inf(const text *t, val *v)
{
    static const char *const pos[] = { ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", NULL };
    static const char *const neg[] = { "-.inf", "-.Inf", "-.INF", NULL };
    if (one_of(t, pos)) return numeric(v, num_float(HUGE_VAL), 0);
    if (one_of(t, neg)) return numeric(v, num_float(-HUGE_VAL), 0);
    return v->kind = R_NONE;
}

static int rule_nan(const text *t, val *v)
{
    static const char *const names[] = { ".nan", ".NaN", ".NAN", NULL };
    return one_of(t, names) ? numeric(v, num_float(NAN), 0) : (v->kind = R_NONE);
}

/* `^([+-]?)0<mark>_*([d][d_]<more>)$` with d the digits of base (2 or 8):
 * rest's digits read one by one, `_*(.)`, which raises on a trailing `_`. */
static int digits_rule(const text *t, val *v, int base, char mark, size_t min_rest)
{
    int neg;
    size_t p = sign(t, &neg), q, i;
    num r = num_int(0);
    const char *s = t->s;
    if (p >= t->n || s[p] != '0') return v->kind = R_NONE;
    p++;
    if (mark) {
        if (p >= t->n || s[p] != mark) return v->kind = R_NONE;
        p++;
    }
    for (q = p; q < t->n && s[q] == '_'; q++) {}
    if (t->n - q < min_rest || !(s[q] >= '0' && s[q] < '0' + base)) return v->kind = R_NONE;
    for (i = q; i < t->n; i++)
        if (s[i] != '_' && !(s[i] >= '0' && s[i] < '0' + base)) return v->kind = R_NONE;
    if (s[t->n - 1] == '_') return v->kind = R_RAISE;
    for (i = q; i < t->n; i++)
        if (s[i] != '_') r = num_add(num_mul(r, base), num_int(s[i] - '0'));
    return numeric(v, r, neg);
}

static int rule_binary(const text *t, val *v) { return digits_rule(t, v, 2, 'b', 2); }
static int rule_octal(const text *t, val *v) { return digits_rule(t, v, 8, 0, 1); }

/* The bytes of t from p on without '_' (NUL-terminated), in the scratch. */
static char *strip(const text *t, size_t p, size_t *len)
{
    char *out = scratch(t->r, t->n - p);
    size_t i, n = 0;
    if (!out) return NULL;
    for (i = p; i < t->n; i++)
        if (t->s[i] != '_') out[n++] = t->s[i];
    out[n] = '\0';
    *len = n;
    return out;
}

/* int(rest) with its sign: a '-' on no number raises (nil * -1). */
static int int_rule(const text *t, val *v, size_t from, int neg)
{
    size_t len;
    num r;
    char *rest = strip(t, from, &len);
    if (!rest) return v->kind = R_MEMORY;
    if (!to_int(t->L, rest, len, &r)) return v->kind = neg ? R_RAISE : R_NONE;
    return numeric(v, r, neg);
}

/* `^([+-]?)_*([0-9][0-9_]*)$` */
static int rule_decimal(const text *t, val *v)
{
    int neg;
    size_t p = sign(t, &neg), q, i;
    for (q = p; q < t->n && t->s[q] == '_'; q++) {}
    if (q >= t->n || !is_digit(t->s[q])) return v->kind = R_NONE;
    for (i = q; i < t->n; i++)
        if (!is_digit(t->s[i]) && t->s[i] != '_') return v->kind = R_NONE;
    return int_rule(t, v, q, neg);
}

/* `^([+-]?)(0x_*[0-9a-fA-F][0-9a-fA-F_]*)$` */
static int rule_hexadecimal(const text *t, val *v)
{
    int neg;
    size_t p = sign(t, &neg), q, i;
    if (t->n - p < 2 || t->s[p] != '0' || t->s[p + 1] != 'x') return v->kind = R_NONE;
    for (q = p + 2; q < t->n && t->s[q] == '_'; q++) {}
    if (q >= t->n || !is_hex(t->s[q])) return v->kind = R_NONE;
    for (i = q; i < t->n; i++)
        if (!is_hex(t->s[i]) && t->s[i] != '_') return v->kind = R_NONE;
    return int_rule(t, v, p, neg);
}

/* tonumber of the text without '_', when the text holds '.', 'e' or 'E'. */
static int rule_float(const text *t, val *v)
{
    size_t len;
    num r;
    char *all = strip(t, 0, &len);
    if (!all) return v->kind = R_MEMORY;
    if (!memchr(t->s, '.', t->n) && !memchr(t->s, 'e', t->n) && !memchr(t->s, 'E', t->n)) return v->kind = R_NONE;
    if (!to_number(t->L, all, len, &r)) return v->kind = R_NONE;
    return numeric(v, r, 0);
}

/* `[0-9]+:[0-5]?[0-9][:0-9]*` from p to end: each run of digits, base 60. */
static int base60(const text *t, size_t p, size_t end, num *r)
{
    size_t i = p, j;
    *r = num_int(0);
    while (i < end) {
        num d;
        char *run;
        if (!is_digit(t->s[i])) { i++; continue; }
        for (j = i; j < end && is_digit(t->s[j]); j++) {}
        if (!(run = scratch(t->r, j - i))) return R_MEMORY;
        memcpy(run, t->s + i, j - i);
        run[j - i] = '\0';
        if (!to_int(t->L, run, j - i, &d)) return R_RAISE;     /* arithmetic on a nil */
        *r = num_add(num_mul(*r, 60), d);
        i = j;
    }
    return R_NUM;
}

/* Whether t from p to end is `[0-9]+:[0-5]?[0-9][:0-9]*`. */
static int is_base60(const text *t, size_t p, size_t end)
{
    size_t i = p;
    while (i < end && is_digit(t->s[i])) i++;
    if (i == p || i + 1 >= end || t->s[i] != ':' || !is_digit(t->s[i + 1])) return 0;
    for (i += 2; i < end; i++)
        if (!is_digit(t->s[i]) && t->s[i] != ':') return 0;
    return 1;
}

static int rule_sexagesimal(const text *t, val *v)
{
    int neg, k;
    size_t p = sign(t, &neg);
    num r;
    if (!is_base60(t, p, t->n)) return v->kind = R_NONE;
    if ((k = base60(t, p, t->n, &r)) != R_NUM) return v->kind = k;
    return numeric(v, r, neg);
}

/* `^([+-]?)([0-9]+:[0-5]?[0-9][:0-9]*)(%.[0-9]+)$` */
static int rule_sexfloat(const text *t, val *v)
{
    int neg, k;
    size_t p = sign(t, &neg), dot, i;
    num r, frac;
    const char *d = memchr(t->s, '.', t->n);
    char *f;
    if (!d) return v->kind = R_NONE;
    dot = (size_t)(d - t->s);
    if (dot + 1 >= t->n || !is_base60(t, p, dot)) return v->kind = R_NONE;
    for (i = dot + 1; i < t->n; i++)
        if (!is_digit(t->s[i])) return v->kind = R_NONE;
    if ((k = base60(t, p, dot, &r)) != R_NUM) return v->kind = k;
    if (!(f = scratch(t->r, t->n - dot))) return v->kind = R_MEMORY;
    memcpy(f, d, t->n - dot);
    f[t->n - dot] = '\0';
    if (!to_number(t->L, f, t->n - dot, &frac)) return v->kind = R_RAISE;
    return numeric(v, num_add(r, frac), neg);
}

/* explicit.float's maybefloat(): an integer rule's number plus 0.0 (a
 * float; and -0 becomes 0, as in Lua). */
static int as_float_rule(rule fn, const text *t, val *v)
{
    int k = fn(t, v);
    if (k == R_NUM) v->n = num_float(as_float(v->n) + 0.0);
    return k;
}
static int f_octal(const text *t, val *v) { return as_float_rule(rule_octal, t, v); }
static int f_decimal(const text *t, val *v) { return as_float_rule(rule_decimal, t, v); }
static int f_hexadecimal(const text *t, val *v) { return as_float_rule(rule_hexadecimal, t, v); }
static int f_binary(const text *t, val *v) { return as_float_rule(rule_binary, t, v); }

static int yes_no(const text *t, val *v)
{
    static const char *const yes[] = { "y", "Y", NULL }, *const no[] = { "n", "N", NULL };
    v->b = one_of(t, yes);
    return v->kind = v->b || one_of(t, no) ? R_BOOL : R_NONE;
}

static int rule_str(const text *t, val *v) { (void)t; return v->kind = R_TEXT; }

/* lyaml.implicit in the order lyaml's loader tries them, and the explicit
 * rules (each an anyof: the first that takes the text wins, a raise ends
 * it). NULL ends a list. */
static const rule implicit[] = { rule_null, rule_octal, rule_decimal, rule_float, rule_bool, rule_inf, rule_nan,
                                 rule_hexadecimal, rule_binary, rule_sexagesimal, rule_sexfloat, NULL };
static const rule explicit_bool[] = { rule_bool, yes_no, NULL };
static const rule explicit_float[] = { rule_float, rule_nan, rule_inf, f_octal, f_decimal, f_hexadecimal,
                                       f_binary, rule_sexfloat, NULL };
static const rule explicit_int[] = { rule_octal, rule_decimal, rule_hexadecimal, rule_binary,
                                     rule_sexagesimal, NULL };
static int rule_any_null(const text *t, val *v) { (void)t; return v->kind = R_NULL; }
static const rule explicit_null[] = { rule_any_null, NULL };
static const rule explicit_str[] = { rule_str, NULL };
static const struct { const char *tag; const rule *rules; } explicit[] = {
    { "bool", explicit_bool }, { "float", explicit_float }, { "int", explicit_int },
    { "null", explicit_null }, { "str", explicit_str }, { NULL, NULL }
};

/* ------------------------------------------------------------ scalars */

/* Pushes a scalar's value; -1 (nothing pushed) when refused. */
static int push_scalar(st *s, const yaml_event_t *ev)
{
    lua_State *L = s->L;
    const char *tag = (const char *)ev->data.scalar.tag;
    text t;
    val v;
    int i, k = R_NONE;
    t.L = L;
    t.r = s->r;
    t.s = (const char *)ev->data.scalar.value;
    t.n = ev->data.scalar.length;
    v.kind = R_NONE;
    if (tag && strncmp(tag, TAG, sizeof TAG - 1) == 0) {
        for (i = 0; explicit[i].tag; i++) {
            const rule *r;
            if (strcmp(tag + sizeof TAG - 1, explicit[i].tag) != 0) continue;
            for (r = explicit[i].rules; *r && (k = (*r)(&t, &v)) == R_NONE; r++) {}
            if (k == R_MEMORY) return refuse(s, "memory", "not enough memory to read the YAML", 0);
            if (k == R_NONE || k == R_RAISE) {
                s->reason = "shape";
                snprintf(s->msg, sizeof s->msg, "a scalar tagged %s that is not one", explicit[i].tag);
                return -1;
            }
            break;
        }
    }
    if (k == R_NONE && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        const rule *r;
        for (r = implicit; *r; r++) {
            k = (*r)(&t, &v);
            if (k == R_MEMORY) return refuse(s, "memory", "not enough memory to read the YAML", 0);
            if (k != R_NONE && k != R_RAISE) break;
        }
    }
    if (k == R_NULL) lua_pushvalue(L, s->null);
    else if (k == R_BOOL) lua_pushboolean(L, v.b);
    else if (k == R_NUM && v.n.integer) lua_pushinteger(L, v.n.i);
    else if (k == R_NUM && isfinite(v.n.f)) lua_pushnumber(L, v.n.f);
    else lua_pushlstring(L, t.s, t.n);    /* text, and numbers that are not finite */
    return 0;
}

static int is_merge_key(const yaml_event_t *ev)
{
    const char *tag = (const char *)ev->data.scalar.tag;
    if (tag) return strcmp(tag, TAG "merge") == 0;
    return ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && ev->data.scalar.length == 2
        && memcmp(ev->data.scalar.value, "<<", 2) == 0;
}

/* ------------------------------------------------------------ nodes */

/* The slot a mapping keeps the key at idx under: a string as itself, any
 * other scalar as "\0<type>\0<text>", and a string that starts with "\0"
 * (a quoted "\0null" can) as "\0string\0<string>": no two keys share one. */
static void push_slot(lua_State *L, int idx, int null)
{
    size_t len;
    idx = cc_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING && (lua_tolstring(L, idx, &len)[0] != '\0' || len == 0)) {
        lua_pushvalue(L, idx);
    } else if (lua_rawequal(L, idx, null)) {
        lua_pushlstring(L, "\0null", 5);
    } else if (lua_type(L, idx) == LUA_TBOOLEAN) {
        if (lua_toboolean(L, idx)) lua_pushlstring(L, "\0boolean\0true", 13);
        else lua_pushlstring(L, "\0boolean\0false", 14);
    } else {
        lua_pushlstring(L, "\0", 1);
        lua_pushstring(L, luaL_typename(L, idx));
        lua_pushlstring(L, "\0", 1);
        lua_pushvalue(L, idx);
        lua_tostring(L, -1);                /* a copy: a number as tostring writes it */
        lua_concat(L, 4);
    }
}

/* The nodes and height of the value at idx. */
static void weigh(st *s, int idx, lua_Integer *n, lua_Integer *h)
{
    lua_State *L = s->L;
    *n = 1;
    *h = 0;
    if (lua_type(L, idx) != LUA_TTABLE || lua_rawequal(L, idx, s->null)) return;
    lua_getfield(L, idx, "n");
    lua_getfield(L, idx, "h");
    *n = lua_tointeger(L, -2);
    *h = lua_tointeger(L, -1);
    lua_pop(L, 2);
}

static void grow(st *s, frame *f, int value)
{
    lua_Integer n, h;
    weigh(s, value, &n, &h);
    f->n += n;
    if (h + 1 > f->h) f->h = h + 1;
}

/* Pushes the field of the open collection of frame f. */
static void field(st *s, const frame *f, const char *name)
{
    lua_rawgeti(s->L, s->work, (int)(3 * (f - s->r->frames) + 1));
    lua_getfield(s->L, -1, name);
    lua_remove(s->L, -2);
}

static int new_key(st *s, frame *f, int key, int merged)
{
    lua_Integer *len = merged ? &f->merged : &f->own;
    if (++f->count > s->lim[LIM_KEYS])
        return refuse(s, "limit", "a mapping has more than %lld keys (the keys limit)", s->lim[LIM_KEYS]);
    field(s, f, merged ? "merged" : "own");
    lua_pushvalue(s->L, key);
    lua_rawseti(s->L, -2, (int)++*len);
    lua_pop(s->L, 1);
    return 0;
}

/* key: value, written in the mapping (a later one replaces an earlier one,
 * and any value a merge key brought in). */
static int set(st *s, frame *f, int key, int value)
{
    lua_State *L = s->L;
    int values, from_merge, slot;
    field(s, f, "values");
    values = lua_gettop(L);
    field(s, f, "from_merge");
    from_merge = values + 1;
    push_slot(L, key, s->null);
    slot = values + 2;
    lua_pushvalue(L, slot);
    lua_rawget(L, values);
    lua_pushvalue(L, slot);
    lua_rawget(L, from_merge);
    if (lua_isnil(L, -2)) {
        if (new_key(s, f, key, 0) < 0) return -1;
    } else if (lua_toboolean(L, -1)) {
        lua_pushvalue(L, slot);
        lua_pushnil(L);
        lua_rawset(L, from_merge);
        field(s, f, "own");
        lua_pushvalue(L, key);
        lua_rawseti(L, -2, (int)++f->own);
    }
    lua_pushvalue(L, slot);
    lua_pushvalue(L, value);
    lua_rawset(L, values);
    grow(s, f, value);
    lua_settop(L, values - 1);
    return 0;
}

/* The keys a merge key's source mapping (at src) brings in: its own, then
 * those it merged itself, that the mapping has not yet. */
static int merge_one(st *s, frame *f, int src)
{
    lua_State *L = s->L;
    int top = lua_gettop(L), values, from_merge, svalues, sfrom, list, pass;
    field(s, f, "values");
    values = top + 1;
    field(s, f, "from_merge");
    from_merge = top + 2;
    lua_getfield(L, src, "values");
    svalues = top + 3;
    lua_getfield(L, src, "from_merge");
    sfrom = top + 4;
    for (pass = 0; pass < 2; pass++) {
        lua_Integer i, n;
        lua_getfield(L, src, pass ? "merged" : "own");
        list = top + 5;
        n = (lua_Integer)cc_rawlen(L, list);
        for (i = 1; i <= n; i++) {
            int key, slot;
            lua_rawgeti(L, list, (int)i);
            key = lua_gettop(L);
            push_slot(L, key, s->null);
            slot = key + 1;
            if (pass) {                     /* a merged key a later own key replaced is not its */
                lua_pushvalue(L, slot);
                lua_rawget(L, sfrom);
                if (!lua_toboolean(L, -1)) { lua_settop(L, key - 1); continue; }
                lua_pop(L, 1);
            }
            lua_pushvalue(L, slot);
            lua_rawget(L, values);
            if (lua_isnil(L, -1)) {
                if (new_key(s, f, key, 1) < 0) return -1;
                lua_pushvalue(L, slot);
                lua_rawget(L, svalues);
                lua_pushvalue(L, slot);
                lua_pushvalue(L, -2);
                lua_rawset(L, values);
                lua_pushvalue(L, slot);
                lua_pushboolean(L, 1);
                lua_rawset(L, from_merge);
                grow(s, f, lua_gettop(L));
            }
            lua_settop(L, key - 1);
        }
        lua_settop(L, list - 1);
    }
    lua_settop(L, top);
    return 0;
}

static int is_kind(st *s, int idx, const char *field_name)
{
    int yes;
    if (lua_type(s->L, idx) != LUA_TTABLE || lua_rawequal(s->L, idx, s->null)) return 0;
    lua_getfield(s->L, idx, field_name);
    yes = !lua_isnil(s->L, -1);
    lua_pop(s->L, 1);
    return yes;
}

/* `<<: value`: the keys of a mapping, or of a sequence of mappings (the
 * first one wins), that the mapping does not have yet. */
static int merge(st *s, frame *f, int value)
{
    lua_State *L = s->L;
    lua_Integer i, n;
    int items;
    if (is_kind(s, value, "values")) return merge_one(s, f, value);
    if (!is_kind(s, value, "items"))
        return refuse(s, "shape", "a merge key (<<) whose value is not a mapping or a list of mappings", 0);
    lua_getfield(L, value, "items");
    items = lua_gettop(L);
    n = (lua_Integer)cc_rawlen(L, items);
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, items, (int)i);
        if (!is_kind(s, -1, "values"))
            return refuse(s, "shape", "a merge key (<<) whose list holds something else than mappings", 0);
        if (merge_one(s, f, lua_gettop(L)) < 0) return -1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

/* Puts the complete value at the top of the stack (popped) into the
 * collection open deepest, or makes it the document. */
static int put(st *s, int merge_key)
{
    lua_State *L = s->L;
    int value = lua_gettop(L), slot;
    frame *f;
    if (s->depth == 0) {
        lua_replace(L, s->root);
        return 0;
    }
    f = &s->r->frames[s->depth - 1];
    slot = (int)(3 * s->depth);
    if (!f->map) {
        field(s, f, "items");
        lua_pushvalue(L, value);
        lua_rawseti(L, -2, (int)++f->items);
        grow(s, f, value);
    } else if (!f->has_key) {
        if (lua_type(L, value) == LUA_TTABLE && !lua_rawequal(L, value, s->null))
            return refuse(s, "shape", "a mapping key that is a mapping or a sequence", 0);
        if (lua_type(L, value) == LUA_TSTRING && (lua_Integer)cc_rawlen(L, value) > s->lim[LIM_KEY_BYTES])
            return refuse(s, "limit", "a key longer than %lld bytes (the key_bytes limit)", s->lim[LIM_KEY_BYTES]);
        lua_pushvalue(L, value);
        lua_rawseti(L, s->work, slot - 1);
        f->has_key = 1;
        f->merging = merge_key;
    } else {
        f->has_key = 0;
        lua_rawgeti(L, s->work, slot - 1);
        if ((f->merging ? merge(s, f, value) : set(s, f, value + 1, value)) < 0) return -1;
        f->n += 1;                          /* the key */
        lua_pushnil(L);
        lua_rawseti(L, s->work, slot - 1);
    }
    lua_settop(L, value - 1);
    return 0;
}

static int count_nodes(st *s, lua_Integer n)
{
    s->nodes += n;
    if (s->nodes > s->lim[LIM_NODES])
        return refuse(s, "limit", "more than %lld nodes with aliases and merge keys expanded (the nodes limit)",
                      s->lim[LIM_NODES]);
    return 0;
}

static int deeper(st *s, lua_Integer extra)
{
    if ((lua_Integer)s->depth + extra > s->lim[LIM_DEPTH])
        return refuse(s, "limit", "nesting deeper than %lld levels (the depth limit)", s->lim[LIM_DEPTH]);
    return 0;
}

/* Adds n to open[anchor at idx]. */
static void open_count(st *s, int idx, int n)
{
    lua_State *L = s->L;
    lua_pushvalue(L, idx);
    lua_pushvalue(L, idx);
    lua_rawget(L, s->open);
    lua_pushinteger(L, lua_tointeger(L, -1) + n);
    lua_remove(L, -2);
    lua_rawset(L, s->open);
}

static int start(st *s, const yaml_event_t *ev)
{
    lua_State *L = s->L;
    int map = ev->type == YAML_MAPPING_START_EVENT;
    const char *anchor = (const char *)(map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor);
    frame *f;
    int slot;
    if (count_nodes(s, 1) < 0 || deeper(s, 1) < 0) return -1;
    if (s->depth == s->r->nframes) {
        size_t n = s->r->nframes ? 2 * s->r->nframes : 16;
        frame *p = realloc(s->r->frames, n * sizeof *p);
        if (!p) return refuse(s, "memory", "not enough memory to read the YAML", 0);
        s->r->frames = p;
        s->r->nframes = n;
    }
    f = &s->r->frames[s->depth++];
    memset(f, 0, sizeof *f);
    f->map = map;
    f->n = f->h = 1;
    slot = (int)(3 * s->depth);
    lua_createtable(L, 0, map ? 7 : 3);
    if (map) {
        static const char *const parts[] = { "own", "merged", "values", "from_merge" };
        int i;
        for (i = 0; i < 4; i++) {
            lua_newtable(L);
            lua_setfield(L, -2, parts[i]);
        }
    } else {
        lua_newtable(L);
        lua_setfield(L, -2, "items");
    }
    lua_rawseti(L, s->work, slot - 2);
    if (anchor) {
        f->anchored = 1;
        lua_pushstring(L, anchor);
        lua_pushvalue(L, -1);
        lua_rawseti(L, s->work, slot);
        open_count(s, lua_gettop(L), 1);
        lua_pop(L, 1);
    }
    return 0;
}

static int finish(st *s)
{
    lua_State *L = s->L;
    frame *f = &s->r->frames[--s->depth];
    int slot = (int)(3 * (s->depth + 1)), c;
    lua_rawgeti(L, s->work, slot - 2);
    c = lua_gettop(L);
    lua_pushinteger(L, f->n);
    lua_setfield(L, c, "n");
    lua_pushinteger(L, f->h);
    lua_setfield(L, c, "h");
    if (f->map) {
        lua_pushinteger(L, f->count);
        lua_setfield(L, c, "count");
    }
    if (f->anchored) {
        lua_rawgeti(L, s->work, slot);
        open_count(s, c + 1, -1);
        lua_pushvalue(L, c);
        lua_rawset(L, s->anchors);
        lua_pushnil(L);
        lua_rawseti(L, s->work, slot);
    }
    lua_pushnil(L);
    lua_rawseti(L, s->work, slot - 2);
    return put(s, 0);
}

static int alias(st *s, const yaml_event_t *ev)
{
    lua_State *L = s->L;
    lua_Integer n, h;
    lua_pushstring(L, (const char *)ev->data.alias.anchor);
    lua_pushvalue(L, -1);
    lua_rawget(L, s->open);
    if (lua_tointeger(L, -1) > 0) return refuse(s, "shape", "an alias inside the node it names (a cycle)", 0);
    lua_pop(L, 1);
    lua_rawget(L, s->anchors);
    if (lua_isnil(L, -1)) return refuse(s, "shape", "an alias to no anchor before it", 0);
    weigh(s, lua_gettop(L), &n, &h);
    if (count_nodes(s, n) < 0 || deeper(s, h) < 0) return -1;
    return put(s, 0);
}

static int scalar(st *s, const yaml_event_t *ev)
{
    lua_State *L = s->L;
    if (count_nodes(s, 1) < 0 || push_scalar(s, ev) < 0) return -1;
    if (ev->data.scalar.anchor) {
        lua_pushstring(L, (const char *)ev->data.scalar.anchor);
        lua_pushvalue(L, -2);
        lua_rawset(L, s->anchors);
    }
    return put(s, is_merge_key(ev));
}

/* ------------------------------------------------------------ reading */

static int syntax(st *s)
{
    const yaml_parser_t *p = &s->r->parser;
    if (p->error == YAML_MEMORY_ERROR || !p->problem)
        return refuse(s, "memory", "not enough memory to read the YAML", 0);
    s->reason = "syntax";
    if (p->problem_mark.line || p->problem_mark.column)
        snprintf(s->msg, sizeof s->msg, "not valid YAML (line %lu, column %lu): %s",
                 (unsigned long)p->problem_mark.line + 1, (unsigned long)p->problem_mark.column + 1, p->problem);
    else
        snprintf(s->msg, sizeof s->msg, "not valid YAML: %s", p->problem);
    return -1;
}

static int past_deadline(st *s)
{
    lua_State *L = s->L;
    double now;
    if (!s->clock) return cc_mono() > s->deadline;
    lua_pushvalue(L, s->clock);
    lua_call(L, 0, 1);
    now = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return now > s->deadline;
}

static int handle(st *s, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_SCALAR_EVENT: return scalar(s, ev);
    case YAML_ALIAS_EVENT: return alias(s, ev);
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT: return start(s, ev);
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT: return finish(s);
    case YAML_DOCUMENT_START_EVENT:
        if (++s->documents > 1) return refuse(s, "shape", "more than one YAML document", 0);
        return 0;
    default: return 0;
    }
}

/* Under lua_pcall: 1 the reader, 2 the text, 3 the clock or nil, 4 the
 * state (light userdata). Returns the document, or nothing when refused. */
static int read_l(lua_State *L)
{
    st *s = (st *)lua_touserdata(L, 4);
    reader *r = s->r;
    size_t len;
    const char *src = lua_tolstring(L, 2, &len);
    /* the building takes a bounded number of slots (about 30 at a merge),
     * whatever the depth: the open collections are in the work table */
    if (!lua_checkstack(L, 48)) return refuse(s, "memory", "not enough memory to read the YAML", 0), 0;
    s->clock = lua_isnil(L, 3) ? 0 : 3;
    lua_getfield(L, LUA_REGISTRYINDEX, CC_YAML_NULL);
    s->null = lua_gettop(L);
    lua_newtable(L);
    s->work = lua_gettop(L);
    lua_newtable(L);
    s->anchors = lua_gettop(L);
    lua_newtable(L);
    s->open = lua_gettop(L);
    lua_pushvalue(L, s->null);             /* the document: null until a node comes */
    s->root = lua_gettop(L);
    if (!yaml_parser_initialize(&r->parser))
        return refuse(s, "memory", "not enough memory to read the YAML", 0), 0;
    r->parser_live = 1;
    yaml_parser_set_input_string(&r->parser, (const unsigned char *)src, len);
    for (;;) {
        int rc;
        if (!yaml_parser_parse(&r->parser, &r->event)) return syntax(s), 0;
        r->event_live = 1;
        if (r->event.type == YAML_STREAM_END_EVENT) break;
        if (++s->events > s->lim[LIM_EVENTS])
            return refuse(s, "limit", "more than %lld events (the events limit)", s->lim[LIM_EVENTS]), 0;
        if (s->has_deadline && s->events % 512 == 0 && past_deadline(s))
            return refuse(s, "timeout", "reading the YAML took longer than the call's timeout", 0), 0;
        rc = handle(s, &r->event);
        yaml_event_delete(&r->event);
        r->event_live = 0;
        if (rc < 0) return 0;
    }
    lua_pushvalue(L, s->root);
    return 1;
}

/* The limits table at 2 (none or nil: the defaults) into lim. A name that
 * is not a limit (a typo), or a value that is not a number >= 0, is the
 * caller's mistake: it raises naming it, never read as 0 or ignored. */
static void read_limits(lua_State *L, lua_Integer *lim)
{
    int i;
    for (i = 0; i < LIM_COUNT; i++) lim[i] = limit_defaults[i];
    if (lua_isnoneornil(L, 2)) return;
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        size_t len = 0;
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : NULL;
        lua_Number n = lua_tonumber(L, -1);
        for (i = 0; name && i < LIM_COUNT; i++)
            if (len == strlen(limit_names[i]) && memcmp(name, limit_names[i], len) == 0) break;
        if (!name)
            luaL_argerror(L, 2, lua_pushfstring(L, "a limit named by a %s", luaL_typename(L, -2)));
        if (i == LIM_COUNT) luaL_argerror(L, 2, lua_pushfstring(L, "unknown limit '%s'", name));
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_argerror(L, 2, lua_pushfstring(L, "limit '%s' must be a number >= 0, got %s", name,
                                                luaL_typename(L, -1)));
        if (!(n >= 0)) luaL_argerror(L, 2, lua_pushfstring(L, "limit '%s' must be a number >= 0", name));
        lim[i] = n >= 0x1p62 ? ((lua_Integer)1 << 62) : (lua_Integer)n;
        lua_pop(L, 1);
    }
}

/* cc_yaml_load_l(text [, limits [, deadline [, clock]]]): the document, or
 * nil, what is wrong (never the text), and why ("limit", "shape", "syntax",
 * "memory" or "timeout"). limits: a table of the limits to change;
 * deadline: a clock time past which reading stops; clock: a function giving
 * the time (default the monotonic clock core.monotonic reads). */
int cc_yaml_load_l(lua_State *L)
{
    st s;
    reader *r;
    int status;
    luaL_checkstring(L, 1);
    memset(&s, 0, sizeof s);
    s.L = L;
    read_limits(L, s.lim);
    s.has_deadline = !lua_isnoneornil(L, 3);
    if (s.has_deadline) s.deadline = luaL_checknumber(L, 3);
    if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TFUNCTION);
    lua_settop(L, 4);
    r = (reader *)cc_newuserdata(L, sizeof *r);
    memset(r, 0, sizeof *r);
    luaL_getmetatable(L, READER_MT);
    lua_setmetatable(L, -2);
    s.r = r;
    lua_pushcfunction(L, read_l);
    lua_pushvalue(L, 5);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 4);
    lua_pushlightuserdata(L, &s);
    status = lua_pcall(L, 4, 1, 0);
    reader_close(r);
    /* Lua 5.3's buffers raise an allocation failure as an error that says so */
    if (status == LUA_ERRMEM || (status != 0 && lua_type(L, -1) == LUA_TSTRING
                                 && strstr(lua_tostring(L, -1), "not enough memory"))) {
        lua_pushnil(L);
        lua_pushliteral(L, "not enough memory to read the YAML");
        lua_pushliteral(L, "memory");
        return 3;
    }
    if (status != 0) return lua_error(L);   /* the clock's, raised as it is */
    if (s.reason) {
        lua_pushnil(L);
        lua_pushstring(L, s.msg);
        lua_pushstring(L, s.reason);
        return 3;
    }
    return 1;
}

/* Pushes the slot a mapping keeps the key at idx under (policies.c walks
 * the mappings). */
void cc_yaml_push_slot(lua_State *L, int idx)
{
    idx = cc_absindex(L, idx);
    lua_getfield(L, LUA_REGISTRYINDEX, CC_YAML_NULL);
    push_slot(L, idx, lua_gettop(L));
    lua_remove(L, -2);
}

/* The reader's metatable, the null value (in the registry), and into the
 * table at the top of the stack: yaml_limits (the defaults). */
void cc_yaml_init(lua_State *L)
{
    int i;
    if (luaL_newmetatable(L, READER_MT)) {
        lua_pushcfunction(L, reader_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, CC_YAML_NULL);
    if (lua_isnil(L, -1)) {
        lua_newtable(L);
        lua_setfield(L, LUA_REGISTRYINDEX, CC_YAML_NULL);
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, LIM_COUNT);
    for (i = 0; i < LIM_COUNT; i++) {
        lua_pushinteger(L, limit_defaults[i]);
        lua_setfield(L, -2, limit_names[i]);
    }
    lua_setfield(L, -2, "yaml_limits");
}
