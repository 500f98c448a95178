/* session.c — the session as Lua sees it: core.session(), call, bind,
 * batch, close (deferred while a call runs), the module's default session;
 * what every call checks first (a fork since the last call, the handles
 * opened on the first, a collection when open sessions pile up). What a
 * session holds on the libcurl side is handles.c's; the run loop is
 * engine.c's. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include "engine.h"

#define SESSION_MT "cachectl.session"

static void seed(cc_session *s)
{
    s->rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)s;
    if (!s->rng) s->rng = 0x9e3779b97f4a7c15ULL;
}

/* A new session holds no libcurl handle (no descriptor) until its first
 * call. */
cc_session *cc_session_new(lua_State *L)
{
    cc_session *s = cc_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    luaL_getmetatable(L, SESSION_MT);
    lua_setmetatable(L, -2);
    seed(s);
    s->main = cc_mainthread(L);
    return s;
}

/* The module's own session, an upvalue of its functions: no type check. */
cc_session *cc_session_of(lua_State *L, int idx)
{
    cc_session *s = lua_touserdata(L, idx);
    if (s->closed) luaL_error(L, "cachectl: session is closed");
    return s;
}

cc_session *cc_session_check(lua_State *L, int idx)
{
    cc_session *s = luaL_checkudata(L, idx, SESSION_MT);
    if (s->closed) luaL_error(L, "cachectl: session is closed");
    return s;
}

/* ---- open sessions, process-wide ------------------------------------- */

/* A session dropped without close() keeps its descriptors (libcurl's
 * wakeup pair, its kept-alive connections) until the collector finalizes
 * it, and the collector sees a userdata of a few kilobytes: a loop making
 * sessions would run out of descriptors long before it ran out of memory.
 * So before a session opens its handles, once the sessions open in the
 * process (handles.c counts them) reach a limit, a full collection runs;
 * the next limit is the sessions still open after it plus a share of the
 * descriptor limit (ulimit -n / 16, from 8 to 256; an open session holds
 * about 3). */
static pthread_mutex_t limit_lock = PTHREAD_MUTEX_INITIALIZER;
static long open_limit;

static long headroom(void)
{
    struct rlimit rl;
    rlim_t n = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
    /* a session may hold its wakeup pair and POOL_MAX kept connections:
     * room for twice that per open session before the collector is asked */
    rlim_t each = 2 * (POOL_MAX + 2);
    return n == RLIM_INFINITY || n / each > 256 ? 256 : n / each < 4 ? 4 : (long)(n / each);
}

static void make_room(lua_State *L)
{
    long limit;
    pthread_mutex_lock(&limit_lock);
    if (!open_limit) open_limit = headroom();
    limit = open_limit;
    pthread_mutex_unlock(&limit_lock);
    if (cc_open_sessions() < limit) return;
    /* finalizes the dropped ones; twice: before Lua 5.2 a weak-keyed
     * table's values are marked like any (no ephemerons), so a dropped
     * client's session is reached once more and goes only in the next */
    lua_gc(L, LUA_GCCOLLECT, 0);
#if LUA_VERSION_NUM < 502
    lua_gc(L, LUA_GCCOLLECT, 0);
#endif
    pthread_mutex_lock(&limit_lock);
    open_limit = cc_open_sessions() + headroom();
    pthread_mutex_unlock(&limit_lock);
}

/* What every call does first, before anything of the run: a session used
 * in a process other than the one that opened its handles (fork) drops
 * them, untouched, and starts afresh; a session opens its handles on its
 * first call. (A session running a call is left as it is: cc_run refuses
 * a second.) */
static void session_ready(lua_State *L, cc_session *s)
{
    if (s->active) return;
    if (s->multi && s->pid != (long)getpid()) {
        cc_session_forget(s);
        seed(s);                          /* the child's own backoff jitter */
    }
    if (s->multi) return;
    if (!s->counted) {
        make_room(L);
        /* a finalizer run by the collection may have closed it */
        if (s->closed) luaL_error(L, "cachectl: session is closed");
    }
    if (!cc_session_open(s)) luaL_error(L, "cachectl: cannot create a libcurl multi handle");
}

/* __gc and __close: while a call runs on the session (the metamethod
 * called by Lua code inside that call), the close waits for its end. */
static int session_gc(lua_State *L)
{
    cc_session *s = luaL_checkudata(L, 1, SESSION_MT);
    if (s->active) s->close_pending = 1;
    else cc_session_close(s);
    return 0;
}

/* session:close(), refused while a call runs on it (from a finalizer). */
static int session_close_method(lua_State *L)
{
    cc_session *s = luaL_checkudata(L, 1, SESSION_MT);
    if (s->active) return luaL_error(L, "cachectl: cannot close a session while a call runs on it");
    cc_session_close(s);
    return 0;
}

static int session_tostring(lua_State *L)
{
    cc_session *s = luaL_checkudata(L, 1, SESSION_MT);
    lua_pushfstring(L, "cachectl.session (%s)", s->closed ? "closed" : "open");
    return 1;
}

/* ---- the session as seen from Lua ------------------------------------ */

static const cc_endpoint *endpoint_arg(lua_State *L, int i)
{
    const char *service = luaL_checkstring(L, i), *name = luaL_checkstring(L, i + 1);
    const cc_endpoint *ep = cc_endpoint_find(service, name);
    if (!ep) luaL_error(L, "cachectl: no endpoint %s.%s", service, name);
    return ep;
}

/* res, err = session:call(service, name, opts) */
static int session_call(lua_State *L)
{
    cc_session *s = cc_session_check(L, 1);
    const cc_endpoint *ep = endpoint_arg(L, 2);
    if (lua_type(L, 4) != LUA_TUSERDATA) luaL_checktype(L, 4, LUA_TTABLE);    /* or core.prepare's */
    session_ready(L, s);
    return cc_run(L, s, ep, 4, 1, 1);
}

/* res, err = f(opts): a call bound to a session (upvalue 1, checked when
 * bound) and an endpoint row (upvalue 2): core.<service>.<name> and the
 * functions of session:bind; with a kept request (upvalue 3), f() sends a
 * copy of it, whatever it is given. */
int cc_bound_call(lua_State *L)
{
    cc_session *s = cc_session_of(L, lua_upvalueindex(1));
    const cc_endpoint *ep = lua_touserdata(L, lua_upvalueindex(2));
    if (!lua_isnoneornil(L, lua_upvalueindex(3))) {
        lua_settop(L, 0);
        lua_pushvalue(L, lua_upvalueindex(3));
    } else if (lua_type(L, 1) != LUA_TTABLE)
        return luaL_error(L, "bad argument #1 to '%s.%s' (options table expected, got %s)",
                          ep->service, ep->name, luaL_typename(L, 1));
    lua_settop(L, 1);
    session_ready(L, s);
    return cc_run(L, s, ep, 1, 1, 1);
}

/* f = session:bind(service, name [, kept]): f(opts) is session:call(service,
 * name, opts) with the endpoint found once; with a kept request of that
 * call (core.prepare(service, name, opts, true)), f() sends a copy of it. */
static int session_bind(lua_State *L)
{
    const cc_endpoint *ep;
    cc_session_check(L, 1);
    ep = endpoint_arg(L, 2);
    lua_settop(L, 4);                       /* session, service, name, kept */
    lua_pushlightuserdata(L, (void *)ep);
    lua_replace(L, 2);
    lua_remove(L, 3);
    lua_pushcclosure(L, cc_bound_call, 3);
    return 1;
}

/* items = session:batch(service, name, list_of_opts, concurrency), each item
 * { result = ..., err = ... } in input order. Any whole concurrency >= 1
 * (over 100000 runs as 100000). */
static int session_batch(lua_State *L)
{
    cc_session *s = cc_session_check(L, 1);
    const cc_endpoint *ep = endpoint_arg(L, 2);
    lua_Number conc = luaL_optnumber(L, 5, 8);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_argcheck(L, conc >= 1 && conc <= DBL_MAX && conc == floor(conc), 5,
                  "concurrency must be a whole number >= 1");
    session_ready(L, s);
    return cc_run(L, s, ep, 4, 0, conc > 100000 ? 100000 : (int)conc);
}

/* ok, value = session:redis(url, budget, connect_timeout, cmd, ...): see redis.c */
static int session_redis(lua_State *L)
{
    return cc_redis_command(L, cc_session_check(L, 1));
}

static int session_new_l(lua_State *L)
{
    cc_session_new(L);
    return 1;
}

void cc_session_init(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "call", session_call }, { "bind", session_bind }, { "batch", session_batch },
        { "close", session_close_method }, { "redis", session_redis }, { NULL, NULL }
    };
    luaL_newmetatable(L, SESSION_MT);
    lua_pushcfunction(L, session_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, session_gc);
    lua_setfield(L, -2, "__close");      /* same: deferred while a call runs */
    lua_pushcfunction(L, session_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_newtable(L);
    cc_setfuncs(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, session_new_l);
    lua_setfield(L, -2, "session");
}
