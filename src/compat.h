/* compat.h — the only place that knows Lua versions apart. Lua 5.1 and
 * LuaJIT (5.1 ABI) lack a few calls of 5.2+; the shims are static and
 * prefixed, never redefinitions of public Lua API symbols. */
#ifndef CACHECTL_COMPAT_H
#define CACHECTL_COMPAT_H

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

#endif
