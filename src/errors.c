/* errors.c — the error value every call returns as its second result: a
 * table with kind, message, status, code, retry_after, attempts and field,
 * and a metatable whose __tostring gives one line. Messages are scrubbed of
 * the call's key or token before they reach Lua. */
#include <stdio.h>
#include <string.h>
#include "cachectl.h"

#define ERROR_MT "cachectl.error"

const char *const cc_kind_names[] = {
    "invalid", "connect", "timeout", "tls", "http", "api", "rate_limited", "decode", "too_large"
};

/* The length of the longest prefix of s found anywhere in the secret. */
static size_t secret_match(const char *s, const cc_req *r)
{
    size_t best = 0, j, k;
    for (j = 0; j < r->secret_len; j++) {
        for (k = 0; j + k < r->secret_len && s[k] && s[k] == r->secret[j + k]; k++) {}
        if (k > best) best = k;
    }
    return best;
}

/* Masks the secret in t (NUL-terminated, changed in place): the whole of
 * it, and any 8 or more of its characters in a row. Returns 1 when it
 * masked something. */
static int mask_once(char *t, const cc_req *r)
{
    size_t min = r->secret_len < 8 ? r->secret_len : 8, out = 0, in = 0, m;
    int masked = 0;
    while (t[in]) {
        m = secret_match(t + in, r);
        if (m >= min) {
            memcpy(t + out, "***", 3);   /* m >= 4 > 3: never overtakes in */
            out += 3;
            in += m;
            masked = 1;
        } else {
            t[out++] = t[in++];
        }
    }
    t[out] = '\0';
    return masked;
}

/* Pushes s as one line (control characters become spaces) with the secret
 * masked, again and again until no piece of it is left: a message cut
 * short, or echoing part of a key, or rebuilding one around a mask, hides
 * it too. Secrets under 4 bytes are left alone: they would match ordinary
 * words. */
static void push_scrubbed(lua_State *L, const char *s, const cc_req *r)
{
    size_t i, n = strlen(s);
    char *t = cc_newuserdata(L, n + 1);       /* scratch the GC frees */
    for (i = 0; i <= n; i++)
        t[i] = s[i] && ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? ' ' : s[i];
    if (r && r->secret && r->secret_len >= 4)
        while (mask_once(t, r)) {}
    lua_pushstring(L, t);
    lua_remove(L, -2);
}

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
