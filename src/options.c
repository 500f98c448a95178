/* options.c — turns one options table into a validated request: option
 * names and types (mistakes raise), values (bad ones become an `invalid`
 * error), then the URL and the JSON body. Nothing is sent from here. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cachectl.h"

#define T_BOOL LUA_TBOOLEAN
#define T_NUM LUA_TNUMBER
#define T_STR LUA_TSTRING
#define T_STR_OR_NUM (-2)
#define T_LIMIT (-3)          /* { requests = n, per = seconds, ... } or a boolean */
#define T_STR_OR_FALSE (-4)   /* product: a slug, or false for none */
#define T_FUNC LUA_TFUNCTION
#define T_STR_OR_BOOL (-5)    /* thread_pool: a name, or true/false */

enum {
    O_BASE_URL, O_TIMEOUT, O_CONNECT_TIMEOUT, O_RETRIES, O_USER_AGENT, O_PROXY,
    O_CA_FILE, O_VERIFY_TLS, O_MAX_BYTES, O_RATE_LIMIT, O_KEY, O_TOKEN, O_PRODUCT, O_INSTANCE,
    O_PLAYGROUND, O_MODEL_ID, O_POLICY, O_RESET_AT, O_METHOD, O_PATH, O_BODY, O_ON_EVENT, O_DELAY,
    O_DEPLOY_TYPE, O_NAME, O_KIND, O_INCLUDE_DELETED, O_CURSOR, O_PAGE_SIZE, O_FILE_NAME, O_MODE,
    O_FULLY_RESOLVED, O_BRANCH_ID, O_COUNT
};

static const struct optdef {
    const char *name;
    int type;
    unsigned bit;        /* 0: every endpoint takes it */
    const char *query;   /* sent as this query parameter, or NULL */
} optdefs[O_COUNT] = {
    { "base_url", T_STR, 0, NULL },
    { "timeout", T_NUM, 0, NULL },
    { "connect_timeout", T_NUM, 0, NULL },
    { "retries", T_NUM, 0, NULL },
    { "user_agent", T_STR, 0, NULL },
    { "proxy", T_STR, 0, NULL },
    { "ca_file", T_STR, 0, NULL },
    { "verify_tls", T_BOOL, 0, NULL },
    { "max_response_bytes", T_NUM, 0, NULL },
    { "rate_limit", T_LIMIT, 0, NULL },
    { "key", T_STR, OPT_KEY, NULL },
    { "token", T_STR, OPT_TOKEN, NULL },
    { "product", T_STR_OR_FALSE, OPT_PRODUCT, NULL },
    { "instance", T_STR, OPT_INSTANCE, NULL },
    { "playground", T_BOOL, OPT_PLAYGROUND, NULL },
    { "model_id", T_STR, OPT_MODEL_ID, NULL },
    { "policy", T_STR, OPT_POLICY, NULL },
    { "reset_at", T_STR_OR_NUM, OPT_RESET_AT, NULL },
    { "method", T_STR, OPT_REQUEST, NULL },
    { "path", T_STR, OPT_REQUEST, NULL },
    { "body", LUA_TTABLE, OPT_REQUEST, NULL },
    { "on_event", T_FUNC, 0, NULL },
    { "delay", T_NUM, 0, NULL },
    { "deploy_type", T_STR, OPT_DEPLOY_TYPE, NULL },
    { "name", T_STR, OPT_LIST, "name" },
    { "kind", T_STR, OPT_LIST, "modelKind" },
    { "include_deleted", T_BOOL, OPT_LIST, "includeDeleted" },
    { "cursor", T_STR, OPT_LIST, "cursor" },
    { "page_size", T_NUM, OPT_LIST, "pageSize" },
    { "file_name", T_STR, OPT_YAML, "fileName" },
    { "mode", T_STR, OPT_YAML, "mode" },
    { "fully_resolved", T_BOOL, OPT_YAML, "fullyResolved" },
    { "branch_id", T_STR, OPT_YAML, "branchId" },
};

typedef struct slot {
    int set;
    const char *s;
    size_t len;
    double n, per;      /* per: rate_limit's second number */
    int b, table;       /* table: rate_limit was given as a table */
    int external;       /* rate_limit: kept in a shared dict or Redis */
} slot;

static const char *type_name(lua_State *L, int type)
{
    return type == T_STR_OR_NUM   ? "string or number"
         : type == T_LIMIT        ? "table or boolean"
         : type == T_STR_OR_FALSE ? "string or false"
         : type == T_STR_OR_BOOL  ? "string or boolean"
                                  : lua_typename(L, type);
}

/* { name = "string" | "number" | "boolean" | "string|number" } */
void cc_push_option_names(lua_State *L, const cc_endpoint *ep)
{
    int i;
    lua_newtable(L);
    for (i = 0; i < O_COUNT; i++) {
        if (optdefs[i].bit && !(ep->opts & optdefs[i].bit)) continue;
        if (optdefs[i].type == T_STR_OR_NUM) lua_pushliteral(L, "string|number");
        else if (optdefs[i].type == T_LIMIT) lua_pushliteral(L, "table|boolean");
        else if (optdefs[i].type == T_STR_OR_FALSE) lua_pushliteral(L, "string|boolean");
        else lua_pushstring(L, lua_typename(L, optdefs[i].type));
        lua_setfield(L, -2, optdefs[i].name);
    }
}

/* rate_limit = { requests = n, per = seconds, shared_dict = name, redis = URL,
 * redis_required = bool }. shared_dict and redis are the Lua layer's: it
 * takes the turn there, and the core keeps no window of its own. */
static void read_limit(lua_State *L, const cc_endpoint *ep, slot *v)
{
    static const struct { const char *name; int type; } fields[] = {
        { "requests", T_NUM }, { "per", T_NUM }, { "shared_dict", T_STR }, { "redis", T_STR },
        { "redis_required", T_BOOL }
    };
    v->n = v->per = -1;      /* not given */
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        size_t i;
        for (i = 0; i < 5 && strcmp(k, fields[i].name) != 0; i++) {}
        if (i == 5)
            luaL_error(L, "%s.%s: option 'rate_limit' takes only 'requests', 'per', 'shared_dict', "
                       "'redis' and 'redis_required'", ep->service, ep->name);
        if (lua_type(L, -1) != fields[i].type)
            luaL_error(L, "%s.%s: option 'rate_limit.%s' must be a %s, got %s", ep->service, ep->name,
                       k, lua_typename(L, fields[i].type), luaL_typename(L, -1));
        if (i == 0) v->n = lua_tonumber(L, -1);
        else if (i == 1) v->per = lua_tonumber(L, -1);
        else if (i == 2 || i == 3) v->external = 1;
        lua_pop(L, 1);
    }
    v->b = v->table = 1;
}

/* The options a client takes beyond its calls' own (the Lua layer's). */
static const struct optdef client_opts[] = {
    { "concurrency", T_NUM, 0, NULL },
    { "thread_pool", T_STR_OR_BOOL, 0, NULL },
    { "coalesce", T_NUM, 0, NULL },
    { "check_policy", T_BOOL, OPT_POLICY, NULL },
};
#define NCLIENT_OPTS (sizeof client_opts / sizeof client_opts[0])

static int type_ok(lua_State *L, int want, int t)
{
    return t == want || (want == T_STR_OR_NUM && (t == T_STR || t == T_NUM)) ||
           (want == T_LIMIT && (t == LUA_TTABLE || t == T_BOOL)) ||
           (want == T_STR_OR_BOOL && (t == T_STR || t == T_BOOL)) ||
           (want == T_STR_OR_FALSE && (t == T_STR || (t == T_BOOL && !lua_toboolean(L, -1))));
}

/* The definition of option `name` for an endpoint taking the `bits`
 * options (and, with client, a client's own), or NULL. */
static const struct optdef *find_opt(const char *name, unsigned bits, int client)
{
    size_t i;
    for (i = 0; i < O_COUNT; i++)
        if (name[0] == optdefs[i].name[0] && strcmp(name, optdefs[i].name) == 0)
            return !optdefs[i].bit || (bits & optdefs[i].bit) ? &optdefs[i] : NULL;
    for (i = 0; client && i < NCLIENT_OPTS; i++)
        if (strcmp(name, client_opts[i].name) == 0)
            return !client_opts[i].bit || (bits & client_opts[i].bit) ? &client_opts[i] : NULL;
    return NULL;
}

/* Raises on a name the endpoint does not take or a value of the wrong type
 * (key and value on the stack top); returns the option's definition. */
static const struct optdef *check_one(lua_State *L, const char *where, unsigned bits, int client)
{
    const struct optdef *d;
    const char *name;
    int t = lua_type(L, -1);
    if (lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "%s: option names must be strings, got %s", where, luaL_typename(L, -2));
    name = lua_tostring(L, -2);
    if (!(d = find_opt(name, bits, client)))
        luaL_error(L, "%s: unknown option '%s'", where, name);
    if (!type_ok(L, d->type, t))
        luaL_error(L, "%s: option '%s' must be a %s, got %s", where, name,
                   type_name(L, d->type), luaL_typename(L, -1));
    return d;
}

static void check_pairs(lua_State *L, const cc_endpoint *ep, const slot *v)
{
    if (v[O_INSTANCE].set && v[O_BASE_URL].set)
        luaL_error(L, "%s.%s: give either 'instance' or 'base_url', not both", ep->service, ep->name);
    if (v[O_PLAYGROUND].set && v[O_BASE_URL].set)
        luaL_error(L, "%s.%s: 'playground' goes with 'instance', not with 'base_url'", ep->service,
                   ep->name);
}

static void read_slots(lua_State *L, int idx, const cc_endpoint *ep, slot *v)
{
    char where[64];
    snprintf(where, sizeof where, "%s.%s", ep->service, ep->name);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int t = lua_type(L, -1);
        int i = (int)(check_one(L, where, ep->opts, 0) - optdefs);
        v[i].set = 1;
        if (t == T_STR) v[i].s = lua_tolstring(L, -1, &v[i].len);
        else if (t == T_NUM) v[i].n = lua_tonumber(L, -1);
        else if (i == O_RATE_LIMIT && t == LUA_TTABLE) read_limit(L, ep, &v[i]);
        else if (t == T_FUNC) v[i].b = 1;
        else v[i].b = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    check_pairs(L, ep, v);
}

/* core.check_options(service, opts [, call [, where]]): the checks of
 * read_slots for a client of the service (every option of its calls and its
 * own) or for one call; raises on a mistake, naming `where`. */
void cc_check_options(lua_State *L, const cc_service *svc, const cc_endpoint *ep, int idx,
                      const char *where)
{
    unsigned bits = 0;
    size_t i;
    slot v[O_COUNT];
    memset(v, 0, sizeof v);
    for (i = 0; i < cc_nendpoints; i++)
        if (ep ? &cc_endpoints[i] == ep : cc_endpoints[i].svc == svc) bits |= cc_endpoints[i].opts;
    idx = cc_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const struct optdef *d = check_one(L, where, bits, !ep);
        if (d >= optdefs && d < optdefs + O_COUNT) {
            v[d - optdefs].set = 1;
            if (d - optdefs == O_RATE_LIMIT && lua_istable(L, -1)) read_limit(L, ep ? ep : &cc_endpoints[0], &v[O_RATE_LIMIT]);
        }
        lua_pop(L, 1);
    }
    if (v[O_INSTANCE].set && v[O_BASE_URL].set)
        luaL_error(L, "%s: give either 'instance' or 'base_url', not both", where);
}

/* Records a bad value; the message names the option, never its value. */
static int bad(cc_req *r, const char *field, const char *why)
{
    r->bad_field = field;
    snprintf(r->bad_msg, sizeof r->bad_msg, "%s %s", field, why);
    return 0;
}

static int check_secret(cc_req *r, const slot *v, const char *field)
{
    if (!v->set) return bad(r, field, "is required");
    if (v->len == 0) return bad(r, field, "must not be empty");
    if (cc_has_ctl(v->s, v->len)) return bad(r, field, "must not contain control characters");
    r->secret = v->s;
    r->secret_len = v->len;
    return 1;
}

/* Off with false (or when kept in a shared dict or Redis); true or absent
 * means the service's default (Omni: 60 a minute); a table may change
 * either number, each > 0. */
static int check_limit(cc_req *r, const slot *v)
{
    double requests = r->ep->svc->limit_requests, per = r->ep->svc->limit_per;
    if (v->table) {
        if (v->n != -1) requests = v->n;
        if (v->per != -1) per = v->per;
        if (!(requests >= 1 && requests <= 100000 && requests == floor(requests) && per > 0 && per <= 1e9))
            return bad(r, "rate_limit", "must be { requests = 1 to 100000, per = seconds > 0 }");
        if (!r->ep->svc->limit_requests && (v->n == -1 || v->per == -1))
            return bad(r, "rate_limit", "needs both requests and per for this service");
    }
    if ((v->set && !v->b) || v->external) requests = 0;
    r->limit_requests = requests;
    r->limit_per = requests > 0 ? per : 0;
    return 1;
}

/* Parsing a URL with libcurl costs as much as a tenth of a call, and a
 * client sends the same base URL every time: the last good one of each
 * thread is remembered. */
static const char *check_base_url(const char *url, size_t n)
{
    static __thread char last_ok[512];
    static __thread size_t last_len;
    const char *why;
    if (n > 0 && n == last_len && n < sizeof last_ok && memcmp(url, last_ok, n) == 0) return NULL;
    why = cc_check_base_url(url, n);
    if (!why && n < sizeof last_ok) {
        memcpy(last_ok, url, n);
        last_len = n;
    }
    return why;
}

static int check_common(cc_req *r, slot *v)
{
    const char *why;
    if (v[O_BASE_URL].set && (why = check_base_url(v[O_BASE_URL].s, v[O_BASE_URL].len)))
        return bad(r, "base_url", why);
    if (v[O_TIMEOUT].set && !(v[O_TIMEOUT].n > 0))
        return bad(r, "timeout", "must be a number of seconds > 0");
    if (v[O_CONNECT_TIMEOUT].set && !(v[O_CONNECT_TIMEOUT].n > 0))
        return bad(r, "connect_timeout", "must be a number of seconds > 0");
    if (v[O_RETRIES].set && !(v[O_RETRIES].n >= 0 && v[O_RETRIES].n <= 100 &&
                              v[O_RETRIES].n == floor(v[O_RETRIES].n)))
        return bad(r, "retries", "must be a whole number from 0 to 100");
    if (v[O_MAX_BYTES].set && !(v[O_MAX_BYTES].n >= 1 && v[O_MAX_BYTES].n <= 1e15 &&
                                v[O_MAX_BYTES].n == floor(v[O_MAX_BYTES].n)))
        return bad(r, "max_response_bytes", "must be a whole number > 0");
    if (v[O_DELAY].set && !(v[O_DELAY].n >= 0 && v[O_DELAY].n <= 1e9))
        return bad(r, "delay", "must be a number of seconds >= 0");
    if (v[O_USER_AGENT].set && cc_has_ctl(v[O_USER_AGENT].s, v[O_USER_AGENT].len))
        return bad(r, "user_agent", "must not contain control characters");
    if (v[O_PROXY].set && cc_has_ctl(v[O_PROXY].s, v[O_PROXY].len))
        return bad(r, "proxy", "must not contain control characters");
    if (v[O_CA_FILE].set && (v[O_CA_FILE].len == 0 || strlen(v[O_CA_FILE].s) != v[O_CA_FILE].len))
        return bad(r, "ca_file", "must be a file path");
    r->timeout = v[O_TIMEOUT].set ? v[O_TIMEOUT].n : 30;
    r->connect_timeout = v[O_CONNECT_TIMEOUT].set ? v[O_CONNECT_TIMEOUT].n : 10;
    r->retries = v[O_RETRIES].set ? (long)v[O_RETRIES].n : 2;
    r->delay = v[O_DELAY].set ? v[O_DELAY].n : 0;
    r->max_bytes = v[O_MAX_BYTES].set ? (curl_off_t)v[O_MAX_BYTES].n : 1024 * 1024;
    r->verify_tls = v[O_VERIFY_TLS].set ? v[O_VERIFY_TLS].b : 1;
    r->user_agent = v[O_USER_AGENT].set ? v[O_USER_AGENT].s : NULL;
    r->proxy = v[O_PROXY].set ? v[O_PROXY].s : NULL;
    r->ca_file = v[O_CA_FILE].set ? v[O_CA_FILE].s : NULL;
    return check_limit(r, &v[O_RATE_LIMIT]);
}

static int check_reset_at(cc_req *r, const slot *v, char *out, size_t outsz)
{
    double t;
    if (v->s) {
        if (!cc_rfc3339(v->s, v->len, &t, out, outsz))
            return bad(r, "reset_at", "must be an RFC 3339 date-time such as 2026-11-22T08:00:00Z");
    } else {
        t = v->n;
        if (!cc_format_epoch(t, out, outsz))
            return bad(r, "reset_at", "must be epoch seconds from 0 to year 9999");
    }
    if (t > cc_now_epoch()) return bad(r, "reset_at", "must not lie in the future");
    return 1;
}

/* The query options of the Omni model list and model YAML calls. */
static int check_discovery(cc_req *r, const slot *v)
{
    static const char *const modes[] = { "combined", "extension", "staged", "merged", "history" };
    static const int text[] = { O_NAME, O_CURSOR, O_FILE_NAME };
    size_t i;
    for (i = 0; i < sizeof text / sizeof text[0]; i++)
        if (v[text[i]].set && (v[text[i]].len == 0 || cc_has_ctl(v[text[i]].s, v[text[i]].len)))
            return bad(r, optdefs[text[i]].name, "must be non-empty text without control characters");
    if (v[O_KIND].set && (v[O_KIND].len == 0 || v[O_KIND].len > 32 ||
                          strspn(v[O_KIND].s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") != v[O_KIND].len))
        return bad(r, "kind", "must be a model kind such as SHARED, SCHEMA or BRANCH");
    if (v[O_PAGE_SIZE].set && !(v[O_PAGE_SIZE].n >= 1 && v[O_PAGE_SIZE].n <= 1000 &&
                                v[O_PAGE_SIZE].n == floor(v[O_PAGE_SIZE].n)))
        return bad(r, "page_size", "must be a whole number from 1 to 1000");
    if (v[O_MODE].set) {
        for (i = 0; i < 5 && strcmp(v[O_MODE].s, modes[i]) != 0; i++) {}
        if (i == 5) return bad(r, "mode", "must be combined, extension, staged, merged or history");
    }
    if (v[O_BRANCH_ID].set && !cc_is_uuid(v[O_BRANCH_ID].s, v[O_BRANCH_ID].len))
        return bad(r, "branch_id", "must be a UUID (8-4-4-4-12 hex digits)");
    return 1;
}

/* A path the caller encoded: printable ASCII from '/', no fragment, no dot
 * segments. */
static int check_path(const char *p, size_t n)
{
    size_t i, seg = 1;
    if (n == 0 || p[0] != '/' || strlen(p) != n) return 0;
    for (i = 0; i <= n; i++) {
        if (i == n || p[i] == '/' || p[i] == '?') {
            size_t len = i - seg;
            if ((len == 1 && p[seg] == '.') || (len == 2 && p[seg] == '.' && p[seg + 1] == '.'))
                return 0;
            if (i < n && p[i] == '?') break;
            seg = i + 1;
        }
    }
    for (i = 0; i < n; i++)
        if ((unsigned char)p[i] <= ' ' || (unsigned char)p[i] >= 0x7f || p[i] == '#') return 0;
    return 1;
}

/* client:request(method, path, body): the method decides whether a retry is
 * safe; the body table is encoded by cjson here, on the Lua stack. */
static int check_request(cc_req *r, slot *v)
{
    static const char *const methods[] = { "GET", "POST", "PUT", "PATCH", "DELETE" };
    size_t i;
    if (!v[O_METHOD].set) return bad(r, "method", "is required");
    for (i = 0; i < 5 && strcmp(v[O_METHOD].s, methods[i]) != 0; i++) {}
    if (i == 5) return bad(r, "method", "must be one of GET, POST, PUT, PATCH, DELETE");
    r->method = methods[i];
    r->retry_ok = i != 1 && i != 3;      /* not POST, not PATCH */
    if (!v[O_PATH].set) return bad(r, "path", "is required");
    if (!check_path(v[O_PATH].s, v[O_PATH].len))
        return bad(r, "path", "must start with '/', be URL-encoded, without '#', '.' or '..' segments");
    return 1;
}

static int check_specific(cc_req *r, slot *v, char *reset_at, size_t sz)
{
    const cc_endpoint *ep = r->ep;
    if (!check_secret(r, ep->svc->auth == AUTH_BEARER ? &v[O_TOKEN] : &v[O_KEY], ep->svc->secret))
        return 0;
    if (v[O_PRODUCT].s && !cc_is_slug(v[O_PRODUCT].s, v[O_PRODUCT].len))
        return bad(r, "product", "must be 1-64 characters of a-z, 0-9, '_' and '-' (or false for none)");
    if (v[O_DEPLOY_TYPE].set && !cc_is_slug(v[O_DEPLOY_TYPE].s, v[O_DEPLOY_TYPE].len))
        return bad(r, "deploy_type", "must be 1-64 characters of a-z, 0-9, '_' and '-'");
    if (ep->opts & OPT_INSTANCE) {
        if (!v[O_INSTANCE].set && !v[O_BASE_URL].set)
            return bad(r, "instance", "or base_url is required");
        if (v[O_INSTANCE].set && !cc_is_dns_label(v[O_INSTANCE].s, v[O_INSTANCE].len))
            return bad(r, "instance", "must be a DNS label: 1-63 of a-z, 0-9, '-', not starting or ending with '-'");
    }
    if (ep->opts & OPT_MODEL_ID) {
        if (!v[O_MODEL_ID].set) return bad(r, "model_id", "is required");
        if (!cc_is_uuid(v[O_MODEL_ID].s, v[O_MODEL_ID].len))
            return bad(r, "model_id", "must be a UUID (8-4-4-4-12 hex digits)");
    }
    if (ep->opts & OPT_POLICY) {
        const slot *p = &v[O_POLICY];
        if (!p->set) return bad(r, "policy", "is required");
        if (p->len == 0) return bad(r, "policy", "must not be empty");
        if ((p->len == 1 && p->s[0] == '.') || (p->len == 2 && p->s[0] == '.' && p->s[1] == '.'))
            return bad(r, "policy", "must not be '.' or '..'");
    }
    reset_at[0] = '\0';
    if (v[O_RESET_AT].set && !check_reset_at(r, &v[O_RESET_AT], reset_at, sz)) return 0;
    if ((ep->opts & (OPT_LIST | OPT_YAML)) && !check_discovery(r, v)) return 0;
    r->retry_ok = ep->idempotent;
    if (ep->method && strcmp(ep->method, "POST") != 0) r->method = ep->method;
    return !(ep->opts & OPT_REQUEST) || check_request(r, v);
}

/* The service root: base_url, else the service's host for the instance,
 * else its default base URL. */
static int build_base(cc_buf *b, const cc_req *r, const slot *v)
{
    const cc_service *svc = r->ep->svc;
    const char *t, *at;
    if (v[O_BASE_URL].set) {
        size_t n = v[O_BASE_URL].len;
        while (n > 0 && v[O_BASE_URL].s[n - 1] == '/') n--;
        return cc_buf_add(b, v[O_BASE_URL].s, n);
    }
    if (!svc->host) return cc_buf_add(b, svc->base_url, strlen(svc->base_url));
    t = v[O_PLAYGROUND].b ? svc->playground_host : svc->host;
    at = strstr(t, "{instance}");
    return cc_buf_add(b, t, (size_t)(at - t)) &&
           cc_buf_add(b, v[O_INSTANCE].s, v[O_INSTANCE].len) &&
           cc_buf_add(b, at + 10, strlen(at + 10));
}

/* ?name=value&... for the options the endpoint sends as query parameters,
 * each value percent-encoded. */
static int build_query(cc_buf *b, const slot *v)
{
    int i, first = 1;
    for (i = 0; i < O_COUNT; i++) {
        char num[32];
        const char *val;
        size_t len;
        if (!optdefs[i].query || !v[i].set) continue;
        if (optdefs[i].type == T_BOOL) val = v[i].b ? "true" : "false";
        else if (optdefs[i].type == T_NUM) val = num, snprintf(num, sizeof num, "%.0f", v[i].n);
        else val = v[i].s;
        len = strlen(val);
        if (!cc_buf_add(b, first ? "?" : "&", 1) || !cc_buf_add(b, optdefs[i].query, strlen(optdefs[i].query)) ||
            !cc_buf_add(b, "=", 1) || !cc_pct_encode(b, val, optdefs[i].type == T_STR ? v[i].len : len))
            return 0;
        first = 0;
    }
    return 1;
}

/* Expands the path template; every value was validated above, and the
 * policy alone needs encoding. product = false drops its segment. */
static int build_url(cc_buf *b, const cc_req *r, const slot *v)
{
    const char *p = r->ep->path;
    if (!build_base(b, r, v)) return 0;
    while (*p) {
        const char *brace = strchr(p, '{');
        size_t lit = brace ? (size_t)(brace - p) : strlen(p);
        int ok = 1;
        if (!cc_buf_add(b, p, lit)) return 0;
        if (!brace) break;
        if (strncmp(brace, "{product}", 9) == 0) {
            const char *prod = v[O_PRODUCT].set ? v[O_PRODUCT].s : r->ep->svc->default_product;
            if (prod) ok = cc_buf_add(b, prod, v[O_PRODUCT].set ? v[O_PRODUCT].len : strlen(prod));
            else if (brace[9] == '/') brace++;      /* no product: no segment */
        } else if (strncmp(brace, "{model_id}", 10) == 0) {
            ok = cc_buf_add(b, v[O_MODEL_ID].s, v[O_MODEL_ID].len);
        } else if (strncmp(brace, "{policy}", 8) == 0) {
            ok = cc_pct_encode(b, v[O_POLICY].s, v[O_POLICY].len);
        } else if (strncmp(brace, "{path}", 6) == 0) {
            ok = cc_buf_add(b, v[O_PATH].s, v[O_PATH].len);
        }
        if (!ok) return 0;
        p = strchr(brace, '}') + 1;
    }
    return build_query(b, v) && cc_buf_add(b, "", 1);
}

/* body = { ... } of client:request, as JSON text pushed on the stack; for
 * ModelsLab an object without 'key', which is added. Returns 0 when bad. */
static int encode_body(lua_State *L, int idx, cc_req *r, slot *v)
{
    if (!v[O_BODY].set) return 1;
    lua_getfield(L, idx, "body");
    if (r->ep->svc->auth == AUTH_BODY_KEY) {
        lua_getfield(L, -1, "key");
        if (!lua_isnil(L, -1)) return bad(r, "body", "must not hold 'key': the client adds it");
        lua_pop(L, 1);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "cachectl.encode");
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_isstring(L, -1))
        return bad(r, "body", "cannot be encoded as JSON (functions, userdata or sparse arrays?)");
    v[O_BODY].s = lua_tolstring(L, -1, &v[O_BODY].len);
    if (r->ep->svc->auth == AUTH_BODY_KEY && v[O_BODY].s[0] != '{')
        return bad(r, "body", "must be a JSON object (a table with string keys)");
    return 1;
}

static int build_body(cc_buf *b, const cc_req *r, const char *reset_at, const slot *body,
                      const slot *deploy_type)
{
    if (r->ep->svc->auth == AUTH_BODY_KEY) {
        if (!cc_buf_add(b, "{\"key\":", 7) || !cc_json_string(b, r->secret, r->secret_len))
            return 0;
        if (deploy_type->set && (!cc_buf_add(b, ",\"deploy_type\":", 15) ||
                                 !cc_json_string(b, deploy_type->s, deploy_type->len)))
            return 0;
        if (body->s && body->len > 2 && (!cc_buf_add(b, ",", 1) ||
                                           !cc_buf_add(b, body->s + 1, body->len - 2)))
            return 0;
        return cc_buf_add(b, "}", 1);
    }
    if (r->ep->opts & OPT_REQUEST)
        return !body->s || cc_buf_add(b, body->s, body->len);
    if (r->method && strcmp(r->method, "GET") == 0) return 1;
    if (reset_at[0])
        return cc_buf_add(b, "{\"resetAt\":", 11) &&
               cc_json_string(b, reset_at, strlen(reset_at)) && cc_buf_add(b, "}", 1);
    return cc_buf_add(b, "{}", 2);
}

int cc_req_parse(lua_State *L, int idx, const cc_endpoint *ep, cc_req *r)
{
    slot v[O_COUNT];
    char reset_at[64];
    cc_buf url = { 0 }, body = { 0 };
    int top = lua_gettop(L), ok;
    memset(v, 0, sizeof v);
    memset(r, 0, sizeof *r);
    r->ep = ep;
    idx = cc_absindex(L, idx);
    read_slots(L, idx, ep, v);
    if (!check_common(r, v) || !check_specific(r, v, reset_at, sizeof reset_at) ||
        !encode_body(L, idx, r, v)) {
        lua_settop(L, top);
        return 0;
    }
    ok = build_url(&url, r, v) && build_body(&body, r, reset_at, &v[O_BODY], &v[O_DEPLOY_TYPE]);
    lua_settop(L, top);
    if (!ok) {
        cc_buf_free(&url);
        cc_buf_free(&body);
        luaL_error(L, "not enough memory");
    }
    if (r->limit_requests > 0)
        r->limit_key = cc_limit_key(ep->service, r->secret, r->secret_len, r->limit_requests,
                                    r->limit_per);
    r->url = url.data;
    r->body = body.data;
    r->body_len = body.len;
    return 1;
}

void cc_req_free(cc_req *r)
{
    if (r->body) memset(r->body, 0, r->body_len);   /* it may hold the key */
    free(r->body);
    free(r->url);
    r->body = r->url = NULL;
}
