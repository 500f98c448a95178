/* fuzz_encode.c — the two encoders of untrusted text (parse.c):
 * cc_pct_encode, which makes a policy name one path segment, and
 * cc_json_string, which makes a key or reset_at a JSON string.
 *   pct: the output holds only unreserved characters and %XX with upper-case
 *        hex (so no '/', '?', '#' can reach the path); decoding it gives the
 *        input back; unreserved bytes pass, all others take 3 bytes.
 *   json: the output is one JSON string literal with no raw control
 *        character; lua-cjson (what the mock server uses) decodes it to the
 *        input, byte for byte. */
#include <string.h>
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void check_pct(const char *s, size_t n)
{
    cc_buf b = { 0 };
    size_t i, j = 0, expect = 0;
    CHECK(cc_pct_encode(&b, s, n));
    for (i = 0; i < n; i++) expect += unreserved((unsigned char)s[i]) ? 1 : 3;
    CHECK(b.len == expect);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c)) {
            CHECK(b.data[j] == (char)c);
            j++;
        } else {
            CHECK(b.data[j] == '%' && hexval(b.data[j + 1]) >= 0 && hexval(b.data[j + 2]) >= 0);
            CHECK(hexval(b.data[j + 1]) * 16 + hexval(b.data[j + 2]) == c);
            j += 3;
        }
    }
    for (i = 0; i < b.len; i++) CHECK(b.data[i] == '%' || unreserved((unsigned char)b.data[i]));
    cc_buf_free(&b);
}

static void check_json(const char *s, size_t n)
{
    lua_State *L = fuzz_lua();
    cc_buf b = { 0 };
    size_t i, len;
    const char *back;
    CHECK(cc_json_string(&b, s, n));
    CHECK(b.len >= n + 2 && b.data[0] == '"' && b.data[b.len - 1] == '"');
    for (i = 0; i < b.len; i++) CHECK((unsigned char)b.data[i] >= 0x20 && b.data[i] != 0x7f);
    lua_getfield(L, LUA_REGISTRYINDEX, "cachectl.decode");
    lua_pushlstring(L, b.data, b.len);
    CHECK(lua_pcall(L, 1, 1, 0) == 0);
    CHECK(lua_type(L, -1) == LUA_TSTRING);
    back = lua_tolstring(L, -1, &len);
    CHECK(len == n && memcmp(back, s, n) == 0);
    lua_pop(L, 1);
    CHECK(lua_gettop(L) == 0);
    cc_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size ? size : 1);
    if (!s) return 0;
    memcpy(s, data, size);
    check_pct(s, size);
    check_json(s, size);
    free(s);
    return 0;
}
