/* fuzz_common.c — see fuzz_common.h. */
#include <stdio.h>
#include <string.h>
#include <lualib.h>
#include "fuzz_common.h"

lua_State *fuzz_lua(void)
{
    static lua_State *L;
    if (L) return L;
    if (!(L = luaL_newstate())) abort();
    luaL_openlibs(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        fprintf(stderr, "fuzz: require 'cjson' failed: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_getfield(L, -1, "decode");
    CHECK(lua_isfunction(L, -1));
    lua_setfield(L, LUA_REGISTRYINDEX, "cachectl.decode");
    lua_pop(L, 1);
    cc_errors_init(L);
    CHECK(lua_gettop(L) == 0);
    return L;
}
