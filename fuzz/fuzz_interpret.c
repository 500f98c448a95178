/* fuzz_interpret.c — cc_interpret (answer.c), which reads a complete HTTP
 * answer: status, Retry-After header and body (decoded by lua-cjson), by the
 * rule of the endpoint; then cc_push_error and the error's __tostring
 * (errors.c), which scrub the credential.
 *
 * Input: byte 0 picks the endpoint row (low bits) and whether a Retry-After
 * header came (bit 7); bytes 1-2 the status (0-599); byte 3 the length of a
 * credential (0-31) whose bytes follow; then the header value up to the first
 * '\n' (at most 63 bytes, as engine.c keeps); the rest is the body.
 *
 * Checks: on success the stack grew by one table, the status was 2xx, the
 * body is a JSON object (not an array: its first byte after blanks is '{')
 * and passes the endpoint's rule; on failure the stack is as it was, the
 * kind fits the status (2xx: decode or api; 429: rate_limited; else http),
 * only 429/502/503/504 are retryable, message and code are NUL-terminated
 * within their buffers, retry_after is -1 or a finite number >= 0. The error
 * value is a table; its message and code hold no control character (so
 * tostring is one line) and no run of 8 characters of the credential (all of
 * it when shorter), which errors.c masks even in a message cut short.
 */
#include <math.h>
#include <string.h>
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    fuzz_lua();
    return 0;
}

/* The endpoint's success rule, checked again on the table at the top. */
static int rule_holds(lua_State *L, const cc_endpoint *ep)
{
    int ok;
    if (ep->rule == RULE_SUCCESS_NOT_FALSE) {
        lua_getfield(L, -1, "success");
        ok = !(lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1));
    } else {
        lua_getfield(L, -1, "status");
        if (ep->rule == RULE_STATUS_SUCCESS)
            ok = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "success") == 0;
        else
            ok = !(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "error") == 0);
    }
    lua_pop(L, 1);
    return ok;
}

static int contains(const char *hay, size_t hn, const char *needle, size_t nn)
{
    size_t i;
    if (nn == 0 || nn > hn) return 0;
    for (i = 0; i + nn <= hn; i++)
        if (memcmp(hay + i, needle, nn) == 0) return 1;
    return 0;
}

/* Whether any min(8, secret_len) bytes in a row of the secret occur in s. */
static int holds_secret_run(const char *s, size_t n, const cc_req *r)
{
    size_t w = r->secret_len < 8 ? r->secret_len : 8, j;
    for (j = 0; j + w <= r->secret_len; j++)
        if (contains(s, n, r->secret + j, w)) return 1;
    return 0;
}

static int has_ctl_bytes(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 1;
    return 0;
}

static void check_error(lua_State *L, const outcome *o, const cc_req *r)
{
    static const char *const fields[] = { "message", "code" };
    int top = lua_gettop(L), i;
    size_t len;
    const char *line, *text;
    cc_push_error(L, o->kind, o->msg, o->status, o->code[0] ? o->code : NULL, o->retry_after, 1, NULL, r);
    CHECK(lua_gettop(L) == top + 1 && lua_istable(L, -1));
    lua_getfield(L, -1, "kind");
    CHECK(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), cc_kind_names[o->kind]) == 0);
    lua_pop(L, 1);
    for (i = 0; i < 2; i++) {
        lua_getfield(L, -1, fields[i]);
        text = lua_tolstring(L, -1, &len);
        CHECK(i == 1 || text != NULL);
        if (text) {
            CHECK(!has_ctl_bytes(text, len));
            if (r->secret && r->secret_len >= 4)
                CHECK(!holds_secret_run(text, len, r));
        }
        lua_pop(L, 1);
    }
    line = luaL_tolstring(L, -1, &len);   /* the __tostring metamethod */
    CHECK(line != NULL && strncmp(line, "cachectl: ", 10) == 0);
    CHECK(memchr(line, '\n', len) == NULL && memchr(line, '\r', len) == NULL);
    lua_pop(L, 2);
    CHECK(lua_gettop(L) == top);
}

/* The fuzzer's bytes, taken apart (see the header comment). */
typedef struct input {
    const cc_endpoint *ep;
    long status;
    int has_header;
    char header[64];
    char *secret, *body;     /* malloc'd; body has exactly blen bytes */
    size_t slen, blen;
} input;

static int read_input(const uint8_t *data, size_t size, input *in)
{
    const uint8_t *p, *end = data + size, *nl;
    size_t hlen;
    memset(in, 0, sizeof *in);
    if (size < 4) return 0;
    in->ep = &cc_endpoints[data[0] % 16 % cc_nendpoints];
    in->has_header = data[0] & 0x80;
    in->status = (long)(((unsigned)data[1] << 8 | data[2]) % 600);
    in->slen = data[3] % 32;
    p = data + 4;
    if (in->slen > (size_t)(end - p)) in->slen = (size_t)(end - p);
    CHECK((in->secret = malloc(in->slen + 1)) != NULL);
    memcpy(in->secret, p, in->slen);
    in->secret[in->slen] = '\0';
    p += in->slen;
    if (in->has_header) {
        nl = memchr(p, '\n', (size_t)(end - p));
        hlen = (size_t)((nl ? nl : end) - p);
        if (hlen > 63) hlen = 63;
        memcpy(in->header, p, hlen);
        in->header[hlen] = '\0';
        p = nl ? nl + 1 : end;
    }
    in->blen = (size_t)(end - p);
    CHECK((in->body = malloc(in->blen ? in->blen : 1)) != NULL);   /* an over-read shows */
    memcpy(in->body, p, in->blen);
    return 1;
}

/* Independently of answer.c: the first byte that is not a JSON blank is '{'. */
static int opens_object(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (!memchr(" \t\r\n", s[i], 4)) return s[i] == '{';
    return 0;
}

static void check_failure(lua_State *L, const input *in, const outcome *o, const cc_req *req, int top)
{
    CHECK(lua_gettop(L) == top);
    CHECK(memchr(o->msg, '\0', sizeof o->msg) != NULL);
    CHECK(o->msg[0] != '\0');
    CHECK(memchr(o->code, '\0', sizeof o->code) != NULL);
    if (in->status >= 200 && in->status < 300) {
        CHECK(o->kind == CC_DECODE || o->kind == CC_API);
        CHECK(!o->retryable);
    } else {
        CHECK(o->kind == (in->status == 429 ? CC_RATE_LIMITED : CC_HTTP));
        CHECK(o->retryable == (in->status == 429 || in->status == 502 || in->status == 503 || in->status == 504));
    }
    check_error(L, o, req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_lua();
    input in;
    cc_req req;
    outcome o;
    int top, ok;
    if (!read_input(data, size, &in)) return 0;
    memset(&o, 0, sizeof o);
    o.retry_after = -1;
    memset(&req, 0, sizeof req);
    req.ep = in.ep;
    /* options.c refuses credentials with control characters or NUL */
    if (in.slen && !cc_has_ctl(in.secret, in.slen) && strlen(in.secret) == in.slen) {
        req.secret = in.secret;
        req.secret_len = in.slen;
    }
    top = lua_gettop(L);
    ok = cc_interpret(L, in.ep, in.status, in.body, in.blen, in.has_header ? in.header : NULL, &o);
    CHECK(o.status == in.status);
    CHECK(o.retry_after == -1 || (isfinite(o.retry_after) && o.retry_after >= 0));
    if (ok) {
        CHECK(ok == 1 && lua_gettop(L) == top + 1 && lua_istable(L, -1));
        CHECK(in.status >= 200 && in.status < 300);
        CHECK(opens_object(in.body, in.blen));
        CHECK(rule_holds(L, in.ep));
        lua_pop(L, 1);
    } else {
        check_failure(L, &in, &o, &req, top);
    }
    CHECK(lua_gettop(L) == top);
    lua_gc(L, LUA_GCSTEP, 0);
    free(in.body);
    free(in.secret);
    return 0;
}
