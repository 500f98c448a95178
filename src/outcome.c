/* outcome.c — a coalesced call's outcome as cachectl.fleet stores it in
 * Redis, read back by the waiters exactly as the first caller had it:
 * core.outcome_encode and core.outcome_decode.
 *
 * The text is JSON written and read by the core's lua-cjson, which writes
 * numbers with 14 significant digits and without a point when integral: a
 * number it would change, and under Lua 5.3+ every integer and integral
 * float (whose subtype the text would not tell), travels as a tagged string,
 * "\0n:" and its digits (a float's with a point or an exponent), and a
 * string that begins with "\0" gets "\0s:" in front. Reading undoes both,
 * so a waiter gets each number as the first caller had it: a float the
 * core decoded from a service's answer stays a float, -0.0 included. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cachectl.h"

#define NUM "\0n:"
#define STR "\0s:"
#define TAG 3           /* the length of either */

/* Replaces the value on the stack top by leaf's (which replaces the value
 * at its index, or leaves it); a table (ours: a copy) in place, at any depth. */
static void walk(lua_State *L, void (*leaf)(lua_State *, int))
{
    int t = lua_gettop(L);
    luaL_checkstack(L, 4, "cachectl.core: an outcome");
    if (lua_type(L, t) != LUA_TTABLE) {
        leaf(L, t);
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, t)) {
        walk(L, leaf);
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, t);           /* an existing key: the traversal goes on */
    }
}

/* Whether cjson writes the number at t as text that reads back the same
 * number of the same subtype: a float that is not integral and survives 14
 * significant digits (under Lua 5.1 and LuaJIT, any number that does). True
 * for NaN and the infinities, which it refuses (the outcome is then not
 * stored). */
static int plain(lua_State *L, int t)
{
    char s[32];
    double d = (double)lua_tonumber(L, t);
    if (d != d || isinf(d)) return 1;
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, t) || d == floor(d)) return 0;
#endif
    snprintf(s, sizeof s, "%.14g", d);
    return strtod(s, NULL) == d;
}

/* A number that is not plain -> NUM and its exact digits (a float's with a
 * point or an exponent, so that it reads back a float); a string beginning
 * with "\0" -> STR and the string. */
static void tag(lua_State *L, int t)
{
    char s[48] = NUM;
    size_t n = 0;
    if (lua_type(L, t) == LUA_TNUMBER && !plain(L, t)) {
        if (cc_isinteger(L, t)) {
            snprintf(s + TAG, sizeof s - TAG, "%lld", (long long)lua_tointeger(L, t));
        } else {
            snprintf(s + TAG, sizeof s - TAG, "%.17g", (double)lua_tonumber(L, t));
            if (!strpbrk(s + TAG, ".e")) strcat(s + TAG, ".0");
        }
        lua_pushlstring(L, s, TAG + strlen(s + TAG));
        lua_replace(L, t);
    } else if (lua_type(L, t) == LUA_TSTRING && lua_tolstring(L, t, &n)[0] == '\0' && n > 0) {
        lua_pushlstring(L, STR, TAG);
        lua_pushvalue(L, t);
        lua_concat(L, 2);
        lua_replace(L, t);
    }
}

/* tag undone: plain numbers are cjson's as they are. */
static void untag(lua_State *L, int t)
{
    size_t n = 0;
    const char *s = lua_type(L, t) == LUA_TSTRING ? lua_tolstring(L, t, &n) : "";
    int pushed = 0;
    if (n >= TAG && memcmp(s, STR, TAG) == 0) {
        lua_pushlstring(L, s + TAG, n - TAG);
        pushed = 1;
    } else if (n >= TAG && memcmp(s, NUM, TAG) == 0) {
        pushed = cc_pushnumber_of(L, s + TAG, n - TAG);
    }
    if (pushed) lua_replace(L, t);
}

/* untag, and in an error an integral float an integer (Lua 5.3+): what a
 * plain JSON writer (another version) stored reads as cjson's floats, and
 * an error's numbers are counts (status, attempts); a first caller's own
 * numbers are tagged, subtype and all. */
static void untag_err(lua_State *L, int t)
{
    if (lua_type(L, t) == LUA_TNUMBER && cc_pushinteger_of(L, t)) lua_replace(L, t);
    else untag(L, t);
}

/* encode(res, err, secrets, scrub) -> the text; raises where cjson cannot
 * write it (or scrub copy it) */
static int encode(lua_State *L)
{
    int i;
    lua_getfield(L, LUA_REGISTRYINDEX, "cachectl.encode");
    lua_createtable(L, 0, 2);
    for (i = 1; i <= 2; i++) {
        lua_pushvalue(L, 4);                    /* core.scrub: a copy, every form masked */
        lua_pushvalue(L, i);
        lua_pushvalue(L, 3);
        lua_pushboolean(L, 1);                  /* short ones too */
        lua_call(L, 3, 1);
        walk(L, tag);
        lua_setfield(L, -2, i == 1 ? "res" : "err");
    }
    lua_call(L, 1, 1);
    return 1;
}

/* core.outcome_encode(res, err [, secrets]) -> text | nil (upvalue: core.scrub) */
static int outcome_encode_l(lua_State *L)
{
    luaL_argcheck(L, lua_isnoneornil(L, 3) || lua_istable(L, 3), 3, "a list of secrets");
    lua_settop(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcfunction(L, encode);
    lua_insert(L, 1);
    if (lua_pcall(L, 4, 1, 0) != 0) lua_pushnil(L);
    return 1;
}

/* core.outcome_decode(text) -> { res = ..., err = ... } | nil (upvalue:
 * core.error, which makes a stored err an error of the module, its text on
 * one line). What a first caller stores and nothing else is an outcome: a
 * res that is a table, or else an err that is an error of cachectl for
 * which something was sent (attempts > 0); a res or err of another type
 * (JSON null included), or neither, is none. */
static int outcome_decode_l(lua_State *L)
{
    int i;
    luaL_checkstring(L, 1);
    lua_settop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, "cachectl.decode");
    lua_pushvalue(L, 1);
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_istable(L, 2)) return 0;
    lua_createtable(L, 0, 2);
    for (i = 0; i < 2; i++) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_getfield(L, 2, i == 0 ? "res" : "err");
        walk(L, i == 0 ? untag : untag_err);
        if (lua_istable(L, -1)) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, "coalesced");
            if (i == 1 && lua_pcall(L, 1, 1, 0) != 0) return 0;
        } else if (!lua_isnil(L, -1)) {
            return 0;
        }
        lua_setfield(L, 3, i == 0 ? "res" : "err");
        lua_settop(L, 3);
    }
    lua_getfield(L, 3, "res");
    lua_getfield(L, 3, "err");
    if (lua_isnil(L, -2)) {
        if (lua_isnil(L, -1)) return 0;
        lua_getfield(L, -1, "attempts");
        if (!(lua_tonumber(L, -1) > 0)) return 0;
    }
    lua_settop(L, 3);
    return 1;
}

void cc_outcome_init(lua_State *L)
{
    lua_getfield(L, -1, "scrub");
    lua_pushcclosure(L, outcome_encode_l, 1);
    lua_setfield(L, -2, "outcome_encode");
    lua_getfield(L, -1, "error");
    lua_pushcclosure(L, outcome_decode_l, 1);
    lua_setfield(L, -2, "outcome_decode");
}
