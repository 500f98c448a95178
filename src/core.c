/* core.c — the module entry point: luaopen_cachectl_core builds the tables
 * modelslab and omni from the endpoint table, each function a closure over
 * the module's default session and its endpoint row. */
#include <pthread.h>
#include <stdio.h>
#include "cachectl.h"

#if defined(__GNUC__)
#define CC_EXPORT __attribute__((visibility("default")))
#else
#define CC_EXPORT
#endif

CC_EXPORT int luaopen_cachectl_core(lua_State *L);

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* res, err = core.<service>.<name>(opts) */
static int call_endpoint(lua_State *L)
{
    cc_session *s = cc_session_check(L, lua_upvalueindex(1));
    const cc_endpoint *ep = lua_touserdata(L, lua_upvalueindex(2));
    if (lua_type(L, 1) != LUA_TTABLE)
        return luaL_error(L, "bad argument #1 to '%s.%s' (options table expected, got %s)",
                          ep->service, ep->name, luaL_typename(L, 1));
    lua_settop(L, 1);
    return cc_run(L, s, ep, 1, 1, 1);
}

/* endpoints["omni.reset_cache"] = { service, name, idempotent, options = { name = type } } */
static void push_endpoint_info(lua_State *L, const cc_endpoint *ep)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, ep->service);
    lua_setfield(L, -2, "service");
    lua_pushstring(L, ep->name);
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, ep->idempotent);
    lua_setfield(L, -2, "idempotent");
    cc_push_option_names(L, ep);
    lua_setfield(L, -2, "options");
}

/* cjson's decode and encode, looked up once, kept in the registry. */
static void require_cjson(lua_State *L)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_getfield(L, -2, "encode");
    if (!lua_isfunction(L, -1) || !lua_isfunction(L, -2))
        luaL_error(L, "cachectl.core: cjson.decode or cjson.encode not found");
    lua_setfield(L, LUA_REGISTRYINDEX, "cachectl.encode");
    lua_setfield(L, LUA_REGISTRYINDEX, "cachectl.decode");
    lua_pop(L, 1);
}

CC_EXPORT int luaopen_cachectl_core(lua_State *L)
{
    const curl_version_info_data *v;
    char version[64];
    size_t i;
    int session;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return luaL_error(L, "cachectl.core: curl_global_init failed: %s", curl_easy_strerror(curl_init_rc));
    v = curl_version_info(CURLVERSION_NOW);
    if (!(v->features & CURL_VERSION_SSL)) luaL_error(L, "cachectl.core: libcurl lacks TLS support");
    require_cjson(L);
    cc_errors_init(L);
    lua_newtable(L);
    cc_transport_init(L);
    cc_session_new(L);
    session = lua_gettop(L);
    lua_newtable(L);                        /* endpoints */
    for (i = 0; i < cc_nendpoints; i++) {
        const cc_endpoint *ep = &cc_endpoints[i];
        lua_getfield(L, session - 1, ep->service);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, session - 1, ep->service);
        }
        lua_pushvalue(L, session);
        lua_pushlightuserdata(L, (void *)ep);
        lua_pushcclosure(L, call_endpoint, 2);
        lua_setfield(L, -2, ep->name);
        lua_pop(L, 1);
        snprintf(version, sizeof version, "%s.%s", ep->service, ep->name);
        push_endpoint_info(L, ep);
        lua_setfield(L, -2, version);
    }
    lua_setfield(L, session - 1, "endpoints");
    lua_pop(L, 1);
    lua_pushliteral(L, CC_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, v->version);
    lua_setfield(L, -2, "curl_version");
    return 1;
}
