/* core.c — the module entry point: luaopen_cachectl_core builds the tables
 * modelslab and omni from the endpoint table, each function a call bound to
 * the module's default session and its endpoint row (session.c). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <openssl/crypto.h>       /* before cachectl.h hides what it declares */
#include "cachectl.h"
#include "digest.h"

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
#ifdef OPENSSL_INIT_NO_ATEXIT
    /* OpenSSL is asked not to free itself at exit (0.5 M instructions, a
     * fiftieth of every `cachectl` run). Harmless for a library: the first
     * OPENSSL_init_crypto of the process decides, so under nginx (which
     * initialises OpenSSL before any module runs) or after any other user
     * of OpenSSL nothing changes; where cachectl comes first (plain Lua,
     * the command), OpenSSL's heap is left to the end of the process like
     * the rest of it (reachable from its globals: no leak for valgrind or
     * LeakSanitizer), libcrypto pins itself in memory anyway, and no
     * thread can be left using what an exit handler freed. What is not
     * done is the teardown of engines and providers, whose resources end
     * with the process. */
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
#endif
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void set_string(lua_State *L, const char *k, const char *v)
{
    if (!v) return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

/* A whole endpoint row: { service, name, method, path, idempotent, args,
 * action, options = { name = type } }. */
static void push_endpoint_row(lua_State *L, const cc_endpoint *ep)
{
    int i;
    lua_createtable(L, 0, 8);
    set_string(L, "service", ep->service);
    set_string(L, "name", ep->name);
    set_string(L, "method", ep->method);
    set_string(L, "path", ep->path);
    set_string(L, "action", ep->action);
    lua_pushboolean(L, ep->idempotent);
    lua_setfield(L, -2, "idempotent");
    lua_newtable(L);
    for (i = 0; ep->args[i]; i++) {
        lua_pushstring(L, ep->args[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "args");
    cc_push_option_names(L, ep);
    lua_setfield(L, -2, "options");
}

/* A whole service row, its calls (the rows above) under `calls`. */
static void push_service_row(lua_State *L, const cc_service *svc)
{
    size_t i;
    lua_createtable(L, 0, 10);
    set_string(L, "name", svc->name);
    set_string(L, "secret", svc->secret);
    set_string(L, "default_base", svc->base_url);
    set_string(L, "host", svc->host);
    set_string(L, "playground_host", svc->playground_host);
    set_string(L, "default_product", svc->default_product);
    lua_createtable(L, 0, 2);
    set_string(L, svc->secret, svc->env_secret);
    set_string(L, "base_url", svc->env_base_url);
    lua_setfield(L, -2, "env");
    if (svc->limit_requests > 0) {
        lua_createtable(L, 0, 2);
        lua_pushnumber(L, svc->limit_requests);
        lua_setfield(L, -2, "requests");
        lua_pushnumber(L, svc->limit_per);
        lua_setfield(L, -2, "per");
        lua_setfield(L, -2, "rate_limit");
    }
    lua_newtable(L);
    for (i = 0; i < cc_nendpoints; i++) {
        if (cc_endpoints[i].svc != svc) continue;
        push_endpoint_row(L, &cc_endpoints[i]);
        lua_setfield(L, -2, cc_endpoints[i].name);
    }
    lua_setfield(L, -2, "calls");
}

/* core.check_options(service, opts [, call [, where]]) */
static int check_options_l(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const cc_service *svc = cc_service_find(name);
    const cc_endpoint *ep = NULL;
    char where[96];
    luaL_argcheck(L, svc != NULL, 1, "no such service");
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3)) {
        ep = cc_endpoint_find(name, luaL_checkstring(L, 3));
        luaL_argcheck(L, ep != NULL, 3, "no such call");
    }
    snprintf(where, sizeof where, "%s", luaL_optstring(L, 4, ep ? ep->name : svc->name));
    cc_check_options(L, svc, ep, 2, where);
    return 0;
}

/* core.sha256(s) -> 64 hex digits */
static int sha256_l(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[65];
    cc_digest *d = cc_digest_new();
    if (!d || !cc_digest_add(d, s, n) || !cc_digest_hex(d, hex))
        return luaL_error(L, "cachectl: SHA-256 failed");
    lua_pushstring(L, hex);
    return 1;
}

/* core.identity(service, call, opts) -> the SHA-256 of what makes two calls
 * the same request (service, call, credential, URL, body), or nil, err. */
static int identity_l(lua_State *L)
{
    const cc_endpoint *ep = cc_endpoint_find(luaL_checkstring(L, 1), luaL_checkstring(L, 2));
    cc_req r;
    char hex[65];
    int ok;
    luaL_argcheck(L, ep != NULL, 2, "no such call");
    luaL_checktype(L, 3, LUA_TTABLE);
    if (!cc_req_parse(L, 3, ep, &r)) {
        lua_pushnil(L);
        cc_push_error(L, CC_INVALID, r.bad_msg, 0, NULL, -1, 0, r.bad_field, NULL);
        return 2;
    }
    ok = cc_identity(ep, &r, hex);
    cc_req_free(&r);
    if (!ok) return luaL_error(L, "cachectl: SHA-256 failed");
    lua_pushstring(L, hex);
    return 1;
}

/* The preview table of the parsed request at index 1 (light userdata),
 * run protected so that the request is freed whatever happens. */
static int push_preview(lua_State *L)
{
    const cc_req *r = (const cc_req *)lua_touserdata(L, 1);
    const char *const fixed[] = { "Content-Type: application/json", "Accept: application/json" };
    int n = 0;
    size_t i;
    lua_createtable(L, 0, 4);
    lua_pushstring(L, r->method ? r->method : "POST");
    lua_setfield(L, -2, "method");
    lua_pushstring(L, r->url);
    lua_setfield(L, -2, "url");
    lua_createtable(L, 5, 0);
    lua_pushfstring(L, "User-Agent: %s", r->user_agent);
    lua_rawseti(L, -2, ++n);
    for (i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        lua_pushstring(L, fixed[i]);
        lua_rawseti(L, -2, ++n);
    }
    if (r->ep->svc->auth_header) {
        lua_pushfstring(L, "%s%s", r->ep->svc->auth_header, r->secret);
        lua_rawseti(L, -2, ++n);
    }
    if (r->body_len > 1024) {
        lua_pushliteral(L, "Expect:");
        lua_rawseti(L, -2, ++n);
    }
    lua_setfield(L, -2, "headers");
    if (r->body) {
        lua_pushlstring(L, r->body, r->body_len);
        lua_setfield(L, -2, "body");
    }
    return 1;
}

static void push_scrubbed(lua_State *L, int v, int secrets, int short_too, int depth);

/* core.preview(service, call, opts) -> { method, url, headers = { line, ... },
 * body } of the request the call would send, "***" where the credential
 * goes and wherever else it appears (the command's --dry-run); or nil, err for a bad value. The headers
 * are the engine's (engine.c build_headers): User-Agent, Content-Type,
 * Accept, the service's Authorization, Expect for a body over 1 KiB. */
static int preview_l(lua_State *L)
{
    const cc_endpoint *ep = cc_endpoint_find(luaL_checkstring(L, 1), luaL_checkstring(L, 2));
    cc_req r;
    int status;
    luaL_argcheck(L, ep != NULL, 2, "no such call");
    luaL_checktype(L, 3, LUA_TTABLE);
    if (!cc_req_parse(L, 3, ep, &r)) {
        lua_pushnil(L);
        cc_push_error(L, CC_INVALID, r.bad_msg, 0, NULL, -1, 0, r.bad_field, NULL);
        return 2;
    }
    lua_settop(L, 3);
    if (r.secret) lua_pushlstring(L, r.secret, r.secret_len); else lua_pushnil(L);      /* 4: masked everywhere below */
    cc_req_free(&r);
    /* again with "***" for the credential: the preview shows where it goes */
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, 3)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_pushliteral(L, "***");
    lua_setfield(L, -2, ep->svc->secret);
    if (!cc_req_parse(L, -1, ep, &r)) return luaL_error(L, "cachectl: preview: %s", r.bad_msg);
    lua_pushcfunction(L, push_preview);
    lua_pushlightuserdata(L, &r);
    status = lua_pcall(L, 1, 1, 0);
    cc_req_free(&r);
    if (status != 0) return lua_error(L);
    /* and masked wherever else the caller put it (another option's value) */
    push_scrubbed(L, lua_gettop(L), 4, 0, 0);
    return 1;
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

/* module.<service>.<name>: a closure over the module's session (at
 * index session) and its endpoint row, for every row. */
static void set_calls(lua_State *L, int module, int session)
{
    size_t i;
    for (i = 0; i < cc_nendpoints; i++) {
        const cc_endpoint *ep = &cc_endpoints[i];
        lua_getfield(L, module, ep->service);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setfield(L, module, ep->service);
        }
        lua_pushvalue(L, session);
        lua_pushlightuserdata(L, (void *)ep);
        lua_pushcclosure(L, cc_bound_call, 2);
        lua_setfield(L, -2, ep->name);
        lua_pop(L, 1);
    }
}

/* module.services (name -> service row, its calls under `calls`) and
 * module.endpoints ("service.name" -> the same call rows). */
static void set_rows(lua_State *L, int module)
{
    size_t i, j;
    lua_newtable(L);                        /* endpoints */
    lua_newtable(L);                        /* services */
    for (i = 0; i < cc_nservices; i++) {
        push_service_row(L, &cc_services[i]);
        lua_getfield(L, -1, "calls");
        for (j = 0; j < cc_nendpoints; j++) {
            char key[64];
            if (cc_endpoints[j].svc != &cc_services[i]) continue;
            snprintf(key, sizeof key, "%s.%s", cc_endpoints[j].service, cc_endpoints[j].name);
            lua_getfield(L, -1, cc_endpoints[j].name);
            lua_setfield(L, -5, key);
        }
        lua_pop(L, 1);
        lua_setfield(L, -2, cc_services[i].name);
    }
    lua_setfield(L, module, "services");
    lua_setfield(L, module, "endpoints");
}

/* The text on the stack top, replaced by itself with `secret` (sn bytes)
 * masked by the one scrubber; a secret under 4 bytes is left alone (it
 * would match ordinary words) unless `short_too` (a Redis password): then a
 * text holding it becomes "***" whole (masked in place, the words around
 * it would tell it: "dis***led"). */
static void scrub_top(lua_State *L, const char *secret, size_t sn, int short_too)
{
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    if (sn >= 4) {
        char *t = cc_newuserdata(L, n ? n : 1);
        memcpy(t, s, n);
        lua_pushlstring(L, t, cc_scrub(t, n, secret, sn));
        cc_wipe(t, n);
        lua_replace(L, -3);
        lua_pop(L, 1);
    } else if (short_too && sn > 0 && memmem(s, n, secret, sn)) {
        lua_pushliteral(L, "***");
        lua_replace(L, -2);
    }
}

/* Pushes the value at v with the secrets at index `secrets` (one, or a
 * list) masked: a string scrubbed, a table copied with its keys and values
 * scrubbed at any depth (up to 1000), anything else as it is. */
static void push_scrubbed(lua_State *L, int v, int secrets, int short_too, int depth)
{
    int i;
    luaL_checkstack(L, 8, "cachectl.core.scrub");
    if (lua_type(L, v) == LUA_TTABLE) {
        int copy;
        if (depth >= 1000) luaL_error(L, "cachectl.core.scrub: a table nested deeper than 1000");
        lua_newtable(L);
        copy = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, v)) {
            push_scrubbed(L, copy + 1, secrets, short_too, depth + 1);
            push_scrubbed(L, copy + 2, secrets, short_too, depth + 1);
            lua_rawset(L, copy);
            lua_pop(L, 1);
        }
        return;
    }
    lua_pushvalue(L, v);
    if (lua_type(L, v) != LUA_TSTRING) return;
    if (lua_type(L, secrets) != LUA_TTABLE) {
        size_t sn = 0;
        const char *secret = lua_isstring(L, secrets) ? lua_tolstring(L, secrets, &sn) : NULL;
        if (secret) scrub_top(L, secret, sn, short_too);
        return;
    }
    for (i = 1;; i++) {
        size_t sn;
        const char *secret;
        lua_rawgeti(L, secrets, i);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            return;
        }
        lua_insert(L, -2);      /* the secret under the text, alive while used */
        if (lua_isstring(L, -2)) {
            secret = lua_tolstring(L, -2, &sn);
            scrub_top(L, secret, sn, short_too);
        }
        lua_remove(L, -2);
    }
}

/* core.scrub(v, secret [, short_too]) -> v with the secret masked as in
 * errors (as given, percent-encoded or JSON-escaped): a string, or a table
 * copied with every string in it (keys too) masked; any other value as it
 * is. `secret` may be a list of secrets; the text as it is when secret is
 * nil or under 4 bytes, unless short_too (a Redis password), which masks a
 * short one as given. */
static int scrub_l(lua_State *L)
{
    luaL_checkany(L, 1);
    luaL_argcheck(L, lua_isnoneornil(L, 2) || lua_isstring(L, 2) || lua_istable(L, 2), 2,
                  "a secret or a list of secrets");
    lua_settop(L, 3);
    push_scrubbed(L, 1, 2, lua_toboolean(L, 3), 0);
    return 1;
}

/* core.parsed() -> how many options tables the module has read into
 * requests so far (every thread of the process): a call reads its own once */
static int parsed_l(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)cc_req_parsed());
    return 1;
}

/* core.error(fields [, secret]) -> fields as an error of the module: its
 * metatable, and its message (and a string code) on one line (cc_one_line) with the secret
 * masked, as in the errors of calls; `kind` must be one of the kinds,
 * `message` a string. The one constructor of the Lua layer's own errors. */
static int error_l(lua_State *L)
{
    int i, known = 0;
    size_t n, sn = 0;
    const char *kind, *text, *secret = luaL_optlstring(L, 2, NULL, &sn);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "kind");
    kind = lua_tostring(L, -1);
    for (i = 0; kind && i <= CC_TOO_LARGE; i++) known |= strcmp(kind, cc_kind_names[i]) == 0;
    luaL_argcheck(L, known, 1, "kind must be an error kind of cachectl");
    lua_getfield(L, 1, "message");
    luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 1, "message must be a string");
    text = lua_tolstring(L, -1, &n);
    cc_push_line(L, text, n, secret, sn);
    lua_setfield(L, 1, "message");
    lua_getfield(L, 1, "code");                 /* the service's words too (an error stored in Redis) */
    if (lua_type(L, -1) == LUA_TSTRING) {
        text = lua_tolstring(L, -1, &n);
        cc_push_line(L, text, n, secret, sn);
        lua_setfield(L, 1, "code");
    }
    lua_getfield(L, 1, "attempts");
    if (lua_isnil(L, -1)) {
        lua_pushinteger(L, 0);
        lua_setfield(L, 1, "attempts");
    }
    lua_settop(L, 1);
    luaL_getmetatable(L, "cachectl.error");
    lua_setmetatable(L, 1);
    return 1;
}

/* core.is_uuid(s) -> whether s is a model UUID (8-4-4-4-12 hex digits) */
static int is_uuid_l(lua_State *L)
{
    size_t n = 0;
    const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
    lua_pushboolean(L, s && cc_is_uuid(s, n));
    return 1;
}

/* core.monotonic() -> seconds on the monotonic clock (waits, deadlines) */
static int monotonic_l(lua_State *L)
{
    lua_pushnumber(L, cc_mono());
    return 1;
}

/* core.sleep(seconds): blocks the calling thread (plain Lua only) */
static int sleep_l(lua_State *L)
{
    double t = luaL_checknumber(L, 1);
    struct timespec ts;
    if (!(t > 0)) return 0;
    if (t > 1e6) t = 1e6;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
    return 0;
}

/* core.file_info(path [, follow]) -> kind, mode, owner | nil, message, errno
 * What lstat(2) (stat(2) with follow) says of a path, for the command's
 * compile cache and key file: kind "directory", "file", "link" or "other";
 * the permission bits (mode & 07777); owner "self" (the effective user),
 * "root" or "other". */
static int file_info_l(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    int rc = lua_toboolean(L, 2) ? stat(path, &st) : lstat(path, &st);
    if (rc != 0) {
        int e = errno;
        lua_pushnil(L);
        lua_pushstring(L, strerror(e));
        lua_pushinteger(L, e);
        return 3;
    }
    lua_pushstring(L, S_ISDIR(st.st_mode) ? "directory" : S_ISREG(st.st_mode) ? "file"
                      : S_ISLNK(st.st_mode) ? "link" : "other");
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    lua_pushstring(L, st.st_uid == geteuid() ? "self" : st.st_uid == 0 ? "root" : "other");
    return 3;
}

CC_EXPORT int luaopen_cachectl_core(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        { "check_options", check_options_l }, { "sha256", sha256_l }, { "identity", identity_l },
        { "scrub", scrub_l }, { "monotonic", monotonic_l }, { "sleep", sleep_l }, { "preview", preview_l }, { "prepare", cc_prepare_l }, { "parsed", parsed_l }, { "error", error_l },
        { "is_uuid", is_uuid_l }, { "file_info", file_info_l }, { "redis_url", cc_redis_url_l },
        { "cache_folder", cc_cache_folder_l }, { "cache_searcher", cc_cache_searcher_l },
        { "model_policies", cc_model_policies_l }, { "policy_check", cc_policy_check_l },
        { NULL, NULL }
    };
    const curl_version_info_data *v;
    int module;
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return luaL_error(L, "cachectl.core: curl_global_init failed: %s", curl_easy_strerror(curl_init_rc));
    v = curl_version_info(CURLVERSION_NOW);
    if (!(v->features & CURL_VERSION_SSL)) luaL_error(L, "cachectl.core: libcurl lacks TLS support");
    require_cjson(L);
    cc_errors_init(L);
    cc_prepared_init(L);
    lua_newtable(L);
    module = lua_gettop(L);
    cc_session_init(L);
    cc_session_new(L);
    set_calls(L, module, module + 1);
    lua_pop(L, 1);
    set_rows(L, module);
    cc_setfuncs(L, funcs);
    cc_outcome_init(L);
    cc_yaml_init(L);
    lua_pushliteral(L, CC_VERSION);
    lua_setfield(L, -2, "version");
    luaL_getmetatable(L, "cachectl.error");     /* every error's, for the Lua layer's own */
    lua_setfield(L, -2, "error_mt");
    /* the defaults of the options every call takes: the Lua layer asks */
    lua_createtable(L, 0, 4);
    lua_pushnumber(L, CC_DEFAULT_TIMEOUT);
    lua_setfield(L, -2, "timeout");
    lua_pushnumber(L, CC_DEFAULT_CONNECT_TIMEOUT);
    lua_setfield(L, -2, "connect_timeout");
    lua_pushinteger(L, CC_DEFAULT_RETRIES);
    lua_setfield(L, -2, "retries");
    lua_pushinteger(L, CC_DEFAULT_MAX_BYTES);
    lua_setfield(L, -2, "max_response_bytes");
    lua_setfield(L, -2, "defaults");
    lua_pushstring(L, v->version);
    lua_setfield(L, -2, "curl_version");
    return 1;
}
