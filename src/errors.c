/* errors.c — the error value every call returns as its second result: a
 * table with kind, message, status, code, retry_after, attempts and field,
 * and a metatable whose __tostring gives one line. Messages are scrubbed of
 * the call's key or token before they reach Lua, by the one scrubber of the
 * module (scrub.c; also core.scrub, for the Lua layer and the command). */
#include <stdio.h>
#include <string.h>
#include "cachectl.h"

#define ERROR_MT "cachectl.error"

const char *const cc_kind_names[] = {
    "invalid", "connect", "timeout", "tls", "http", "api", "rate_limited", "decode", "too_large"
};

/* Pushes s (n bytes) on one line (cc_one_line) with the secret masked:
 * masked before the text is put on one line (a secret holding U+2028, a
 * bidi control or a raw C1 byte would otherwise be cut into pieces under 8
 * bytes, each left visible) and after (a line break the one-lining makes a
 * space may complete a secret that holds one). */
void cc_push_line(lua_State *L, const char *s, size_t n, const char *secret, size_t sn)
{
    char *t = cc_newuserdata(L, n + 1);       /* scratch the GC frees */
    size_t m;
    memcpy(t, s, n);
    m = cc_scrub(t, n, secret, sn);
    lua_pushlstring(L, t, cc_scrub(t, cc_one_line(t, m), secret, sn));
    cc_wipe(t, n);                            /* all of it: the scrub left bytes past m */
    lua_remove(L, -2);
}

static void push_scrubbed(lua_State *L, const char *s, const cc_req *r)
{
    cc_push_line(L, s, strlen(s), r ? r->secret : NULL, r ? r->secret_len : 0);
}

/* The error table, its message one line without the request's secret. */
void cc_push_error(lua_State *L, enum cc_kind kind, const char *message, long status,
                   const char *code, double retry_after, int attempts, const char *field,
                   const cc_req *r)
{
    lua_createtable(L, 0, 7);
    lua_pushstring(L, cc_kind_names[kind]);
    lua_setfield(L, -2, "kind");
    push_scrubbed(L, message, r);
    lua_setfield(L, -2, "message");
    if (status > 0) {
        lua_pushinteger(L, status);
        lua_setfield(L, -2, "status");
    }
    if (code) {
        push_scrubbed(L, code, r);
        lua_setfield(L, -2, "code");
    }
    if (retry_after >= 0) {
        lua_pushnumber(L, retry_after);
        lua_setfield(L, -2, "retry_after");
    }
    lua_pushinteger(L, attempts);
    lua_setfield(L, -2, "attempts");
    if (field) {
        lua_pushstring(L, field);
        lua_setfield(L, -2, "field");
    }
    luaL_getmetatable(L, ERROR_MT);
    lua_setmetatable(L, -2);
}

static const char *field_str(lua_State *L, const char *name)
{
    lua_getfield(L, 1, name);
    return lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
}

/* "cachectl: http: Model ... does not exist (HTTP 404, code 404, 1 attempt)" */
static int error_tostring(lua_State *L)
{
    luaL_Buffer b;
    const char *kind, *msg, *status, *code, *after = NULL, *attempts;
    char tmp[64], num[32];
    int open = 0;
    luaL_checktype(L, 1, LUA_TTABLE);
    kind = field_str(L, "kind");
    msg = field_str(L, "message");
    status = field_str(L, "status");
    code = field_str(L, "code");
    lua_getfield(L, 1, "retry_after");
    if (lua_type(L, -1) == LUA_TNUMBER) {
        snprintf(num, sizeof num, "%.3g", (double)lua_tonumber(L, -1));
        after = num;
    }
    attempts = field_str(L, "attempts");
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "cachectl: ");
    luaL_addstring(&b, kind ? kind : "error");
    luaL_addstring(&b, ": ");
    luaL_addstring(&b, msg ? msg : "(no message)");
#define PART(cond, ...) if (cond) { \
        snprintf(tmp, sizeof tmp, __VA_ARGS__); \
        luaL_addstring(&b, open++ ? ", " : " ("); luaL_addstring(&b, tmp); }
    PART(status, "HTTP %s", status)
    PART(code, "code %.40s", code)
    PART(after, "retry after %ss", after)
    PART(attempts && strcmp(attempts, "0") != 0, "%s attempt%s", attempts,
         strcmp(attempts, "1") == 0 ? "" : "s")
#undef PART
    if (open) luaL_addstring(&b, ")");
    luaL_pushresult(&b);
    return 1;
}

void cc_errors_init(lua_State *L)
{
    luaL_newmetatable(L, ERROR_MT);
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
}
