/* cache.c — the `cachectl` command's compile cache (core.cache_folder,
 * core.cache_searcher): the Lua files the command loads (argparse and
 * cachectl.cli.*) are compiled once and kept as bytecode, so that a run
 * loads them instead of compiling them again. Only bin/cachectl installs
 * the searcher: the library never reads nor writes a cache.
 *
 * An entry, <folder>/<module>.luac, holds the length of the source on a
 * line, the source it was compiled from, then the stripped bytecode; it is
 * used only while the file found on package.path is byte for byte that
 * source, so an edit or an upgrade is picked up at once. An entry that
 * cannot be read, written or loaded (another Lua, a full disk, no home
 * folder) only means compiling as usual. The folder is
 * $CACHECTL_CACHE_DIR, else $XDG_CACHE_HOME/cachectl, else
 * $HOME/.cache/cachectl, one subfolder per Lua version;
 * CACHECTL_CACHE_DIR= (empty) turns the cache off.
 *
 * Bytecode is code: the cache is used only where no one else can write.
 * Before the first entry is read, the folder and its version subfolder
 * must be real folders (not symbolic links) of the effective user, in a
 * folder that group and others may not write unless it is sticky (as
 * /tmp; there no one renames another's files), owned by the user or root.
 * A folder of ours that group or others may use (the cache folder or its
 * version subfolder) is set back to mode 700 and the version subfolder
 * emptied of *.luac and *.tmp (what it holds may have been written by
 * others). Missing folders are made, mode 700, when an entry is first
 * written, below an existing folder only ($HOME is never made; its .cache
 * is, as the XDG specification asks). An entry is read only when it is a
 * regular file of the effective user that group and others may not write,
 * under 16 MiB, opened without following a link; it is written to a
 * temporary file (mode 600) renamed into place, whole or not at all.
 * System calls only, no child process. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cachectl.h"

#define MAX_ENTRY (16 * 1024 * 1024)

/* What a folder is (state()), and what the cache found (cache.status). */
enum { D_OK, D_OPEN, D_MISSING, D_BAD };
enum { UNCHECKED, C_OK, C_MISSING, C_OFF };

/* The searcher's upvalue: its folder, the folders above it, what it found. */
typedef struct cache {
    int status;
    int make_base;          /* make base ($HOME/.cache) when missing */
    const char *root, *base, *top;   /* dir's parent, its parent, base's parent */
    char dir[];             /* dir, root, base and top, one after another */
} cache;

/* What a searcher holds while it runs protected: freed whatever happens. */
typedef struct held {
    cache *c;
    char *src, *entry;
    size_t n;               /* bytes of src */
    int fd;
} held;

/* The folder holding path ("." for a bare name, "/" at the top) into out
 * (room for strlen(path) + 2); returns the bytes written with the NUL. */
static size_t parent(char *out, const char *path)
{
    size_t n = strlen(path), m;
    while (n > 0 && path[n - 1] == '/') n--;
    m = n;
    while (m > 0 && path[m - 1] != '/') m--;
    if (m == 0) return (size_t)sprintf(out, ".") + 1;
    if (--m == 0) return (size_t)sprintf(out, "/") + 1;
    memcpy(out, path, m);
    out[m] = '\0';
    return m + 1;
}

/* D_OK: a real folder of ours, no rights for group and others; D_OPEN:
 * ours, with rights for them; D_MISSING; D_BAD: a link, a file, another's.
 * With up (links followed), for a folder a cache folder is in: D_OK when
 * ours or root's and not writable by group and others unless sticky. */
static int state(const char *dir, int up)
{
    struct stat st;
    if ((up ? stat(dir, &st) : lstat(dir, &st)) != 0) return errno == ENOENT ? D_MISSING : D_BAD;
    if (!S_ISDIR(st.st_mode)) return D_BAD;
    if (up)
        return (st.st_uid == geteuid() || st.st_uid == 0) && ((st.st_mode & S_ISVTX) || !(st.st_mode & 022))
            ? D_OK : D_BAD;
    if (st.st_uid != geteuid()) return D_BAD;
    return st.st_mode & 077 ? D_OPEN : D_OK;
}

/* Removes what may be an entry (*.luac, *.tmp) from a folder of ours. */
static int empty(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) return 0;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if ((n > 5 && strcmp(e->d_name + n - 5, ".luac") == 0) || (n > 4 && strcmp(e->d_name + n - 4, ".tmp") == 0))
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
    return 1;
}

/* The folders, checked before the first entry is read (and again once made). */
static int check(const cache *c)
{
    int b = state(c->base, 1), r, d;
    if (b == D_MISSING && c->make_base && state(c->top, 1) == D_OK) return C_MISSING;
    r = b == D_OK ? state(c->root, 0) : D_BAD;
    if (r == D_OPEN && chmod(c->root, 0700) != 0) r = D_BAD;
    d = r == D_MISSING ? D_MISSING : r != D_BAD ? state(c->dir, 0) : D_BAD;
    /* ours, but others could write there: what it holds is not ours to run */
    if (d == D_OPEN || (d == D_OK && r == D_OPEN))
        d = chmod(c->dir, 0700) == 0 && empty(c->dir) ? D_OK : D_BAD;
    return d == D_OK ? C_OK : d == D_MISSING ? C_MISSING : C_OFF;
}

static int readable(cache *c)
{
    if (c->status == UNCHECKED) c->status = check(c);
    return c->status == C_OK;
}

/* Whether entries may be written: the missing folders made, mode 700. */
static int writable(cache *c)
{
    const char *made[3];
    int i;
    if (readable(c) || c->status != C_MISSING) return c->status == C_OK;
    made[0] = c->base, made[1] = c->root, made[2] = c->dir;
    for (i = 0; i < 3; i++)
        if (state(made[i], 0) == D_MISSING && mkdir(made[i], 0700) == 0) chmod(made[i], 0700);
    c->status = state(c->base, 1) == D_OK && state(c->root, 0) == D_OK && check(c) == C_OK ? C_OK : C_OFF;
    return c->status == C_OK;
}

static int read_all(int fd, char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        p += r, n -= (size_t)r;
    }
    return 1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        p += r, n -= (size_t)r;
    }
    return 1;
}

/* A file opened at h->fd read whole into a new buffer; NULL when it is not
 * a regular file (a FIFO is not waited for), over max bytes, or, with
 * ours, not a file of ours that only we may write. */
static char *slurp(held *h, size_t max, int ours, size_t *n)
{
    struct stat st;
    char *p = NULL;
    if (fstat(h->fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 0 && (size_t)st.st_size <= max
        && !(ours && (st.st_uid != geteuid() || (st.st_mode & 022)))) {
        *n = (size_t)st.st_size;
        p = malloc(*n ? *n : 1);
        if (p && !read_all(h->fd, p, *n)) {
            free(p);
            p = NULL;
        }
    }
    close(h->fd);
    h->fd = -1;
    return p;
}

/* The module's file, as Lua's searcher finds it on package.path (the first
 * template naming a file that opens), read into h->src; pushes its path. */
static int find_source(lua_State *L, const char *name, held *h)
{
    const char *t, *end;
    char path[4096];
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    t = lua_tostring(L, -1);
    for (; t && *t; t = *end ? end + 1 : end) {
        size_t n = 0;
        const char *p, *s;
        end = strchr(t, ';');
        if (!end) end = t + strlen(t);
        for (p = t; p < end && n < sizeof path - 1; p++) {
            if (*p != '?') { path[n++] = *p; continue; }
            for (s = name; *s && n < sizeof path - 1; s++) path[n++] = *s == '.' ? '/' : *s;
        }
        if (p < end || n == 0) continue;         /* too long, or an empty template */
        path[n] = '\0';
        h->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (h->fd < 0) continue;
        /* not a regular file: the usual searchers say what it is */
        h->src = slurp(h, MAX_ENTRY / 2, 0, &h->n);
        if (!h->src) return 0;
        lua_pushstring(L, path);
        return 1;
    }
    return 0;
}

/* The cached function of `file` for h->src, pushed; 0 when there is none
 * that may be used. */
static int load_entry(lua_State *L, held *h, const char *file, const char *chunkname)
{
    char head[24];
    size_t hl = (size_t)snprintf(head, sizeof head, "%lu\n", (unsigned long)h->n), n;
    h->fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (h->fd < 0) return 0;
    h->entry = slurp(h, MAX_ENTRY, 1, &n);
    /* bytecode only (LUA_SIGNATURE's escape byte; LuaJIT's too): never text */
    if (!h->entry || n <= hl + h->n || memcmp(h->entry, head, hl) != 0 || memcmp(h->entry + hl, h->src, h->n) != 0
        || h->entry[hl + h->n] != LUA_SIGNATURE[0])
        return 0;
    if (luaL_loadbuffer(L, h->entry + hl + h->n, n - hl - h->n, chunkname) == 0) return 1;
    lua_pop(L, 1);
    return 0;
}

typedef struct sink { int fd, ok; } sink;

static int to_fd(lua_State *L, const void *p, size_t n, void *ud)
{
    sink *s = (sink *)ud;
    (void)L;
    s->ok = s->ok && write_all(s->fd, (const char *)p, n);
    return !s->ok;
}

/* The function on top written as the entry `file` of h->src: a temporary
 * file renamed, whole or not at all. */
static void write_entry(lua_State *L, held *h, const char *file)
{
    char head[24];
    size_t hl = (size_t)snprintf(head, sizeof head, "%lu\n", (unsigned long)h->n);
    const char *tmp = lua_pushfstring(L, "%s.%d.%p.tmp", file, (int)getpid(), (void *)h);
    sink s;
    s.fd = h->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (s.fd >= 0) {
        s.ok = write_all(s.fd, head, hl) && write_all(s.fd, h->src, h->n);
        lua_pushvalue(L, -2);
        s.ok = cc_dump_stripped(L, to_fd, &s) == 0 && s.ok;
        lua_pop(L, 1);
        h->fd = -1;
        s.ok = close(s.fd) == 0 && s.ok;
        if (!s.ok || rename(tmp, file) != 0) unlink(tmp);
    }
    lua_pop(L, 1);
}

/* Run protected (args: held, name): the loader of the module and its path,
 * or nothing. */
static int search(lua_State *L)
{
    held *h = (held *)lua_touserdata(L, 1);
    const char *name = lua_tostring(L, 2), *chunkname, *file;
    int path;
    if (!find_source(L, name, h)) return 0;
    path = lua_gettop(L);
    chunkname = lua_pushfstring(L, "@%s", lua_tostring(L, -1));
    file = lua_pushfstring(L, "%s/%s.luac", h->c->dir, name);
    if (readable(h->c) && load_entry(L, h, file, chunkname)) {
        free(h->entry);
        h->entry = NULL;
    } else {
        if (luaL_loadbuffer(L, h->src, h->n, chunkname) != 0) return 0;   /* Lua's searcher raises it */
        if (writable(h->c)) write_entry(L, h, file);
    }
    lua_pushvalue(L, path);
    return 2;
}

/* Only argparse and the command's modules, named plainly (no '/'). */
static int wanted(const char *name)
{
    const char *p;
    if (strcmp(name, "argparse") != 0 && !(strncmp(name, "cachectl.cli", 12) == 0 && (name[12] == '\0' || name[12] == '.')))
        return 0;
    for (p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-') return 0;
    return 1;
}

static int searcher(lua_State *L)
{
    held h;
    int status;
    const char *name = luaL_checkstring(L, 1);
    if (!wanted(name)) return 0;
    memset(&h, 0, sizeof h);
    h.c = (cache *)lua_touserdata(L, lua_upvalueindex(1));
    h.fd = -1;
    lua_pushcfunction(L, search);
    lua_pushlightuserdata(L, &h);
    lua_pushvalue(L, 1);
    status = lua_pcall(L, 2, 2, 0);
    free(h.src);
    free(h.entry);
    if (h.fd >= 0) close(h.fd);
    return status == 0 ? 2 : lua_error(L);
}

/* core.cache_searcher(folder [, make_base]) -> a searcher for
 * package.searchers (package.loaders in 5.1) */
int cc_cache_searcher_l(lua_State *L)
{
    size_t n;
    const char *dir = luaL_checklstring(L, 1, &n);
    cache *c = (cache *)cc_newuserdata(L, sizeof(cache) + 4 * (n + 2));
    char *p = c->dir;
    memcpy(p, dir, n + 1);
    c->root = p += n + 1;
    c->base = p += parent(p, dir);
    c->top = p += parent(p, c->root);
    parent(p, c->base);
    c->status = UNCHECKED;
    c->make_base = lua_toboolean(L, 2);
    lua_pushcclosure(L, searcher, 1);
    return 1;
}

/* core.cache_folder() -> the folder for this Lua, whether it is in
 * $HOME/.cache | nil (off) */
int cc_cache_folder_l(lua_State *L)
{
    const char *dir = getenv("CACHECTL_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    const char *tail = "", *v;
    char version[64];
    size_t n = 0;
    int in_home = 0;
    if (!dir && xdg && *xdg) dir = xdg, tail = "/cachectl";
    else if (!dir && home && *home) dir = home, tail = "/.cache/cachectl", in_home = 1;
    if (!dir || !*dir) {
        lua_pushnil(L);
        return 1;
    }
    /* the Lua running, as it names itself: jit.version, else _VERSION */
    lua_getglobal(L, "jit");
    if (lua_istable(L, -1)) lua_getfield(L, -1, "version");
    else lua_getglobal(L, "_VERSION");
    for (v = lua_tostring(L, -1); v && *v && n < sizeof version - 1; v++)
        if (isalnum((unsigned char)*v) || *v == '.') version[n++] = *v;
    version[n] = '\0';
    lua_pushfstring(L, "%s%s/%s", dir, tail, version);
    lua_pushboolean(L, in_home);
    return 2;
}
