/* fuzz_yaml.c — core.yaml_load (yaml.c), which reads a YAML document a
 * server sent (an Omni model file) with libyaml, within limits.
 *
 * Input: byte 0 picks the limits (bit 0: small ones, so short inputs reach
 * every limit; else the defaults) and the deadline (bit 1: one far away on
 * the monotonic clock, read every 512 events; else bit 2: one passed on a
 * Lua clock; else none); the rest is the text.
 *
 * Checks: the call never raises; the stack is back to empty; the answer is
 * a document, or nil, a message and a reason among "limit", "shape",
 * "syntax", "memory" and "timeout" (only with a deadline passed);
 * the message is one line of printable ASCII (never the text's bytes); a
 * document's nodes (aliases and merge keys expanded, `n`) and height (`h`)
 * are within the nodes and depth limits. The sanitizers check that every
 * libyaml object is deleted and nothing is read out of bounds. */
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

static void check_message(lua_State *L, int idx)
{
    size_t n, i;
    const char *m = lua_tolstring(L, idx, &n);
    CHECK(m != NULL && n > 0);
    for (i = 0; i < n; i++) CHECK(m[i] >= 0x20 && m[i] < 0x7f);
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
    int i, smalls, rc, passed;
    lua_Integer nodes = 100000, depth = 64;
    if (size < 1) return 0;
    smalls = data[0] & 1;
    lua_pushcfunction(L, cc_yaml_load_l);
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
        check_message(L, -2);
        CHECK(lua_type(L, -1) == LUA_TSTRING && one_of(lua_tostring(L, -1), reasons));
        CHECK(passed || strcmp(lua_tostring(L, -1), "timeout") != 0);
    } else if (lua_type(L, -3) == LUA_TTABLE && lua_getmetatable(L, -3) == 0) {
        lua_getfield(L, -3, "n");
        lua_getfield(L, -4, "h");
        CHECK(lua_tointeger(L, -2) >= 1 && lua_tointeger(L, -2) <= nodes);
        CHECK(lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= depth);
        lua_pop(L, 2);
    }
    lua_settop(L, 0);
    return 0;
}
