/* session.c — the session as Lua sees it (core.session(), call, batch,
 * close, the module's default session) and what it owns: a libcurl multi
 * handle, so calls on one session reuse connections, and a small pool of
 * idle easy handles kept set up between calls, their sockets close-on-exec.
 * The run loop is engine.c. */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "engine.h"

#define SESSION_MT "cachectl.session"

/* Frees what the session holds; idempotent. Never while a run is active:
 * the callers defer or refuse. */
void cc_session_close(cc_session *s)
{
    while (s->npool > 0) curl_easy_cleanup(s->pool[--s->npool].easy);
    curl_slist_free_all(s->headers);
    s->headers = s->headers_noua = NULL;
    curl_url_cleanup(s->url);
    free(s->url_text);
    s->url = NULL;
    s->url_text = NULL;
    if (s->multi) curl_multi_cleanup(s->multi);
    s->multi = NULL;
    s->close_pending = 0;
}

cc_session *cc_session_new(lua_State *L)
{
    cc_session *s = cc_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    luaL_getmetatable(L, SESSION_MT);
    lua_setmetatable(L, -2);
    s->rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)s;
    if (!s->rng) s->rng = 0x9e3779b97f4a7c15ULL;
    s->main = cc_mainthread(L);
    if (!(s->multi = curl_multi_init())) luaL_error(L, "cachectl: cannot create a libcurl multi handle");
    return s;
}

/* The module's own session, an upvalue of its functions: no type check. */
cc_session *cc_session_of(lua_State *L, int idx)
{
    cc_session *s = lua_touserdata(L, idx);
    if (!s->multi) luaL_error(L, "cachectl: session is closed");
    return s;
}

cc_session *cc_session_check(lua_State *L, int idx)
{
    cc_session *s = luaL_checkudata(L, idx, SESSION_MT);
    if (!s->multi) luaL_error(L, "cachectl: session is closed");
    return s;
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
    lua_pushfstring(L, "cachectl.session (%s)", s->multi ? "open" : "closed");
    return 1;
}

/* Every socket libcurl opens is close-on-exec, so a child process started
 * during or after a call (io.popen, os.execute) holds none of them. */
static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    int fd;
    (void)ud, (void)purpose;
#ifdef SOCK_CLOEXEC
    fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
#else
    fd = socket(a->family, a->socktype, a->protocol);
    if (fd >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
        close(fd);
        fd = -1;
    }
#endif
    return fd < 0 ? CURL_SOCKET_BAD : fd;
}

/* The options every request shares. Those that keep a credential safe
 * (only http and https, no redirects, TLS verification on) are checked:
 * returns the name of one libcurl refused, or NULL. */
static const char *shared_options(CURL *e)
{
#if LIBCURL_VERSION_NUM >= 0x075500
    if (curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK)
        return "CURLOPT_PROTOCOLS_STR";
#else
    if (curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) != CURLE_OK)
        return "CURLOPT_PROTOCOLS";
#endif
    if (curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK) return "CURLOPT_FOLLOWLOCATION";
    if (curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK) return "CURLOPT_SSL_VERIFYPEER";
    if (curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK) return "CURLOPT_SSL_VERIFYHOST";
    if (curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket) != CURLE_OK)
        return "CURLOPT_OPENSOCKETFUNCTION";
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, cc_on_body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, cc_on_header);
#if LIBCURL_VERSION_NUM >= 0x075000
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, cc_on_send);
#endif
    return NULL;
}

/* An easy handle with the options every request shares. A pooled handle
 * keeps them, and is reset only when its last request or this one is
 * sticky: most calls set just the handful of options that change. */
CURL *cc_easy_get(cc_session *s, int sticky, hstate *st, const char **refused)
{
    CURL *e = NULL;
    *refused = NULL;
    if (s->npool > 0) {
        pooled *p = &s->pool[--s->npool];
        e = p->easy;
        if (!p->sticky && !sticky) {
            *st = p->st;
            return e;
        }
        curl_easy_reset(e);
    } else if (!(e = curl_easy_init())) {
        return NULL;
    }
    memset(st, 0, sizeof *st);
    if ((*refused = shared_options(e)) != NULL) {
        curl_easy_cleanup(e);
        return NULL;
    }
    return e;
}

void cc_easy_put(cc_session *s, CURL *e, int sticky, const hstate *st)
{
    if (s->npool < POOL_MAX) {
        pooled *p = &s->pool[s->npool++];
        p->easy = e;
        p->sticky = sticky;
        p->st = *st;
    } else {
        curl_easy_cleanup(e);
    }
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
    luaL_checktype(L, 4, LUA_TTABLE);
    return cc_run(L, s, ep, 4, 1, 1);
}

/* items = session:batch(service, name, list_of_opts, concurrency), each item
 * { result = ..., err = ... } in input order. */
static int session_batch(lua_State *L)
{
    cc_session *s = cc_session_check(L, 1);
    const cc_endpoint *ep = endpoint_arg(L, 2);
    lua_Integer conc = luaL_optinteger(L, 5, 8);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_argcheck(L, conc >= 1, 5, "concurrency must be >= 1");
    return cc_run(L, s, ep, 4, 0, conc > 100000 ? 100000 : (int)conc);
}

static int session_new_l(lua_State *L)
{
    cc_session_new(L);
    return 1;
}

void cc_session_init(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "call", session_call }, { "batch", session_batch }, { "close", session_close_method }, { NULL, NULL }
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
