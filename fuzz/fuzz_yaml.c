/* fuzz_yaml.c — cc_yaml_load_l (yaml.c), which reads a YAML document a
 * server sent (an Omni model file) with libyaml, within limits, and
 * core.model_policies and core.policy_check (policies.c), which read its
 * cache policies from it and check a name against them.
 *
 * Input: byte 0 picks the limits (bit 0: small ones, so short inputs reach
 * every limit; else the defaults), the deadline (bit 1: one far away on
 * the monotonic clock, read every 512 events; else bit 2: one passed on a
 * Lua clock; else none) and the function (bit 3: model_policies, then
 * policy_check of an unlikely name and of the first name; else the
 * document); the rest is the text.
 *
 * Checks: the call never raises; the stack is back to empty; the answer is
 * a document (or the policies), or nil, a message and a reason among
 * "limit", "shape", "syntax", "memory" and "timeout" (only with a deadline
 * passed); the message is one line of printable ASCII (never the text's
 * bytes; a refused shape of model_policies may show a policy name); a
 * document's nodes (aliases and merge keys expanded, `n`) and height (`h`)
 * are within the nodes and depth limits; the policies are tables with a
 * string name and plain attributes, the default one of the names, and
 * policy_check says true or gives a message. The sanitizers check that
 * every libyaml object is deleted and nothing is read out of bounds. */
#include <string.h>
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const lua_Integer small[] = { 4, 64, 32, 4, 8 };     /* depth, events, nodes, keys, key_bytes */
static const char *const names[] = { "depth", "events", "nodes", "keys", "key_bytes" };

static int clock_l(lua_State *L)
{
    lua_pushnumber(L, 1);
    return 1;
}

static lua_State *state(void)
{
    static int ready;
    lua_State *L = fuzz_lua();
    if (!ready) {
        lua_newtable(L);
        cc_yaml_init(L);
        lua_pop(L, 1);
        ready = 1;
    }
    return L;
}

static int is_null(lua_State *L, int idx)
{
    int yes;
    idx = lua_absindex(L, idx);
    lua_getfield(L, LUA_REGISTRYINDEX, CC_YAML_NULL);
    yes = lua_rawequal(L, idx, -1);
    lua_pop(L, 1);
    return yes;
}

static void check_message(lua_State *L, int idx)
{
    size_t n, i;
    const char *m = lua_tolstring(L, idx, &n);
    CHECK(m != NULL && n > 0);
    for (i = 0; i < n; i++) CHECK(m[i] >= 0x20 && m[i] < 0x7f);
}

/* The policies at idx, as model_policies returns them; policy_check of an
 * unlikely name (true or a message) and of the first name (true). */
static void check_policies(lua_State *L, int idx)
{
    int i, n = (int)lua_rawlen(L, idx), declared = 0;
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        CHECK(lua_type(L, -1) == LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            int t = lua_type(L, -1);
            CHECK(lua_type(L, -2) == LUA_TSTRING);
            CHECK(t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN);
            lua_pop(L, 1);
        }
        lua_getfield(L, -1, "name");
        CHECK(lua_type(L, -1) == LUA_TSTRING);
        lua_getfield(L, idx, "default");
        if (lua_rawequal(L, -1, -2)) declared = 1;
        lua_pop(L, 3);
    }
    lua_getfield(L, idx, "default");
    CHECK(lua_isnil(L, -1) || declared);
    lua_pop(L, 1);
    lua_pushcfunction(L, cc_policy_check_l);
    lua_pushliteral(L, "\1 not a name \1");
    lua_pushvalue(L, idx);
    lua_pushliteral(L, "3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    CHECK(lua_pcall(L, 3, 2, 0) == 0);
    CHECK(lua_toboolean(L, -2) || (lua_isnil(L, -2) && lua_type(L, -1) == LUA_TSTRING));
    lua_pop(L, 2);
    if (n == 0) return;
    lua_pushcfunction(L, cc_policy_check_l);
    lua_rawgeti(L, idx, 1);
    lua_getfield(L, -1, "name");
    lua_replace(L, -2);
    lua_pushvalue(L, idx);
    lua_pushliteral(L, "3f2504e0-4f89-41d3-9a0c-0305e82c3301");
    CHECK(lua_pcall(L, 3, 2, 0) == 0 && lua_toboolean(L, -2));
    lua_pop(L, 2);
}

static int one_of(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(s, *list) == 0) return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const reasons[] = { "limit", "shape", "syntax", "memory", "timeout", NULL };
    lua_State *L = state();
    int i, smalls, rc, passed, policies;
    lua_Integer nodes = 100000, depth = 64;
    if (size < 1) return 0;
    smalls = data[0] & 1;
    policies = data[0] & 8;
    lua_pushcfunction(L, policies ? cc_model_policies_l : cc_yaml_load_l);
    lua_pushlstring(L, (const char *)data + 1, size - 1);
    if (smalls) {
        lua_createtable(L, 0, 5);
        for (i = 0; i < 5; i++) {
            lua_pushinteger(L, small[i]);
            lua_setfield(L, -2, names[i]);
        }
        nodes = small[2];
        depth = small[0];
    } else {
        lua_pushnil(L);
    }
    if (data[0] & 2) {
        lua_pushnumber(L, 1e18);
        lua_pushnil(L);
    } else if (data[0] & 4) {
        lua_pushnumber(L, 0.5);
        lua_pushcfunction(L, clock_l);
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    passed = !(data[0] & 2) && (data[0] & 4);
    rc = lua_pcall(L, 4, 3, 0);
    CHECK(rc == 0);
    if (lua_isnil(L, -3)) {
        CHECK(lua_type(L, -1) == LUA_TSTRING && one_of(lua_tostring(L, -1), reasons));
        CHECK(passed || strcmp(lua_tostring(L, -1), "timeout") != 0);
        if (!policies || strcmp(lua_tostring(L, -1), "shape") != 0) check_message(L, -2);
    } else if (policies) {
        check_policies(L, 1);
    } else if (lua_type(L, -3) == LUA_TTABLE && !is_null(L, -3)) {
        lua_getfield(L, -3, "n");
        lua_getfield(L, -4, "h");
        CHECK(lua_tointeger(L, -2) >= 1 && lua_tointeger(L, -2) <= nodes);
        CHECK(lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= depth);
        lua_pop(L, 2);
    }
    lua_settop(L, 0);
    return 0;
}
