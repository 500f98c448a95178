/* compat.h — the only place that knows Lua versions apart. Lua 5.1 and
 * LuaJIT (5.1 ABI) lack a few calls of 5.2+; the shims are static and
 * prefixed, never redefinitions of public Lua API symbols. */
#ifndef CACHECTL_COMPAT_H
#define CACHECTL_COMPAT_H

#include <math.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM >= 502
#define cc_rawlen(L, i) lua_rawlen(L, (i))
#else
#define cc_rawlen(L, i) lua_objlen(L, (i))
#endif

#if LUA_VERSION_NUM >= 502
#define cc_setfuncs(L, l) luaL_setfuncs(L, (l), 0)
#else
static inline void cc_setfuncs(lua_State *L, const luaL_Reg *l)
{
    for (; l->name; l++) {
        lua_pushcfunction(L, l->func);
        lua_setfield(L, -2, l->name);
    }
}
#endif

#define cc_absindex(L, i) \
    ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)

/* Lua 5.1's lua_newuserdata has no user values; plain userdata suffices. */
#if LUA_VERSION_NUM >= 504
#define cc_newuserdata(L, sz) lua_newuserdatauv(L, (sz), 0)
#else
#define cc_newuserdata(L, sz) lua_newuserdata(L, (sz))
#endif

/* A userdata with one user value, which the collector traces (a table:
 * Lua 5.1 and LuaJIT give a userdata an environment table only). */
#if LUA_VERSION_NUM >= 504
#define cc_newuserdata1(L, sz) lua_newuserdatauv(L, (sz), 1)
#define cc_setuservalue(L, i) lua_setiuservalue(L, (i), 1)
#define cc_getuservalue(L, i) ((void)lua_getiuservalue(L, (i), 1))
#elif LUA_VERSION_NUM >= 502
#define cc_newuserdata1(L, sz) lua_newuserdata(L, (sz))
#define cc_setuservalue(L, i) lua_setuservalue(L, (i))
#define cc_getuservalue(L, i) ((void)lua_getuservalue(L, (i)))
#else
#define cc_newuserdata1(L, sz) lua_newuserdata(L, (sz))
#define cc_setuservalue(L, i) ((void)lua_setfenv(L, (i)))
#define cc_getuservalue(L, i) lua_getfenv(L, (i))
#endif

/* The state's main thread, whose hook the standalone interpreter sets on
 * SIGINT; Lua 5.1 and LuaJIT keep no reference to it (NULL). */
#if LUA_VERSION_NUM >= 502
static inline lua_State *cc_mainthread(lua_State *L)
{
    lua_State *main;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    main = lua_tothread(L, -1);
    lua_pop(L, 1);
    return main;
}
#else
#define cc_mainthread(L) ((lua_State *)NULL)
#endif

/* The function on top as bytecode stripped of debug information, given to
 * the writer: lua_dump strips from 5.3 on; LuaJIT's lua_dump never does, its
 * string.dump(f, true) does (Lua 5.1's ignores the flag). */
#if LUA_VERSION_NUM >= 503
#define cc_dump_stripped(L, w, d) lua_dump(L, (w), (d), 1)
#else
static inline int cc_dump_stripped(lua_State *L, lua_Writer w, void *d)
{
    const char *s;
    size_t n;
    int rc = 1;
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "dump");
    lua_pushvalue(L, -3);
    lua_pushboolean(L, 1);
    if (lua_pcall(L, 2, 1, 0) == 0 && (s = lua_tolstring(L, -1, &n)) != NULL) rc = w(L, s, n, d);
    lua_pop(L, 2);
    return rc;
}
#endif

/* Integers: Lua 5.3+ has them beside floats; Lua 5.1 and LuaJIT have
 * floats only. cc_pushinteger_of pushes the float at i as an integer when
 * it is integral and in range (math.tointeger) and returns 1, else returns
 * 0; cc_pushnumber_of pushes Lua's tonumber of the text s (n bytes, a NUL
 * after them) and returns 1, or returns 0. Nothing is pushed on 0. */
#if LUA_VERSION_NUM >= 503
#define cc_isinteger(L, i) lua_isinteger(L, (i))
static inline int cc_pushinteger_of(lua_State *L, int i)
{
    lua_Integer n;
    lua_Number d = lua_tonumber(L, i);
    if (lua_isinteger(L, i) || d != floor(d) || !lua_numbertointeger(d, &n)) return 0;
    lua_pushinteger(L, n);
    return 1;
}
static inline int cc_pushnumber_of(lua_State *L, const char *s, size_t n)
{
    return strlen(s) == n && lua_stringtonumber(L, s) == n + 1;
}
#else
#define cc_isinteger(L, i) 0
#define cc_pushinteger_of(L, i) 0
static inline int cc_pushnumber_of(lua_State *L, const char *s, size_t n)
{
    lua_pushlstring(L, s, n);
    if (!lua_isnumber(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pushnumber(L, lua_tonumber(L, -1));
    lua_remove(L, -2);
    return 1;
}
#endif

#endif
