/* events.c — what a run tells its caller while it runs: the on_event
 * calls (attempt, wait, redis_fallback), each a table with the fields every
 * event has and a URL without the credential, and the interpreter's hooks
 * as seen between libcurl's calls (a signal handler's Ctrl-C). Never called
 * while libcurl is on the stack. */
#include <string.h>
#include "engine.h"

/* The hooks as they are now: a change while the loop waits is a signal
 * handler's (the standalone interpreter's Ctrl-C sets one). */
void cc_see_hooks(lua_State *L, run *r)
{
    lua_State *m = r->s->main;
    r->hooks.hook = lua_gethook(L);
    r->hooks.mask = lua_gethookmask(L);
    r->hooks.main_hook = m ? lua_gethook(m) : NULL;
    r->hooks.main_mask = m ? lua_gethookmask(m) : 0;
}

int cc_interrupted(lua_State *L, const run *r)
{
    lua_State *m = r->s->main;
    return lua_gethook(L) != r->hooks.hook || lua_gethookmask(L) != r->hooks.mask ||
           (m && (lua_gethook(m) != r->hooks.main_hook || lua_gethookmask(m) != r->hooks.main_mask));
}

/* An event table with the fields every event has. */
void cc_event_new(lua_State *L, const xfer *x, const char *type, int attempt)
{
    lua_createtable(L, 0, 9);
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
    lua_pushstring(L, x->req.ep->service);
    lua_setfield(L, -2, "service");
    lua_pushstring(L, x->req.ep->name);
    lua_setfield(L, -2, "call");
    lua_pushinteger(L, attempt);
    lua_setfield(L, -2, "attempt");
}

/* Calls the request's on_event with the event on top (popped). An error it
 * raises goes up through the run's lua_pcall: cc_run frees the run. */
void cc_emit(lua_State *L, run *r, const xfer *x)
{
    lua_rawgeti(L, r->events, (int)(x - r->x) + 1);
    lua_insert(L, -2);
    lua_call(L, 1, 0);
    cc_see_hooks(L, r);        /* a hook set by the function is not a signal */
}

/* The URL with the credential masked, like any text that might hold it
 * (a `request` path may). */
static void push_url(lua_State *L, const xfer *x)
{
    size_t n = strlen(x->req.url);
    char *t = cc_newuserdata(L, n + 1);       /* scratch the GC frees */
    memcpy(t, x->req.url, n + 1);
    lua_pushlstring(L, t, cc_scrub(t, n, x->req.secret, x->req.secret_len));
    lua_remove(L, -2);
}

/* { type = "attempt", method, url, status, kind (nil on success), ms } */
void cc_emit_attempt(lua_State *L, run *r, const xfer *x, const outcome *o, int ok, double now)
{
    if (!x->event) return;
    cc_event_new(L, x, "attempt", x->attempts);
    lua_pushstring(L, x->req.method ? x->req.method : "POST");
    lua_setfield(L, -2, "method");
    push_url(L, x);
    lua_setfield(L, -2, "url");
    if (o->status > 0) {
        lua_pushinteger(L, o->status);
        lua_setfield(L, -2, "status");
    }
    if (!ok) {
        lua_pushstring(L, cc_kind_names[o->kind]);
        lua_setfield(L, -2, "kind");
    }
    lua_pushnumber(L, (now - x->started) * 1000.0);
    lua_setfield(L, -2, "ms");
    cc_emit(L, r, x);
}

/* { type = "wait", wait = seconds, reason, attempt = the one that follows } */
void cc_emit_wait(lua_State *L, run *r, const xfer *x, double wait, const char *reason)
{
    if (!x->event) return;
    cc_event_new(L, x, "wait", x->attempts + 1);
    lua_pushnumber(L, wait);
    lua_setfield(L, -2, "wait");
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "reason");
    cc_emit(L, r, x);
}
