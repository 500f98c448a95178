/* fork_helper.c — what the fork spec needs of POSIX and Lua lacks:
 * fork(), waitpid() and _exit(), as a tiny Lua module (any Lua ABI).
 * Compiled by support/fork.lua into a temp folder; never part of cachectl. */
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <lua.h>
#include <lauxlib.h>

int luaopen_fork_helper(lua_State *L);

/* pid = fork(): 0 in the child */
static int l_fork(lua_State *L)
{
    pid_t pid = fork();
    if (pid < 0) return luaL_error(L, "fork failed");
    lua_pushinteger(L, (lua_Integer)pid);
    return 1;
}

/* status = wait(pid): the child's exit status, or nil when it did not exit */
static int l_wait(lua_State *L)
{
    int status = 0;
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    while (waitpid(pid, &status, 0) < 0) {}
    if (WIFEXITED(status)) lua_pushinteger(L, WEXITSTATUS(status));
    else lua_pushnil(L);
    return 1;
}

/* _exit(code): ends the process at once, without closing the Lua state
 * nor running atexit handlers */
static int l_exit(lua_State *L)
{
    _exit((int)luaL_optinteger(L, 1, 0));
    return 0;
}

int luaopen_fork_helper(lua_State *L)
{
    lua_newtable(L);
    lua_pushcfunction(L, l_fork);
    lua_setfield(L, -2, "fork");
    lua_pushcfunction(L, l_wait);
    lua_setfield(L, -2, "wait");
    lua_pushcfunction(L, l_exit);
    lua_setfield(L, -2, "_exit");
    return 1;
}
