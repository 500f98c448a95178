/* limiter.c — the nginx shared dict's turns: a turn taken in a
 * `lua_shared_dict` through the dict's own methods, from whichever Lua VM
 * of nginx runs the call. The rule is ratelimit.c's (cc_ring_take), over
 * the dict's value; the key is the window's name (request.c), the same in
 * Redis. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "engine.h"

#define LOCK_TTL 0.1        /* seconds: a dead worker's lock frees itself */

/* The dict at index `dict` on the stack: ngx.shared[name] of the VM
 * running the call, pushed; nil when the VM is not nginx's (plain Lua: the
 * process window stands in); raises when nginx has no such dict. */
void cc_dict_find(lua_State *L, const cc_req *r)
{
#if LUA_VERSION_NUM >= 502
    lua_pushglobaltable(L);
#else
    lua_pushvalue(L, LUA_GLOBALSINDEX);
#endif
    lua_pushliteral(L, "ngx");
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (lua_istable(L, -1)) lua_getfield(L, -1, "shared");
    else lua_pushnil(L);
    lua_remove(L, -2);
    if (!lua_istable(L, -1)) return;        /* nil: not inside nginx */
    lua_getfield(L, -1, r->dict_name);
    lua_remove(L, -2);
    if (lua_isnil(L, -1))
        luaL_error(L, "cachectl: rate_limit.shared_dict '%s' is not defined: add 'lua_shared_dict %s 1m;' "
                      "to the http section of nginx.conf", r->dict_name, r->dict_name);
}

/* Pushes dict.method, dict, key: the call's arguments follow. */
static void dict_method(lua_State *L, int dict, const char *method, const char *key)
{
    lua_getfield(L, dict, method);
    lua_pushvalue(L, dict);
    lua_pushstring(L, key);
}

static void pause_ms(void)
{
    struct timespec ts = { 0, 1000000L };
    nanosleep(&ts, NULL);
}

/* Takes the dict's lock for key (dict:add succeeds for one caller while the
 * lock exists); 0 when it stayed taken past `until`. The lock is held for
 * microseconds: a few dict operations that never yield. */
static int lock(lua_State *L, int dict, const char *lockkey, double until)
{
    for (;;) {
        dict_method(L, dict, "add", lockkey);
        lua_pushboolean(L, 1);
        lua_pushnumber(L, LOCK_TTL);
        lua_call(L, 4, 2);
        if (lua_toboolean(L, -2)) {
            lua_pop(L, 2);
            return 1;
        }
        if (!lua_isstring(L, -1) || strcmp(lua_tostring(L, -1), "exists") != 0)
            luaL_error(L, "cachectl: rate_limit.shared_dict: %s", lua_tostring(L, -1));
        lua_pop(L, 2);
        if (cc_mono() >= until) return 0;
        pause_ms();
    }
}

/* The window of the dict's value: count, head, then n starts (doubles on
 * the monotonic clock, which every worker of the machine shares). */
static void ring_read(lua_State *L, double *w, size_t n)
{
    size_t len = 0;
    const char *s = lua_tolstring(L, -1, &len);
    if (s && len == (n + 2) * sizeof *w) memcpy(w, s, len);
    else memset(w, 0, (n + 2) * sizeof *w);
    if (!(w[0] >= 0 && w[0] <= (double)n && w[1] >= 0 && w[1] < (double)n)) w[0] = w[1] = 0;
    lua_pop(L, 1);
}

/* The ring of q's window, read into w (n + 2 doubles). */
static void dict_read(lua_State *L, int dict, const cc_req *q, double *w, size_t n)
{
    dict_method(L, dict, "get", q->lim_name);
    lua_call(L, 2, 1);
    ring_read(L, w, n);
}

void cc_dict_plan(lua_State *L, int dict, const cc_req *q, double now, size_t k, double *wait)
{
    size_t n = (size_t)q->limit_requests, count, head, i;
    double *w;
    dict = cc_absindex(L, dict);
    w = cc_newuserdata(L, (n + 2) * sizeof *w);
    dict_read(L, dict, q, w, n);
    count = (size_t)w[0], head = (size_t)w[1];
    for (i = 0; i < k; i++) cc_ring_take(w + 2, n, &count, &head, q->limit_per, now, HUGE_VAL, &wait[i]);
    lua_pop(L, 1);
}

/* A turn by the rule (note < 0), or a start at `note` recorded as it is
 * (one granted by Redis, so a fallback to the dict remembers it). */
static int dict_update(lua_State *L, int dict, const cc_req *q, double now, double budget, double *wait,
                       double note)
{
    size_t n = (size_t)q->limit_requests, count, head, keylen = strlen(q->lim_name);
    double *w;
    char *lockkey;
    int rc;
    dict = cc_absindex(L, dict);
    w = cc_newuserdata(L, (n + 2) * sizeof *w + keylen + 6);
    lockkey = (char *)(w + n + 2);
    memcpy(lockkey, q->lim_name, keylen);
    memcpy(lockkey + keylen, ":lock", 6);
    if (!lock(L, dict, lockkey, now + budget)) {
        lua_pop(L, 1);
        *wait = LOCK_TTL;
        return 0;
    }
    dict_method(L, dict, "get", q->lim_name);
    lua_call(L, 2, 1);
    ring_read(L, w, n);
    count = (size_t)w[0], head = (size_t)w[1];
    if (note >= 0) {
        if (count < n) w[2 + count++] = note;
        else w[2 + head] = note, head = (head + 1) % n;
        *wait = note - now;
        rc = 1;
    } else {
        rc = cc_ring_take(w + 2, n, &count, &head, q->limit_per, now, budget, wait);
    }
    if (rc) {
        w[0] = (double)count, w[1] = (double)head;
        dict_method(L, dict, "safe_set", q->lim_name);
        lua_pushlstring(L, (const char *)w, (n + 2) * sizeof *w);
        lua_pushnumber(L, (*wait > 0 ? *wait : 0) + q->limit_per + 1);
        lua_call(L, 4, 2);
        if (!lua_toboolean(L, -2)) {
            lua_pushfstring(L, "cachectl: rate_limit.shared_dict '%s': %s (make the lua_shared_dict larger)",
                            q->dict_name, lua_tostring(L, -1));
            dict_method(L, dict, "delete", lockkey);
            lua_call(L, 2, 0);
            lua_error(L);
        }
        lua_pop(L, 2);
    }
    dict_method(L, dict, "delete", lockkey);
    lua_call(L, 2, 0);
    lua_pop(L, 1);
    return rc;
}

int cc_dict_take(lua_State *L, int dict, const cc_req *q, double now, double budget, double *wait)
{
    return dict_update(L, dict, q, now, budget, wait, -1);
}

void cc_dict_note(lua_State *L, int dict, const cc_req *q, double now, double t)
{
    double wait;
    dict_update(L, dict, q, now, 1.0, &wait, t < 0 ? 0 : t);
}
