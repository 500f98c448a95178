/* prepared.c — a call's options read and checked once: the request object
 * of core.prepare(service, call, opts), which the Lua layer asks for its
 * identity (coalescing) and then sends (session:call, session:batch), so an
 * options table is parsed once per call. The run takes what the object
 * holds: it is sent once. A kept one (core.prepare(..., true)) is never
 * used up: each run sends a copy (a client's call without options, bound
 * with session:bind, reads its options once for the client's life). */
#include <math.h>
#include <string.h>
#include "cachectl.h"
#include "digest.h"

#define REQ_MT "cachectl.request"

typedef struct prepared {
    const cc_endpoint *ep;
    cc_req req;
    int sent;
    int kept;           /* sent as copies, never used up */
} prepared;

static prepared *check_prepared(lua_State *L, int idx)
{
    prepared *p = luaL_checkudata(L, idx, REQ_MT);
    if (p->sent) luaL_error(L, "cachectl: this prepared request was sent already");
    return p;
}

int cc_identity(const cc_endpoint *ep, const cc_req *r, char hex[65])
{
    cc_digest *d = cc_digest_new();
    int ok = d != NULL && cc_digest_add(d, ep->service, strlen(ep->service) + 1) &&
             cc_digest_add(d, ep->name, strlen(ep->name) + 1) && cc_digest_add(d, r->secret, r->secret_len) &&
             cc_digest_add(d, "", 1) && cc_digest_add(d, r->url, strlen(r->url) + 1) &&
             cc_digest_add(d, r->body ? r->body : "", r->body ? r->body_len : 0);
    return d && cc_digest_hex(d, hex) && ok;
}

/* p = core.prepare(service, call, opts [, kept]), or nil, err (invalid);
 * raises on programming mistakes, like the call. */
int cc_prepare_l(lua_State *L)
{
    const cc_endpoint *ep = cc_endpoint_find(luaL_checkstring(L, 1), luaL_checkstring(L, 2));
    prepared *p;
    int kept;
    luaL_argcheck(L, ep != NULL, 2, "no such call");
    luaL_checktype(L, 3, LUA_TTABLE);
    kept = lua_toboolean(L, 4);
    lua_settop(L, 3);
    p = cc_newuserdata1(L, sizeof *p);       /* its user value: { on_event } */
    memset(p, 0, sizeof *p);
    p->sent = 1;                /* nothing to free until parsed */
    luaL_getmetatable(L, REQ_MT);
    lua_setmetatable(L, -2);
    p->ep = ep;
    p->kept = kept;
    if (!cc_req_parse(L, 3, ep, &p->req)) {
        lua_pushnil(L);
        cc_push_error(L, CC_INVALID, p->req.bad_msg, 0, NULL, -1, 0, p->req.bad_field, NULL);
        return 2;
    }
    p->sent = 0;
    lua_createtable(L, 1, 0);
    if (p->req.on_event) {      /* pushed by cc_req_parse, as read */
        lua_pushvalue(L, 5);
        lua_rawseti(L, -2, 1);
    }
    cc_setuservalue(L, 4);      /* traced with the object, never a root: a kept
                                   request's on_event may hold its client */
    lua_settop(L, 4);
    return 1;
}

/* p:identity() -> the SHA-256 of what makes two calls the same request */
static int identity_m(lua_State *L)
{
    prepared *p = check_prepared(L, 1);
    char hex[65];
    if (!cc_identity(p->ep, &p->req, hex)) return luaL_error(L, "cachectl: SHA-256 failed");
    lua_pushstring(L, hex);
    return 1;
}

/* p:timeout(seconds) -> p: what is left of the call's timeout (a
 * coalescing wait came first) */
static int timeout_m(lua_State *L)
{
    prepared *p = check_prepared(L, 1);
    double t = luaL_checknumber(L, 2);
    luaL_argcheck(L, t > 0 && t <= 1e6, 2, "a number of seconds > 0");
    p->req.timeout = t;
    lua_settop(L, 1);
    return 1;
}

static int gc_m(lua_State *L)
{
    prepared *p = luaL_checkudata(L, 1, REQ_MT);
    if (!p->sent) cc_req_free(&p->req);
    p->sent = 1;
    return 0;
}

int cc_prepared_take(lua_State *L, int idx, const cc_endpoint *ep, cc_req *out)
{
    prepared *p;
    if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx)) return 0;
    luaL_getmetatable(L, REQ_MT);
    if (!lua_rawequal(L, -1, -2)) {
        lua_pop(L, 2);
        return 0;
    }
    lua_pop(L, 2);
    p = check_prepared(L, idx);
    if (p->ep != ep)
        luaL_error(L, "cachectl: a request prepared for %s.%s sent as %s.%s", p->ep->service, p->ep->name,
                   ep->service, ep->name);
    if (!p->kept) {
        *out = p->req;
        memset(&p->req, 0, sizeof p->req);
        p->sent = 1;
    } else if (!cc_req_copy(&p->req, out)) {
        luaL_error(L, "not enough memory");
    }
    cc_getuservalue(L, idx);
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    if (lua_type(L, -1) == LUA_TFUNCTION) return 2;
    lua_pop(L, 1);
    return 1;
}

void cc_prepared_init(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "identity", identity_m }, { "timeout", timeout_m }, { NULL, NULL }
    };
    luaL_newmetatable(L, REQ_MT);
    lua_pushcfunction(L, gc_m);
    lua_setfield(L, -2, "__gc");
    lua_newtable(L);
    cc_setfuncs(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}
