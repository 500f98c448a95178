/* request.c — one options table made into a request (cc_req): the checked
 * values of options.c, the URL (service root, path template, query) and the
 * JSON body.
 *
 * The request owns a copy of every string it uses, taken as soon as the
 * table is read and before any Lua code can run (cjson, a finalizer, an
 * event handler): such code may change the table or collect its strings
 * while the call runs, and the request still holds what the call started
 * with. The copies hold the credential, so they are wiped when freed. */
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include "options.h"
#include "digest.h"

/* Replaces every text of v by a copy in r->own (one block). */
static void own_copy(cc_req *r, size_t *at, const char **s, size_t len)
{
    if (!*s) return;
    memcpy(r->own + *at, *s, len);
    r->own[*at + len] = '\0';
    *s = r->own + *at;
    *at += len + 1;
}

static int own_strings(cc_req *r, cc_opts *o)
{
    cc_slot *v = o->v;
    size_t total = 0, at = 0;
    int k;
    for (k = 0; k < o->ngiven; k++) {
        cc_slot *t = &v[o->given[k]];
        if (t->too_long) t->s = NULL;     /* refused by the checks, never copied */
        if (t->s) total += t->len + 1;
    }
    if (o->limit.redis) total += o->limit.redis_len + 1;
    if (o->limit.dict) total += o->limit.dict_len + 1;
    if (total == 0) return 1;
    if (!(r->own = malloc(total))) return 0;
    r->own_len = total;
    for (k = 0; k < o->ngiven; k++) {
        cc_slot *t = &v[o->given[k]];
        if (!t->s) continue;
        memcpy(r->own + at, t->s, t->len);
        r->own[at + t->len] = '\0';
        t->s = r->own + at;
        at += t->len + 1;
    }
    own_copy(r, &at, &o->limit.redis, o->limit.redis_len);
    own_copy(r, &at, &o->limit.dict, o->limit.dict_len);
    return 1;
}

/* Pushes the value of option `name` (body, on_event) of the options at idx,
 * found with lua_next: no allocation, so no finalizer can change it before
 * it is held. */
static void hold_option(lua_State *L, int idx, const char *name)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), name) == 0) {
            lua_remove(L, -2);
            return;
        }
        lua_pop(L, 1);
    }
    lua_pushnil(L);     /* not reached: cc_opts_read saw it */
}

/* The body table at the top (client:request) as JSON text, left in its
 * place; for ModelsLab an object without 'key', which is added. cjson reads
 * the table raw, without metamethods, and so does the check for 'key'. */
static int encode_body(lua_State *L, cc_req *r, cc_slot *body)
{
    if (!body->set) return 1;
    if (r->ep->svc->auth == AUTH_BODY_KEY) {
        int has_key;
        lua_pushliteral(L, "key");
        lua_rawget(L, -2);
        has_key = !lua_isnil(L, -1);
        lua_pop(L, 1);
        if (has_key) return cc_opts_bad(r, "body", "must not hold 'key': the client adds it");
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "cachectl.encode");
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_isstring(L, -1))
        return cc_opts_bad(r, "body", "cannot be encoded as JSON (functions, userdata or sparse arrays?)");
    body->s = lua_tolstring(L, -1, &body->len);
    if (body->len > CC_MAX_BODY) return cc_opts_bad(r, "body", "is too large (over 1 MiB as JSON)");
    if (r->ep->svc->auth == AUTH_BODY_KEY && body->s[0] != '{')
        return cc_opts_bad(r, "body", "must be a JSON object (a table with string keys)");
    return 1;
}

/* The service root: base_url, else the service's host for the instance,
 * else its default base URL. */
static int build_base(cc_buf *b, const cc_req *r, const cc_slot *v)
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
 * each value percent-encoded, in the order of cc_optdefs. */
static int build_query(cc_buf *b, const cc_opts *o)
{
    const cc_slot *v = o->v;
    int i, first = 1;
    for (i = 0; o->query && i < O_COUNT; i++) {
        const cc_optdef *d = &cc_optdefs[i];
        char num[32];
        const char *val = v[i].s;
        size_t len = v[i].len;
        if (!d->query || !v[i].set) continue;
        if (d->type == T_BOOL) val = v[i].b ? "true" : "false";
        else if (d->type == T_NUM) val = num, snprintf(num, sizeof num, "%.0f", v[i].n);
        if (d->type != T_STR) len = strlen(val);
        if (!cc_buf_add(b, first ? "?" : "&", 1) || !cc_buf_add(b, d->query, strlen(d->query)) ||
            !cc_buf_add(b, "=", 1) || !cc_pct_encode(b, val, len))
            return 0;
        first = 0;
    }
    return 1;
}

/* Expands the path template; every value was checked, and the policy alone
 * needs encoding. product = false drops its segment. */
static int build_url(cc_buf *b, const cc_req *r, const cc_opts *o)
{
    const cc_slot *v = o->v;
    const char *p = r->ep->path;
    if (!build_base(b, r, v)) return 0;
    while (*p) {
        const char *brace = strchr(p, '{');
        size_t lit = brace ? (size_t)(brace - p) : strlen(p);
        int ok = 1, drop = 0;
        if (!cc_buf_add(b, p, lit)) return 0;
        if (!brace) break;
        if (strncmp(brace, "{product}", 9) == 0) {
            const char *prod = v[O_PRODUCT].set ? v[O_PRODUCT].s : r->ep->svc->default_product;
            if (prod) ok = cc_buf_add(b, prod, v[O_PRODUCT].set ? v[O_PRODUCT].len : strlen(prod));
            else drop = 1;                      /* no product: no segment, one '/' */
        } else if (strncmp(brace, "{model_id}", 10) == 0) {
            ok = cc_buf_add(b, v[O_MODEL_ID].s, v[O_MODEL_ID].len);
        } else if (strncmp(brace, "{policy}", 8) == 0) {
            ok = cc_pct_encode(b, v[O_POLICY].s, v[O_POLICY].len);
        } else if (strncmp(brace, "{path}", 6) == 0) {
            ok = cc_buf_add(b, v[O_PATH].s, v[O_PATH].len);
        }
        if (!ok) return 0;
        p = strchr(brace, '}') + 1;
        if (drop && *p == '/') p++;
    }
    return build_query(b, o) && cc_buf_add(b, "", 1);
}

static int build_body(cc_buf *b, const cc_req *r, const char *reset_at, const cc_slot *v)
{
    const cc_slot *body = &v[O_BODY], *deploy_type = &v[O_DEPLOY_TYPE];
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

/* The URL and the body into r; 0 when out of memory (r unchanged). */
static int build(cc_req *r, const cc_opts *o, const char *reset_at)
{
    cc_buf url = { 0 }, body = { 0 };
    if (!build_url(&url, r, o) || !build_body(&body, r, reset_at, o->v)) {
        cc_buf_free(&url);
        cc_wipe(body.data, body.len);     /* it may hold the key */
        cc_buf_free(&body);
        return 0;
    }
    r->url = url.data;
    r->body = body.data;
    r->body_len = body.len;
    return 1;
}

/* How many options tables were read into requests, process-wide (core.parsed). */
static unsigned long parsed;

unsigned long cc_req_parsed(void)
{
    return __atomic_load_n(&parsed, __ATOMIC_RELAXED);
}

int cc_req_parse(lua_State *L, int idx, const cc_endpoint *ep, cc_req *r)
{
    cc_opts o;
    char reset_at[64];
    int top = lua_gettop(L), ok, built;
    memset(r, 0, sizeof *r);
    r->ep = ep;
    idx = cc_absindex(L, idx);
    __atomic_fetch_add(&parsed, 1, __ATOMIC_RELAXED);
    cc_opts_read(L, idx, ep, &o);
    r->on_event = o.v[O_ON_EVENT].set;
    if (r->on_event) hold_option(L, idx, "on_event");    /* at top + 1, for the caller */
    if (o.v[O_BODY].set) hold_option(L, idx, "body");
    if (!own_strings(r, &o)) return luaL_error(L, "not enough memory");
    ok = cc_opts_check(r, &o, reset_at, sizeof reset_at) && encode_body(L, r, o.v + O_BODY);
    built = ok && build(r, &o, reset_at);
    lua_settop(L, top + r->on_event);     /* the body and its JSON text, used by build */
    if (ok && !built) {
        cc_req_free(r);
        return luaL_error(L, "not enough memory");
    }
    if (!ok) {
        cc_req_free(r);
        lua_settop(L, top);
        return 0;
    }
    if (r->limit_requests > 0)
        r->limit_key = cc_limit_key(ep->service, r->secret, r->secret_len, r->limit_requests,
                                    r->limit_per);
    if ((r->lim == LIM_REDIS || r->lim == LIM_DICT) && !cc_lim_name(r)) {
        cc_req_free(r);
        return luaL_error(L, "not enough memory");
    }
    return 1;
}

/* p moved from src's own texts to the same place in own (a static text,
 * such as the default User-Agent, stays). */
static const char *rebase(const char *p, const cc_req *src, char *own)
{
    uintptr_t at = (uintptr_t)p, lo = (uintptr_t)src->own;
    return p && src->own && at >= lo && at < lo + src->own_len ? own + (at - lo) : p;
}

static char *dup_bytes(const char *p, size_t n)
{
    char *d = p ? malloc(n ? n : 1) : NULL;
    if (d) memcpy(d, p, n);
    return d;
}

int cc_req_copy(const cc_req *src, cc_req *dst)
{
    *dst = *src;
    dst->own = dup_bytes(src->own, src->own_len);
    dst->url = src->url ? dup_bytes(src->url, strlen(src->url) + 1) : NULL;
    dst->body = dup_bytes(src->body, src->body_len);
    dst->lim_name = src->lim_name ? dup_bytes(src->lim_name, strlen(src->lim_name) + 1) : NULL;
    if ((src->own && !dst->own) || (src->url && !dst->url) || (src->body && !dst->body) ||
        (src->lim_name && !dst->lim_name)) {
        if (!dst->body) dst->body_len = 0;
        if (!dst->own) dst->own_len = 0;
        cc_req_free(dst);
        return 0;
    }
    dst->user_agent = rebase(src->user_agent, src, dst->own);
    dst->proxy = rebase(src->proxy, src, dst->own);
    dst->ca_file = rebase(src->ca_file, src, dst->own);
    dst->secret = rebase(src->secret, src, dst->own);
    dst->redis_url = rebase(src->redis_url, src, dst->own);
    dst->dict_name = rebase(src->dict_name, src, dst->own);
    dst->method = rebase(src->method, src, dst->own);
    return 1;
}

/* The name of the window in Redis and in a shared dict: the service, the
 * credential's SHA-256 (never the credential) and the limit. */
int cc_lim_name(cc_req *r)
{
    char hex[65], *name;
    cc_digest *d = cc_digest_new();
    size_t n;
    if (!d || !cc_digest_add(d, r->secret, r->secret_len) || !cc_digest_hex(d, hex)) return 0;
    n = strlen(r->ep->service) + 64 + 80;
    if (!(name = malloc(n))) return 0;
    snprintf(name, n, "cachectl:rl:%s:%s:%.15g:%.15g", r->ep->service, hex, r->limit_requests, r->limit_per);
    r->lim_name = name;
    return 1;
}

void cc_req_free(cc_req *r)
{
    cc_wipe(r->body, r->body_len);        /* it may hold the key */
    free(r->body);
    free(r->url);
    free(r->lim_name);
    r->lim_name = NULL;
    cc_wipe(r->own, r->own_len);          /* it holds the key or token */
    free(r->own);
    r->body = r->url = r->own = NULL;
    r->body_len = r->own_len = 0;
    r->secret = r->user_agent = r->proxy = r->ca_file = NULL;
    r->secret_len = 0;
}
