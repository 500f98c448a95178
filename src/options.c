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
#define T_LIMIT (-3)          /* { requests = n, per = seconds } or a boolean */

enum {
    O_BASE_URL, O_TIMEOUT, O_CONNECT_TIMEOUT, O_RETRIES, O_USER_AGENT, O_PROXY,
    O_CA_FILE, O_VERIFY_TLS, O_MAX_BYTES, O_RATE_LIMIT, O_KEY, O_TOKEN, O_PRODUCT, O_INSTANCE,
    O_PLAYGROUND, O_MODEL_ID, O_POLICY, O_RESET_AT, O_METHOD, O_PATH, O_BODY, O_COUNT
};

static const struct optdef {
    const char *name;
    int type;
    unsigned bit;        /* 0: every endpoint takes it */
} optdefs[O_COUNT] = {
    { "base_url", T_STR, 0 },
    { "timeout", T_NUM, 0 },
    { "connect_timeout", T_NUM, 0 },
    { "retries", T_NUM, 0 },
    { "user_agent", T_STR, 0 },
    { "proxy", T_STR, 0 },
    { "ca_file", T_STR, 0 },
    { "verify_tls", T_BOOL, 0 },
    { "max_response_bytes", T_NUM, 0 },
    { "rate_limit", T_LIMIT, 0 },
    { "key", T_STR, OPT_KEY },
    { "token", T_STR, OPT_TOKEN },
    { "product", T_STR, OPT_PRODUCT },
    { "instance", T_STR, OPT_INSTANCE },
    { "playground", T_BOOL, OPT_PLAYGROUND },
    { "model_id", T_STR, OPT_MODEL_ID },
    { "policy", T_STR, OPT_POLICY },
    { "reset_at", T_STR_OR_NUM, OPT_RESET_AT },
    { "method", T_STR, OPT_REQUEST },
    { "path", T_STR, OPT_REQUEST },
    { "body", LUA_TTABLE, OPT_REQUEST },
};

typedef struct slot {
    int set;
    const char *s;
    size_t len;
    double n, per;      /* per: rate_limit's second number */
    int b, table;       /* table: rate_limit was given as a table */
} slot;

static const char *type_name(lua_State *L, int type)
{
    return type == T_STR_OR_NUM ? "string or number"
         : type == T_LIMIT      ? "table or boolean"
                                : lua_typename(L, type);
}

static const char *user_agent_default(void)
{
    static char ua[96];
    if (!ua[0]) {
        const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
        snprintf(ua, sizeof ua, "cachectl/%s libcurl/%s", CC_VERSION, v->version);
    }
    return ua;
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
        else lua_pushstring(L, lua_typename(L, optdefs[i].type));
        lua_setfield(L, -2, optdefs[i].name);
    }
}

/* rate_limit = { requests = n, per = seconds }: both numbers, nothing else. */
static void read_limit(lua_State *L, const cc_endpoint *ep, slot *v)
{
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
        if (strcmp(k, "requests") != 0 && strcmp(k, "per") != 0)
            luaL_error(L, "%s.%s: option 'rate_limit' takes only 'requests' and 'per'", ep->service,
                       ep->name);
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "%s.%s: option 'rate_limit.%s' must be a number, got %s", ep->service,
                       ep->name, k, luaL_typename(L, -1));
        if (k[0] == 'r') v->n = lua_tonumber(L, -1);
        else v->per = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    v->b = v->table = 1;
}

static void read_slots(lua_State *L, int idx, const cc_endpoint *ep, slot *v)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *name;
        int i, t = lua_type(L, -1);
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "%s.%s: option names must be strings, got %s", ep->service, ep->name,
                       luaL_typename(L, -2));
        name = lua_tostring(L, -2);
        for (i = 0; i < O_COUNT; i++)
            if (name[0] == optdefs[i].name[0] && strcmp(name, optdefs[i].name) == 0 &&
                (!optdefs[i].bit || (ep->opts & optdefs[i].bit)))
                break;
        if (i == O_COUNT)
            luaL_error(L, "%s.%s: unknown option '%s'", ep->service, ep->name, name);
        if (t != optdefs[i].type &&
            !(optdefs[i].type == T_STR_OR_NUM && (t == T_STR || t == T_NUM)) &&
            !(optdefs[i].type == T_LIMIT && (t == LUA_TTABLE || t == T_BOOL)))
            luaL_error(L, "%s.%s: option '%s' must be a %s, got %s", ep->service, ep->name, name,
                       type_name(L, optdefs[i].type), luaL_typename(L, -1));
        v[i].set = 1;
        if (t == T_STR) v[i].s = lua_tolstring(L, -1, &v[i].len);
        else if (t == T_NUM) v[i].n = lua_tonumber(L, -1);
        else if (i == O_RATE_LIMIT && t == LUA_TTABLE) read_limit(L, ep, &v[i]);
        else v[i].b = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    if (v[O_INSTANCE].set && v[O_BASE_URL].set)
        luaL_error(L, "%s.%s: give either 'instance' or 'base_url', not both", ep->service, ep->name);
    if (v[O_PLAYGROUND].set && v[O_BASE_URL].set)
        luaL_error(L, "%s.%s: 'playground' goes with 'instance', not with 'base_url'", ep->service,
                   ep->name);
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

/* Off with false; true or absent means the endpoint's default (Omni: 60 a
 * minute); a table needs both numbers > 0. */
static int check_limit(cc_req *r, const slot *v)
{
    double requests = r->ep->per_minute, per = 60;
    if (v->set && !v->b) requests = 0;
    else if (v->table) {
        if (!(v->n >= 1 && v->n <= 1e9 && v->per > 0 && v->per <= 1e9))
            return bad(r, "rate_limit", "must be { requests = n >= 1, per = seconds > 0 }");
        requests = v->n;
        per = v->per;
    }
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
    if (v[O_USER_AGENT].set && cc_has_ctl(v[O_USER_AGENT].s, v[O_USER_AGENT].len))
        return bad(r, "user_agent", "must not contain control characters");
    if (v[O_PROXY].set && cc_has_ctl(v[O_PROXY].s, v[O_PROXY].len))
        return bad(r, "proxy", "must not contain control characters");
    if (v[O_CA_FILE].set && (v[O_CA_FILE].len == 0 || strlen(v[O_CA_FILE].s) != v[O_CA_FILE].len))
        return bad(r, "ca_file", "must be a file path");
    r->timeout = v[O_TIMEOUT].set ? v[O_TIMEOUT].n : 30;
    r->connect_timeout = v[O_CONNECT_TIMEOUT].set ? v[O_CONNECT_TIMEOUT].n : 10;
    r->retries = v[O_RETRIES].set ? (long)v[O_RETRIES].n : 2;
    r->max_bytes = v[O_MAX_BYTES].set ? (curl_off_t)v[O_MAX_BYTES].n : 1024 * 1024;
    r->verify_tls = v[O_VERIFY_TLS].set ? v[O_VERIFY_TLS].b : 1;
    r->user_agent = v[O_USER_AGENT].set ? v[O_USER_AGENT].s : user_agent_default();
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
    if (!check_secret(r, ep->auth == AUTH_BEARER ? &v[O_TOKEN] : &v[O_KEY],
                      ep->auth == AUTH_BEARER ? "token" : "key"))
        return 0;
    if (v[O_PRODUCT].set && !cc_is_slug(v[O_PRODUCT].s, v[O_PRODUCT].len))
        return bad(r, "product", "must be made of a-z, 0-9 and '-'");
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
    r->retry_ok = ep->idempotent;
    return !(ep->opts & OPT_REQUEST) || check_request(r, v);
}

/* Expands the path template; every value was validated above, and the
 * policy alone needs encoding. */
static int build_url(cc_buf *b, const cc_req *r, const slot *v)
{
    const char *p = r->ep->path;
    if (v[O_BASE_URL].set) {
        size_t n = v[O_BASE_URL].len;
        while (n > 0 && v[O_BASE_URL].s[n - 1] == '/') n--;
        if (!cc_buf_add(b, v[O_BASE_URL].s, n)) return 0;
    } else if (r->ep->opts & OPT_INSTANCE) {
        if (!cc_buf_add(b, "https://", 8) ||
            !cc_buf_add(b, v[O_INSTANCE].s, v[O_INSTANCE].len))
            return 0;
        if (v[O_PLAYGROUND].b ? !cc_buf_add(b, ".playground.exploreomni.dev/api", 31)
                              : !cc_buf_add(b, ".omniapp.co/api", 15))
            return 0;
    } else if (!cc_buf_add(b, "https://modelslab.com/api", 25)) {
        return 0;
    }
    while (*p) {
        const char *brace = strchr(p, '{');
        size_t lit = brace ? (size_t)(brace - p) : strlen(p);
        int ok = 1;
        if (!cc_buf_add(b, p, lit)) return 0;
        if (!brace) break;
        if (strncmp(brace, "{product}", 9) == 0)
            ok = v[O_PRODUCT].set ? cc_buf_add(b, v[O_PRODUCT].s, v[O_PRODUCT].len)
                                  : cc_buf_add(b, "3d", 2);
        else if (strncmp(brace, "{model_id}", 10) == 0)
            ok = cc_buf_add(b, v[O_MODEL_ID].s, v[O_MODEL_ID].len);
        else if (strncmp(brace, "{policy}", 8) == 0)
            ok = cc_pct_encode(b, v[O_POLICY].s, v[O_POLICY].len);
        else if (strncmp(brace, "{path}", 6) == 0)
            ok = cc_buf_add(b, v[O_PATH].s, v[O_PATH].len);
        if (!ok) return 0;
        p = strchr(brace, '}') + 1;
    }
    return cc_buf_add(b, "", 1);
}

/* body = { ... } of client:request, as JSON text pushed on the stack; for
 * ModelsLab an object without 'key', which is added. Returns 0 when bad. */
static int encode_body(lua_State *L, int idx, cc_req *r, slot *v)
{
    if (!v[O_BODY].set) return 1;
    lua_getfield(L, idx, "body");
    if (r->ep->auth == AUTH_BODY_KEY) {
        lua_getfield(L, -1, "key");
        if (!lua_isnil(L, -1)) return bad(r, "body", "must not hold 'key': the client adds it");
        lua_pop(L, 1);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "cachectl.encode");
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_isstring(L, -1))
        return bad(r, "body", "cannot be encoded as JSON (functions, userdata or sparse arrays?)");
    v[O_BODY].s = lua_tolstring(L, -1, &v[O_BODY].len);
    if (r->ep->auth == AUTH_BODY_KEY && v[O_BODY].s[0] != '{')
        return bad(r, "body", "must be a JSON object (a table with string keys)");
    return 1;
}

static int build_body(cc_buf *b, const cc_req *r, const char *reset_at, const slot *body)
{
    if (r->ep->auth == AUTH_BODY_KEY) {
        if (!cc_buf_add(b, "{\"key\":", 7) || !cc_json_string(b, r->secret, r->secret_len))
            return 0;
        if (body->s && body->len > 2 && (!cc_buf_add(b, ",", 1) ||
                                           !cc_buf_add(b, body->s + 1, body->len - 2)))
            return 0;
        return cc_buf_add(b, "}", 1);
    }
    if (r->ep->opts & OPT_REQUEST)
        return !body->s || cc_buf_add(b, body->s, body->len);
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
    ok = build_url(&url, r, v) && build_body(&body, r, reset_at, &v[O_BODY]);
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
