/* options.c — reads one options table and checks it: option names and types
 * (mistakes raise), then values (a bad one becomes an `invalid` error that
 * names the option). Building the URL and body from the checked values is
 * request.c; nothing is sent from either. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "options.h"

const cc_optdef cc_optdefs[O_COUNT] = {
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

/* The options a client takes beyond its calls' own (the Lua layer's). */
static const cc_optdef client_opts[] = {
    { "concurrency", T_NUM, 0, NULL },
    { "thread_pool", T_STR_OR_BOOL, 0, NULL },
    { "coalesce", T_NUM, 0, NULL },
    { "check_policy", T_BOOL, OPT_POLICY, NULL },
};
#define NCLIENT_OPTS (sizeof client_opts / sizeof client_opts[0])

static const char *type_name(lua_State *L, int type)
{
    return type == T_STR_OR_NUM   ? "string or number"
         : type == T_LIMIT        ? "table or boolean"
         : type == T_STR_OR_FALSE ? "string or false"
         : type == T_STR_OR_BOOL  ? "string or boolean"
                                  : lua_typename(L, type);
}

/* The default User-Agent, built once for every thread. */
static pthread_once_t ua_once = PTHREAD_ONCE_INIT;
static char ua_default[96];

static void ua_build(void)
{
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    snprintf(ua_default, sizeof ua_default, "cachectl/%s libcurl/%s", CC_VERSION, v->version);
}

const char *cc_user_agent_default(void)
{
    pthread_once(&ua_once, ua_build);
    return ua_default;
}

/* { name = "string" | "number" | "boolean" | "string|number" } */
void cc_push_option_names(lua_State *L, const cc_endpoint *ep)
{
    int i, n = 0;
    for (i = 0; i < O_COUNT; i++) n += !cc_optdefs[i].bit || (ep->opts & cc_optdefs[i].bit);
    lua_createtable(L, 0, n);               /* sized once: no rehash per option */
    for (i = 0; i < O_COUNT; i++) {
        if (cc_optdefs[i].bit && !(ep->opts & cc_optdefs[i].bit)) continue;
        if (cc_optdefs[i].type == T_STR_OR_NUM) lua_pushliteral(L, "string|number");
        else if (cc_optdefs[i].type == T_LIMIT) lua_pushliteral(L, "table|boolean");
        else if (cc_optdefs[i].type == T_STR_OR_FALSE) lua_pushliteral(L, "string|boolean");
        else lua_pushstring(L, lua_typename(L, cc_optdefs[i].type));
        lua_setfield(L, -2, cc_optdefs[i].name);
    }
}

/* A whole number from lo to hi (never NaN or infinite with finite bounds). */
static int whole(double n, double lo, double hi)
{
    return n >= lo && n <= hi && n == floor(n);
}

/* The longest timeout (about 11.5 days): larger, infinite and NaN ones are
 * mistakes, not "forever". */
#define CC_MAX_SECONDS 1e6

/* ---- names and types: mistakes raise ----------------------------------- */

/* Where a mistake was made, for its message: a text, or an endpoint named
 * "service.name" only when a message is made (the common case never pays
 * for formatting it). */
typedef struct where { const char *text; const cc_endpoint *ep; } where;

static void fail(lua_State *L, const where *w, const char *msg)
{
    if (w->text) luaL_error(L, "%s: %s", w->text, msg);
    luaL_error(L, "%s.%s: %s", w->ep->service, w->ep->name, msg);
}

/* A number of rate_limit as read: -1 stands for "not given", so a -1 given
 * becomes another negative number (invalid all the same). */
static double given(double n)
{
    return n == -1 ? -2 : n;
}

/* rate_limit = { requests = n, per = seconds, shared_dict = name, redis = URL,
 * redis_required = bool } (the table on the stack top): where the engine
 * takes its turns (limiter.c). */
static void read_limit(lua_State *L, const where *w, cc_limit_opts *v)
{
    static const struct { const char *name; int type; } fields[] = {
        { "requests", T_NUM }, { "per", T_NUM }, { "shared_dict", T_STR }, { "redis", T_STR },
        { "redis_required", T_BOOL }
    };
    char msg[160];
    v->requests = v->per = -1;      /* not given */
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        size_t n = 0, i;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &n) : "";
        /* the whole name: "requests\0x" is no field */
        for (i = strlen(k) == n ? 0 : 5; i < 5 && strcmp(k, fields[i].name) != 0; i++) {}
        if (i == 5)
            fail(L, w, "option 'rate_limit' takes only 'requests', 'per', 'shared_dict', "
                       "'redis' and 'redis_required'");
        if (lua_type(L, -1) != fields[i].type) {
            snprintf(msg, sizeof msg, "option 'rate_limit.%s' must be a %s, got %s", k,
                     lua_typename(L, fields[i].type), luaL_typename(L, -1));
            fail(L, w, msg);
        }
        if (i == 0) v->requests = given(lua_tonumber(L, -1));
        else if (i == 1) v->per = given(lua_tonumber(L, -1));
        else if (i == 2) v->dict = lua_tolstring(L, -1, &v->dict_len);
        else if (i == 3) v->redis = lua_tolstring(L, -1, &v->redis_len);
        else v->required = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    v->table = 1;
}

static int type_ok(lua_State *L, int want, int t)
{
    return t == want || (want == T_STR_OR_NUM && (t == T_STR || t == T_NUM)) ||
           (want == T_LIMIT && (t == LUA_TTABLE || t == T_BOOL)) ||
           (want == T_STR_OR_BOOL && (t == T_STR || t == T_BOOL)) ||
           (want == T_STR_OR_FALSE && (t == T_STR || (t == T_BOOL && !lua_toboolean(L, -1))));
}

/* The definition of option `name` for an endpoint taking the `bits`
 * options (and, with client, a client's own), or NULL. *slot is its index
 * in cc_optdefs, or -1 for a client option. */
static const cc_optdef *find_opt(const char *name, unsigned bits, int client, int *slot)
{
    size_t i;
    *slot = -1;
    for (i = 0; i < O_COUNT; i++)
        if (name[0] == cc_optdefs[i].name[0] && strcmp(name, cc_optdefs[i].name) == 0) {
            *slot = (int)i;
            return !cc_optdefs[i].bit || (bits & cc_optdefs[i].bit) ? &cc_optdefs[i] : NULL;
        }
    for (i = 0; client && i < NCLIENT_OPTS; i++)
        if (strcmp(name, client_opts[i].name) == 0)
            return !client_opts[i].bit || (bits & client_opts[i].bit) ? &client_opts[i] : NULL;
    return NULL;
}

/* Raises on a name the endpoint does not take or a value of the wrong type
 * (key and value on the stack top); returns the option's slot index, or -1
 * for a client option. */
static int check_one(lua_State *L, const where *w, unsigned bits, int client)
{
    const cc_optdef *d;
    const char *name;
    char msg[200];
    size_t len;
    int slot;
    if (lua_type(L, -2) != LUA_TSTRING) {
        snprintf(msg, sizeof msg, "option names must be strings, got %s", luaL_typename(L, -2));
        fail(L, w, msg);
    }
    name = lua_tolstring(L, -2, &len);
    /* A name is matched whole: "token\0x" is no option. Taken as `token`, two
     * such names would fill one slot twice (and overrun cc_opts.given). */
    if (strlen(name) != len) {
        snprintf(msg, sizeof msg, "unknown option '%.120s\\0...' (a name with a NUL byte)", name);
        fail(L, w, msg);
    }
    if (!(d = find_opt(name, bits, client, &slot))) {
        snprintf(msg, sizeof msg, "unknown option '%.120s'", name);
        fail(L, w, msg);
    }
    if (!type_ok(L, d->type, lua_type(L, -1))) {
        snprintf(msg, sizeof msg, "option '%s' must be a %s, got %s", name, type_name(L, d->type),
                 luaL_typename(L, -1));
        fail(L, w, msg);
    }
    return slot;
}

/* Reads the value on the stack top into slot i of o (its type already
 * checked). */
static void read_value(lua_State *L, const where *w, int i, cc_opts *o)
{
    cc_slot *v = &o->v[i];
    int t = lua_type(L, -1);
    v->set = 1;
    if (t == T_STR) {
        v->s = lua_tolstring(L, -1, &v->len);
        v->too_long = v->len > CC_MAX_TEXT;
    } else if (t == T_NUM) {
        v->n = lua_tonumber(L, -1);
    } else if (i == O_RATE_LIMIT && t == LUA_TTABLE) {
        read_limit(L, w, &o->limit);
        v->b = 1;
    } else {
        v->b = t == T_FUNC || lua_toboolean(L, -1);
    }
}

void cc_opts_read(lua_State *L, int idx, const cc_endpoint *ep, cc_opts *o)
{
    cc_slot *v = o->v;
    where w = { NULL, NULL };
    w.ep = ep;
    memset(v, 0, sizeof o->v);
    memset(&o->limit, 0, sizeof o->limit);
    o->ngiven = o->query = 0;
    o->too_long = -1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int i = check_one(L, &w, ep->opts, 0);     /* never a client option: >= 0 */
        read_value(L, &w, i, o);
        o->given[o->ngiven++] = i;
        if (v[i].too_long && (o->too_long < 0 || i < o->too_long)) o->too_long = i;
        o->query |= cc_optdefs[i].query != NULL;
        lua_pop(L, 1);
    }
    if (v[O_INSTANCE].set && v[O_BASE_URL].set)
        fail(L, &w, "give either 'instance' or 'base_url', not both");
    if (v[O_PLAYGROUND].set && v[O_BASE_URL].set)
        fail(L, &w, "'playground' goes with 'instance', not with 'base_url'");
}

/* The ranges of a client's own numbers (key and value on the stack top): a
 * concurrency is any whole number >= 1; a coalesce window over 1000000 s
 * (infinity included) raises here, while the Lua layer makes a negative or
 * NaN one `invalid`. */
static void check_client_number(lua_State *L, const where *w)
{
    const char *name = lua_tostring(L, -2);
    double n = lua_tonumber(L, -1);
    if (strcmp(name, "concurrency") == 0 && !whole(n, 1, DBL_MAX))
        fail(L, w, "option 'concurrency' must be a whole number >= 1");
    if (strcmp(name, "coalesce") == 0 && n > CC_MAX_SECONDS)
        fail(L, w, "option 'coalesce' must be a number of seconds >= 0 and at most 1000000");
}

/* core.check_options(service, opts [, call [, where]]): the checks of
 * cc_opts_read for a client of the service (every option of its calls and
 * its own) or for one call; raises on a mistake, naming `where`. */
void cc_check_options(lua_State *L, const cc_service *svc, const cc_endpoint *ep, int idx,
                      const char *where_text)
{
    unsigned bits = 0;
    size_t i;
    cc_limit_opts limit;
    int instance = 0, base_url = 0;
    where w = { NULL, NULL };
    w.text = where_text;
    memset(&limit, 0, sizeof limit);
    for (i = 0; i < cc_nendpoints; i++)
        if (ep ? &cc_endpoints[i] == ep : cc_endpoints[i].svc == svc) bits |= cc_endpoints[i].opts;
    idx = cc_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int slot = check_one(L, &w, bits, !ep);
        instance |= slot == O_INSTANCE;
        base_url |= slot == O_BASE_URL;
        if (slot == O_RATE_LIMIT && lua_istable(L, -1)) read_limit(L, &w, &limit);
        if (slot < 0) check_client_number(L, &w);
        lua_pop(L, 1);
    }
    if (instance && base_url) fail(L, &w, "give either 'instance' or 'base_url', not both");
}

/* ---- values: bad ones become `invalid` --------------------------------- */

/* Records a bad value; the message names the option, never its value. */
static int bad(cc_req *r, const char *field, const char *why)
{
    r->bad_field = field;
    snprintf(r->bad_msg, sizeof r->bad_msg, "%s %s", field, why);
    return 0;
}

int cc_opts_bad(cc_req *r, const char *field, const char *why)
{
    return bad(r, field, why);
}

/* s (n bytes) is one of the count words of list. */
static int one_of(const char *s, size_t n, const char *const *list, size_t count)
{
    size_t i;
    for (i = 0; i < count; i++)
        if (strlen(list[i]) == n && memcmp(s, list[i], n) == 0) return (int)i;
    return -1;
}

static int check_secret(cc_req *r, const cc_slot *v, const char *field)
{
    if (!v->set) return bad(r, field, "is required");
    if (v->len == 0) return bad(r, field, "must not be empty");
    if (cc_has_ctl(v->s, v->len)) return bad(r, field, "must not contain control characters");
    r->secret = v->s;
    r->secret_len = v->len;
    return 1;
}

/* Off with false; true or absent means the service's default (Omni: 60 a
 * minute); a table may change either number, each > 0, and say where the
 * window is kept: the process (the default), Redis or an nginx shared dict. */
static int check_limit(cc_req *r, const cc_slot *given, const cc_limit_opts *v)
{
    const char *why;
    cc_redis_url url;
    double requests = r->ep->svc->limit_requests, per = r->ep->svc->limit_per;
    if (v->table) {
        if (v->requests != -1) requests = v->requests;
        if (v->per != -1) per = v->per;
        if (!(requests >= 1 && requests <= 100000 && requests == floor(requests) && per > 0 && per <= 1e9))
            return bad(r, "rate_limit", "must be { requests = 1 to 100000, whole, per = seconds > 0 up to 1e9 }");
        if (!r->ep->svc->limit_requests && (v->requests == -1 || v->per == -1))
            return bad(r, "rate_limit", "needs both requests and per for this service");
    }
    if (given->set && !given->b) requests = 0;
    r->limit_requests = requests;
    r->limit_per = requests > 0 ? per : 0;
    r->lim = requests <= 0 ? LIM_OFF : v->redis ? LIM_REDIS : v->dict ? LIM_DICT : LIM_PROCESS;
    if (v->redis && requests <= 0) return bad(r, "rate_limit", "redis needs a limit (requests and per)");
    if (v->redis && (why = cc_redis_url_parse(v->redis, v->redis_len, &url)) != NULL)
        return bad(r, "rate_limit", why);
    if (v->dict && (v->dict_len == 0 || v->dict_len > 200 || cc_has_ctl(v->dict, v->dict_len)))
        return bad(r, "rate_limit", "shared_dict must be the name of a lua_shared_dict");
    r->redis_url = v->redis;
    r->dict_name = v->dict;
    r->redis_required = v->required;
    return 1;
}

/* Parsing a URL with libcurl costs some 6,000 instructions, a sixteenth of
 * a whole call, and a client sends the same base URL every time: the last
 * few accepted ones are remembered, process-wide, under a mutex (every
 * thread may call). Only an exact byte match is a hit. */
#define MEMO_N 4
static struct { size_t len; char url[256]; } memo[MEMO_N];
static unsigned memo_next;
static pthread_mutex_t memo_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *check_base_url(const char *url, size_t n)
{
    const char *why;
    size_t i;
    int hit = 0;
    if (n == 0 || n >= sizeof memo[0].url) return cc_check_base_url(url, n);
    pthread_mutex_lock(&memo_lock);
    for (i = 0; i < MEMO_N && !hit; i++) hit = memo[i].len == n && memcmp(memo[i].url, url, n) == 0;
    pthread_mutex_unlock(&memo_lock);
    if (hit) return NULL;
    if ((why = cc_check_base_url(url, n)) == NULL) {
        pthread_mutex_lock(&memo_lock);
        memcpy(memo[memo_next].url, url, n);
        memo[memo_next].len = n;
        memo_next = (memo_next + 1) % MEMO_N;
        pthread_mutex_unlock(&memo_lock);
    }
    return why;
}

/* A proxy URL libcurl takes, with a scheme named (never its guess). */
static int proxy_ok(const char *s, size_t n)
{
    static const char *const schemes[] = { "http://", "https://", "socks5://", "socks5h://" };
    size_t i;
    if (strlen(s) != n || cc_has_ctl(s, n) || memchr(s, ' ', n)) return 0;
    for (i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
        size_t k = strlen(schemes[i]);
        if (n > k && strncasecmp(s, schemes[i], k) == 0) return 1;
    }
    return 0;
}

/* The numbers every call takes. */
static int check_numbers(cc_req *r, const cc_slot *v)
{
    if (v[O_TIMEOUT].set && !(v[O_TIMEOUT].n > 0 && v[O_TIMEOUT].n <= CC_MAX_SECONDS))
        return bad(r, "timeout", "must be a number of seconds > 0 and at most 1000000");
    if (v[O_CONNECT_TIMEOUT].set && !(v[O_CONNECT_TIMEOUT].n > 0 && v[O_CONNECT_TIMEOUT].n <= CC_MAX_SECONDS))
        return bad(r, "connect_timeout", "must be a number of seconds > 0 and at most 1000000");
    if (v[O_RETRIES].set && !whole(v[O_RETRIES].n, 0, 100))
        return bad(r, "retries", "must be a whole number from 0 to 100");
    if (v[O_MAX_BYTES].set && !whole(v[O_MAX_BYTES].n, 1, 1e15))
        return bad(r, "max_response_bytes", "must be a whole number > 0");
    r->timeout = v[O_TIMEOUT].set ? v[O_TIMEOUT].n : CC_DEFAULT_TIMEOUT;
    r->connect_timeout = v[O_CONNECT_TIMEOUT].set ? v[O_CONNECT_TIMEOUT].n : CC_DEFAULT_CONNECT_TIMEOUT;
    r->retries = v[O_RETRIES].set ? (long)v[O_RETRIES].n : CC_DEFAULT_RETRIES;
    r->max_bytes = v[O_MAX_BYTES].set ? (curl_off_t)v[O_MAX_BYTES].n : CC_DEFAULT_MAX_BYTES;
    r->verify_tls = v[O_VERIFY_TLS].set ? v[O_VERIFY_TLS].b : 1;
    return 1;
}

/* The texts every call takes; no text of any option over CC_MAX_TEXT. */
static int check_common(cc_req *r, const cc_opts *o)
{
    const cc_slot *v = o->v;
    const char *why;
    if (o->too_long >= 0) return bad(r, cc_optdefs[o->too_long].name, "is too long (over 64 KiB)");
    if (v[O_BASE_URL].set && (why = check_base_url(v[O_BASE_URL].s, v[O_BASE_URL].len)))
        return bad(r, "base_url", why);
    if (v[O_USER_AGENT].set && cc_has_ctl(v[O_USER_AGENT].s, v[O_USER_AGENT].len))
        return bad(r, "user_agent", "must not contain control characters");
    if (v[O_PROXY].set && !proxy_ok(v[O_PROXY].s, v[O_PROXY].len))
        return bad(r, "proxy", "must be an http://, https://, socks5:// or socks5h:// URL");
    if (v[O_CA_FILE].set && (v[O_CA_FILE].len == 0 || strlen(v[O_CA_FILE].s) != v[O_CA_FILE].len))
        return bad(r, "ca_file", "must be a file path");
    if (!check_numbers(r, v)) return 0;
    r->user_agent = v[O_USER_AGENT].set ? v[O_USER_AGENT].s : cc_user_agent_default();
    r->proxy = v[O_PROXY].set ? v[O_PROXY].s : NULL;
    r->ca_file = v[O_CA_FILE].set ? v[O_CA_FILE].s : NULL;
    return check_limit(r, &v[O_RATE_LIMIT], &o->limit);
}

static int check_reset_at(cc_req *r, const cc_slot *v, char *out, size_t outsz)
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
static int check_discovery(cc_req *r, const cc_slot *v)
{
    static const char *const modes[] = { "combined", "extension", "staged", "merged", "history" };
    static const int text[] = { O_NAME, O_CURSOR, O_FILE_NAME };
    size_t i;
    for (i = 0; i < sizeof text / sizeof text[0]; i++)
        if (v[text[i]].set && (v[text[i]].len == 0 || cc_has_ctl(v[text[i]].s, v[text[i]].len)))
            return bad(r, cc_optdefs[text[i]].name, "must be non-empty text without control characters");
    if (v[O_KIND].set && (v[O_KIND].len == 0 || v[O_KIND].len > 32 ||
                          strspn(v[O_KIND].s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") != v[O_KIND].len))
        return bad(r, "kind", "must be a model kind such as SHARED, SCHEMA or BRANCH");
    if (v[O_PAGE_SIZE].set && !whole(v[O_PAGE_SIZE].n, 1, 1000))
        return bad(r, "page_size", "must be a whole number from 1 to 1000");
    if (v[O_MODE].set && one_of(v[O_MODE].s, v[O_MODE].len, modes, 5) < 0)
        return bad(r, "mode", "must be combined, extension, staged, merged or history");
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
 * safe. */
static int check_request(cc_req *r, const cc_slot *v)
{
    static const char *const methods[] = { "GET", "POST", "PUT", "PATCH", "DELETE" };
    int i;
    if (!v[O_METHOD].set) return bad(r, "method", "is required");
    if ((i = one_of(v[O_METHOD].s, v[O_METHOD].len, methods, 5)) < 0)
        return bad(r, "method", "must be one of GET, POST, PUT, PATCH, DELETE");
    r->method = methods[i];
    r->retry_ok = i != 1 && i != 3;      /* not POST, not PATCH */
    if (!v[O_PATH].set) return bad(r, "path", "is required");
    if (!check_path(v[O_PATH].s, v[O_PATH].len))
        return bad(r, "path", "must start with '/', be URL-encoded, without '#', '.' or '..' segments");
    return 1;
}

/* Where the call is sent: instance, model and policy. */
static int check_target(cc_req *r, const cc_slot *v)
{
    const cc_endpoint *ep = r->ep;
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
        const cc_slot *p = &v[O_POLICY];
        if (!p->set) return bad(r, "policy", "is required");
        if (p->len == 0) return bad(r, "policy", "must not be empty");
        if ((p->len == 1 && p->s[0] == '.') || (p->len == 2 && p->s[0] == '.' && p->s[1] == '.'))
            return bad(r, "policy", "must not be '.' or '..'");
    }
    return 1;
}

static int check_specific(cc_req *r, const cc_slot *v, char *reset_at, size_t sz)
{
    const cc_endpoint *ep = r->ep;
    if (!check_secret(r, ep->svc->auth == AUTH_BEARER ? &v[O_TOKEN] : &v[O_KEY], ep->svc->secret))
        return 0;
    if (v[O_PRODUCT].s && !cc_is_slug(v[O_PRODUCT].s, v[O_PRODUCT].len))
        return bad(r, "product", "must be 1-64 characters of a-z, 0-9, '_' and '-' (or false for none)");
    if (v[O_DEPLOY_TYPE].set && !cc_is_slug(v[O_DEPLOY_TYPE].s, v[O_DEPLOY_TYPE].len))
        return bad(r, "deploy_type", "must be 1-64 characters of a-z, 0-9, '_' and '-'");
    if (!check_target(r, v)) return 0;
    reset_at[0] = '\0';
    if (v[O_RESET_AT].set && !check_reset_at(r, &v[O_RESET_AT], reset_at, sz)) return 0;
    if ((ep->opts & (OPT_LIST | OPT_YAML)) && !check_discovery(r, v)) return 0;
    r->retry_ok = ep->idempotent;
    if (ep->method && strcmp(ep->method, "POST") != 0) r->method = ep->method;
    return !(ep->opts & OPT_REQUEST) || check_request(r, v);
}

int cc_opts_check(cc_req *r, cc_opts *o, char *reset_at, size_t sz)
{
    return check_common(r, o) && check_specific(r, o->v, reset_at, sz);
}
