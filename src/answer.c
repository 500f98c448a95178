/* answer.c — reading a complete HTTP answer: decoding the body with
 * lua-cjson, telling success from failure by the endpoint's rule, and taking
 * the service's message, code and Retry-After. No libcurl here, so a fuzz
 * target can feed it any status, body and header. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "cachectl.h"

/* cjson decodes a JSON array to a table too: only a text whose first
 * non-blank byte is '{' is an object. */
static int opens_object(const char *body, size_t len)
{
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\n' || body[i] == '\r')) i++;
    return i < len && body[i] == '{';
}

/* Decodes a JSON object with cjson; leaves the table on the stack, or
 * nothing (an empty body, not JSON, or JSON that is not an object). */
static int decode(lua_State *L, const char *body, size_t len)
{
    if (!opens_object(body, len)) return 0;
    lua_getfield(L, LUA_REGISTRYINDEX, "cachectl.decode");
    lua_pushlstring(L, body, len);
    if (lua_pcall(L, 1, 1, 0) != 0 || !lua_istable(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    return 1;
}

/* A service value as text: integral numbers without cjson's ".0". */
static int value_text(lua_State *L, int idx, char *out, size_t sz)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        snprintf(out, sz, "%s", lua_tostring(L, idx));
    } else if (lua_type(L, idx) == LUA_TNUMBER) {
        double d = lua_tonumber(L, idx);
        if (d == floor(d) && fabs(d) < 1e15) snprintf(out, sz, "%.0f", d);
        else snprintf(out, sz, "%.17g", d);
    } else {
        return 0;
    }
    return 1;
}

/* Fills message, code and retry_after from a decoded body at the top. The
 * message is the first non-empty text of message, messege (old ModelsLab
 * endpoints), detail (Omni's OpenAPI shape) and error (Omni's 422). */
static void read_error_body(lua_State *L, outcome *o)
{
    static const char *const msg_fields[] = { "message", "messege", "detail", "error" };
    size_t i;
    for (i = 0; i < sizeof msg_fields / sizeof msg_fields[0]; i++) {
        int found;
        lua_getfield(L, -1, msg_fields[i]);
        found = lua_type(L, -1) == LUA_TSTRING && lua_tostring(L, -1)[0] != '\0';
        if (found) snprintf(o->msg, sizeof o->msg, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        if (found) break;
    }
    lua_getfield(L, -1, "error_code");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_getfield(L, -1, "error");
    }
    if (!value_text(L, -1, o->code, sizeof o->code)) o->code[0] = '\0';
    lua_pop(L, 1);
    if (o->retry_after < 0) {
        lua_getfield(L, -1, "retry_after");
        if (lua_type(L, -1) == LUA_TNUMBER || lua_type(L, -1) == LUA_TSTRING) {
            double v = lua_tonumber(L, -1);
            if (lua_isnumber(L, -1) && v >= 0 && v < 1e9) o->retry_after = v;
        }
        lua_pop(L, 1);
    }
}

static int body_says_success(lua_State *L, const cc_endpoint *ep)
{
    int ok;
    if (ep->rule == RULE_STATUS_SUCCESS) {
        lua_getfield(L, -1, "status");
        ok = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "success") == 0;
    } else if (ep->rule == RULE_STATUS_NOT_ERROR) {
        lua_getfield(L, -1, "status");
        ok = !(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "error") == 0);
    } else {
        lua_getfield(L, -1, "success");
        ok = !(lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1));
    }
    lua_pop(L, 1);
    return ok;
}

/* Reads one answer into o. On success leaves the decoded table on the stack
 * and returns 1; otherwise returns 0 with o filled and the stack as it was. */
int cc_interpret(lua_State *L, const cc_endpoint *ep, long status, const char *body, size_t len,
                 const char *retry_after, outcome *o)
{
    int decoded;
    o->status = status;
    o->retry_after = retry_after && retry_after[0]
                         ? cc_retry_after(retry_after, strlen(retry_after), cc_now_epoch())
                         : -1;
    decoded = decode(L, body, len);
    if (status >= 200 && status < 300) {
        if (!decoded) {
            o->kind = CC_DECODE;
            snprintf(o->msg, sizeof o->msg, "the %sanswer (HTTP %ld) is not a JSON object",
                     len ? "" : "empty ", status);
            return 0;
        }
        if (body_says_success(L, ep)) return 1;
        o->kind = CC_API;
        snprintf(o->msg, sizeof o->msg, "the service reported a failure");
    } else {
        o->kind = status == 429 ? CC_RATE_LIMITED : CC_HTTP;
        o->retryable = status == 429 || status == 502 || status == 503 || status == 504;
        snprintf(o->msg, sizeof o->msg, "the service answered HTTP %ld", status);
    }
    if (decoded) {
        read_error_body(L, o);
        lua_pop(L, 1);
    }
    return 0;
}
