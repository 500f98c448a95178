/* harness.c — the ThreadSanitizer check of cachectl.core (make spec-tsan):
 * THREADS threads, each with its own lua_State, load the module and make
 * their first call at the same moment, as the threads of nginx's thread
 * pool do. Half call ModelsLab, half Omni with one shared token (so the
 * process-wide rate-limit table is shared too).
 *
 * The main thread dlopens the two shared objects first (without running
 * their luaopen) and keeps them: the threads' require then only counts
 * references, so the dynamic loader, whose locks ThreadSanitizer cannot
 * see, never maps or unmaps them concurrently.
 *
 *   harness BASE_URL CPATH   prints "ok N" and exits 0 when every call succeeded */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define THREADS 16

static const char *base, *cpath;
static pthread_barrier_t start;
static int ok[THREADS];

static const char chunk[] =
    "local cpath, base, i = ...\n"
    "package.cpath = cpath .. ';' .. package.cpath\n"
    "local core = require 'cachectl.core'\n"
    "local res, err\n"
    "if i % 2 == 0 then\n"
    "  res, err = core.modelslab.clear_cache{ key = 'tsan-key-' .. i, base_url = base }\n"
    "else\n"
    "  res, err = core.omni.reset_cache{ token = 'tsan-token', base_url = base,\n"
    "    model_id = '3f2504e0-4f89-41d3-9a0c-0305e82c3301', policy = 'daily' }\n"
    "end\n"
    "assert(res, tostring(err))\n";

static void *worker(void *arg)
{
    long i = (long)arg;
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadstring(L, chunk) != LUA_OK) {
        fprintf(stderr, "thread %ld: %s\n", i, lua_tostring(L, -1));
        lua_close(L);
        return NULL;
    }
    lua_pushstring(L, cpath);
    lua_pushstring(L, base);
    lua_pushinteger(L, i);
    pthread_barrier_wait(&start);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK) fprintf(stderr, "thread %ld: %s\n", i, lua_tostring(L, -1));
    else ok[i] = 1;
    lua_close(L);
    return NULL;
}

/* Maps cachectl.core and cjson once, as found on cpath; returns 0 when
 * either is missing. */
static int preload(void **handles)
{
    static const char find[] =
        "local cpath = ... .. ';' .. package.cpath\n"
        "return package.searchpath('cachectl.core', cpath), package.searchpath('cjson', cpath)\n";
    lua_State *L = luaL_newstate();
    int i, found = 1;
    luaL_openlibs(L);
    if (luaL_loadstring(L, find) != LUA_OK) found = 0;
    lua_pushstring(L, cpath);
    if (!found || lua_pcall(L, 1, 2, 0) != LUA_OK) found = 0;
    for (i = 0; found && i < 2; i++) {
        const char *path = lua_tostring(L, i - 2);
        if (!path || !(handles[i] = dlopen(path, RTLD_NOW | RTLD_LOCAL))) found = 0;
    }
    lua_close(L);
    return found;
}

int main(int argc, char **argv)
{
    pthread_t t[THREADS];
    void *handles[2] = { NULL, NULL };
    long i;
    int n = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: harness BASE_URL CPATH\n");
        return 2;
    }
    base = argv[1];
    cpath = argv[2];
    if (!preload(handles)) {
        fprintf(stderr, "harness: cachectl.core or cjson not found on %s\n", cpath);
        return 2;
    }
    pthread_barrier_init(&start, NULL, THREADS);
    for (i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);
    for (i = 0; i < THREADS; i++) n += ok[i];
    for (i = 0; i < 2; i++) dlclose(handles[i]);
    printf("ok %d\n", n);
    return n == THREADS ? 0 : 1;
}
