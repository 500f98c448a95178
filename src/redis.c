/* redis.c — the fleet's Redis, from C through hiredis (the Redis project's
 * own client): a session's connections (one per URL), driven without
 * blocking by the engine's loop (their descriptors polled beside libcurl's,
 * hiredis's async context told when to read and write), the turn script
 * that reserves k starts of the sliding window in one round trip, and plain
 * commands for the Lua layer's coalescing (session:redis).
 *
 * Every wait on Redis has a due time (the caller's share of its timeout):
 * past it the connection is dropped and its askers are told it failed.
 * After a failure the URL is left alone for a second (DOWN_FOR): the calls
 * meanwhile use the process window. Messages name the server, never the
 * password (nothing of the URL but host, port and db is ever quoted). */
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include "engine.h"
#include "digest.h"

#define DOWN_FOR 1.0

struct cc_redis {
    struct cc_redis *next;
    char *url;                  /* as given (it may hold the password: wiped when freed) */
    char *host, *user, *password;
    int port, db;
    char where[300];            /* "Redis at host:port/db" */
    redisAsyncContext *ac;
    int rd, wr;                 /* hiredis wants to read, to write */
    int pending;                /* replies awaited */
    double due;                 /* when the last of them must have come */
    double down_until;          /* after a failure: not tried before */
    int drop;                   /* failed: free ac at the next look (never inside hiredis) */
    int expiring;               /* being dropped for a missed due time */
    double opened;              /* when ac connected (0: not yet) */
    double asked;               /* when the last ask was sent */
    long pid;                   /* the process that opened ac */
    char why[700];              /* the last failure, with `where` in front */
};

static void conn_free(cc_redis *c)
{
    if (c->url) cc_wipe(c->url, strlen(c->url));
    if (c->password) cc_wipe(c->password, strlen(c->password));
    free(c->url);
    free(c->host);
    free(c->user);
    free(c->password);
    free(c);
}

/* "Redis at host:port[/db]", an IPv6 address in brackets: how messages
 * name the server (nothing else of the URL is ever quoted). */
static void where_of(char *out, size_t sz, const char *host, int port, int db)
{
    int v6 = strchr(host, ':') != NULL, n;
    n = snprintf(out, sz, "Redis at %s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
    if (db && n > 0 && (size_t)n < sz) snprintf(out + n, sz - (size_t)n, "/%d", db);
}

/* A connection record for url (not connected yet); NULL when out of
 * memory. The URL was checked when the request was read. */
static cc_redis *conn_new(const char *url)
{
    cc_redis_url p;
    cc_redis *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    cc_redis_url_parse(url, strlen(url), &p);
    c->port = (int)p.port;
    c->db = (int)p.db;
    c->url = strdup(url);
    c->host = cc_pct_decode(p.host, p.host_len);
    if (p.pass && p.user_len) c->user = cc_pct_decode(p.user, p.user_len);
    if (p.pass) c->password = cc_pct_decode(p.pass, p.pass_len);
    if (!c->url || !c->host || (p.pass && !c->password) || (p.pass && p.user_len && !c->user)) {
        conn_free(c);
        return NULL;
    }
    where_of(c->where, sizeof c->where, c->host, c->port, c->db);
    return c;
}

/* core.redis_url(url) -> { host, port, db, user, password, ipv6, where } or
 * nil, message: the URL as the turns read it, for the Lua layer's
 * lua-resty-redis side (user and password percent-decoded, host without
 * brackets; `where` names the server in messages). The message quotes
 * nothing of the URL. */
int cc_redis_url_l(lua_State *L)
{
    size_t n;
    const char *url = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
    const char *why = url ? NULL : "invalid Redis URL (" CC_REDIS_URL_FORM "): not a string";
    char *text, where[300];
    cc_redis_url p;
    if (!why) why = cc_redis_url_parse(url, n, &p);
    if (why) {
        lua_pushnil(L);
        lua_pushstring(L, why);
        return 2;
    }
    text = cc_newuserdata(L, p.host_len + p.user_len + p.pass_len + 1);  /* raises before anything is held */
    lua_createtable(L, 0, 7);
    lua_pushlstring(L, p.host, p.host_len);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, (lua_Integer)p.port);
    lua_setfield(L, -2, "port");
    lua_pushinteger(L, (lua_Integer)p.db);
    lua_setfield(L, -2, "db");
    lua_pushboolean(L, p.host > url && p.host[-1] == '[');
    lua_setfield(L, -2, "ipv6");
    memcpy(text, p.host, p.host_len);
    text[p.host_len] = '\0';
    where_of(where, sizeof where, text, (int)p.port, (int)p.db);
    lua_pushstring(L, where);
    lua_setfield(L, -2, "where");
    if (p.pass && p.user_len) {
        lua_pushlstring(L, text, cc_pct_decode_to(text, p.user, p.user_len));
        lua_setfield(L, -2, "user");
    }
    if (p.pass) {
        size_t len = cc_pct_decode_to(text, p.pass, p.pass_len);
        lua_pushlstring(L, text, len);
        cc_wipe(text, len);
        lua_setfield(L, -2, "password");
    }
    return 1;
}

/* ---- failing ----------------------------------------------------------- */

/* The URL's password masked in text (size bytes; Redis may quote a
 * command's arguments in its error texts) by the one scrubber. A password
 * under 4 bytes that is still there leaves the whole text out: masked in
 * place, it would show through the words around it ("dis**led"). */
static void scrub_why(const cc_redis *c, char *text, size_t size)
{
    size_t pn;
    if (!c->password || !(pn = strlen(c->password))) return;
    text[cc_scrub(text, strlen(text), c->password, pn)] = '\0';
    if (strstr(text, c->password))
        snprintf(text, size, "Redis: a message left out (it holds the characters of the URL's password)");
}

static void fail(cc_redis *c, const char *what, const char *detail)
{
    if (c->drop) return;        /* the first failure is the one to tell */
    snprintf(c->why, sizeof c->why, "%s: %s%s%s", c->where, what, detail ? ": " : "", detail ? detail : "");
    scrub_why(c, c->why, sizeof c->why);
    c->drop = 1;
    c->down_until = cc_mono() + DOWN_FOR;
}

/* Frees the context of a failed connection: hiredis calls what still
 * awaits a reply with none. Never called from inside hiredis. */
static void drop_now(cc_redis *c)
{
    if (c->ac) redisAsyncFree(c->ac);      /* its cleanup hook clears c->ac */
    c->ac = NULL;
    c->rd = c->wr = 0;
    c->pending = 0;
    c->due = HUGE_VAL;
    c->drop = c->expiring = 0;
    c->opened = 0;
}

/* ---- hiredis's event hooks: flags the engine's poll reads -------------- */

static void add_read(void *p) { ((cc_redis *)p)->rd = 1; }
static void del_read(void *p) { ((cc_redis *)p)->rd = 0; }
static void add_write(void *p) { ((cc_redis *)p)->wr = 1; }
static void del_write(void *p) { ((cc_redis *)p)->wr = 0; }
static void cleanup(void *p)
{
    cc_redis *c = p;
    c->ac = NULL;
    c->rd = c->wr = 0;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    cc_redis *c = ac->data;
    if (status == REDIS_OK) c->opened = cc_mono();
    else fail(c, "cannot connect", ac->errstr);
}

/* AUTH and SELECT: refused means every command after them fails too. */
/* One reply fewer awaited; none left: no due time. */
static void answered(cc_redis *c)
{
    if (--c->pending <= 0) {
        c->pending = 0;
        c->due = HUGE_VAL;
    }
}

static void on_login(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *rep = reply;
    cc_redis *c = ac->data;
    answered(c);
    if (rep && rep->type == REDIS_REPLY_ERROR) fail(c, priv ? "SELECT refused" : "login refused", rep->str);
}

/* Replies are a few numbers: an array header announcing more elements than
 * this is refused (hiredis 0.14 would allocate and walk them all), which
 * fails the connection. */
#define MAX_ELEMENTS 100000
static const redisReplyObjectFunctions *hiredis_own;
static redisReplyObjectFunctions bounded;

static void *bounded_array(const redisReadTask *task, int elements)
{
    return elements > MAX_ELEMENTS ? NULL : hiredis_own->createArray(task, elements);
}

static void limit_arrays(redisAsyncContext *ac)
{
    if (!ac->c.reader) return;
    if (!hiredis_own) {     /* the library's own table, the same for every context */
        hiredis_own = ac->c.reader->fn;
        bounded = *hiredis_own;
        bounded.createArray = bounded_array;
    }
    if (ac->c.reader->fn == hiredis_own) ac->c.reader->fn = &bounded;
}

/* hiredis writes with write(2): a peer that went away must not kill the
 * process with SIGPIPE (nginx ignores it; the standalone interpreter does
 * not), so it is blocked around the write and a pending one consumed. */
static void handle_write(redisAsyncContext *ac)
{
    sigset_t pipe, old, pending;
    int was = 0;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    sigpending(&pending);
    was = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old);
    redisAsyncHandleWrite(ac);
    sigpending(&pending);
    if (!was && sigismember(&pending, SIGPIPE)) {
        struct timespec zero = { 0, 0 };
        sigtimedwait(&pipe, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* The address of c's host, looked up within `due` (the system resolver
 * runs in glibc's own thread; a lookup that takes longer is given up):
 * written to ip, or 0 with c->why set. A numeric host is its own address. */
static int resolve(cc_redis *c, double due, char ip[INET6_ADDRSTRLEN])
{
    struct lookup { struct gaicb req; struct addrinfo hints; char host[1]; } *q;
    struct gaicb *list[1];
    struct timespec ts;
    double left = due - cc_mono();
    int rc;
    unsigned char probe[16];
    if (inet_pton(AF_INET, c->host, probe) == 1 || inet_pton(AF_INET6, c->host, probe) == 1) {
        snprintf(ip, INET6_ADDRSTRLEN, "%s", c->host);
        return 1;
    }
    /* on the heap: glibc's thread writes to it until the lookup ends */
    if (!(q = calloc(1, sizeof *q + strlen(c->host)))) return 0;
    memcpy(q->host, c->host, strlen(c->host) + 1);
    q->hints.ai_family = AF_UNSPEC;
    q->hints.ai_socktype = SOCK_STREAM;
    q->req.ar_name = q->host;
    q->req.ar_request = &q->hints;
    list[0] = &q->req;
    if (left <= 0 || getaddrinfo_a(GAI_NOWAIT, list, 1, NULL) != 0) {
        free(q);
        snprintf(c->why, sizeof c->why, "%s: cannot look the host up", c->where);
        return 0;
    }
    ts.tv_sec = (time_t)left;
    ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
    gai_suspend((const struct gaicb *const *)list, 1, &ts);
    if (gai_error(&q->req) == EAI_INPROGRESS && gai_cancel(&q->req) != EAI_CANCELED) {
        /* still running in glibc's thread: the record is left to it (a
         * small leak, only for a resolver slower than the call's timeout) */
        snprintf(c->why, sizeof c->why, "%s: the host name was not resolved in time", c->where);
        return 0;
    }
    rc = gai_error(&q->req);
    if (rc != 0 || !q->req.ar_result) {
        snprintf(c->why, sizeof c->why, "%s: cannot resolve the host: %s", c->where,
                 rc == EAI_CANCELED ? "not in time" : gai_strerror(rc));
        if (q->req.ar_result) freeaddrinfo(q->req.ar_result);
        free(q);
        return 0;
    }
    rc = getnameinfo(q->req.ar_result->ai_addr, q->req.ar_result->ai_addrlen, ip, INET6_ADDRSTRLEN, NULL, 0,
                     NI_NUMERICHOST);
    freeaddrinfo(q->req.ar_result);
    free(q);
    if (rc != 0) snprintf(c->why, sizeof c->why, "%s: cannot resolve the host", c->where);
    return rc == 0;
}

/* A connected (or connecting) context, logged in; 0 when none can be had
 * before `due` (c->why says why). */
static int ensure(cc_redis *c, double now, double due)
{
    char ip[INET6_ADDRSTRLEN];
    const char *argv[3];
    size_t len[3];
    int argc = 0;
    if (c->drop) drop_now(c);
    if (c->ac) return 1;
    if (now < c->down_until) return 0;
    c->why[0] = '\0';
    c->due = HUGE_VAL;          /* set by the first ask */
    if (!resolve(c, due, ip)) {
        c->down_until = now + DOWN_FOR;
        return 0;
    }
    if (!(c->ac = redisAsyncConnect(ip, c->port)) || c->ac->err) {
        snprintf(c->why, sizeof c->why, "%s: cannot connect: %s", c->where, c->ac ? c->ac->errstr : "out of memory");
        if (c->ac) redisAsyncFree(c->ac);
        c->ac = NULL;
        c->down_until = now + DOWN_FOR;
        return 0;
    }
    fcntl(c->ac->c.fd, F_SETFD, FD_CLOEXEC);
    c->pid = (long)getpid();
    limit_arrays(c->ac);
    c->ac->data = c;
    c->ac->ev.data = c;
    c->ac->ev.addRead = add_read;
    c->ac->ev.delRead = del_read;
    c->ac->ev.addWrite = add_write;
    c->ac->ev.delWrite = del_write;
    c->ac->ev.cleanup = cleanup;
    c->wr = 1;      /* the connection completes when the socket is writable */
    redisAsyncSetConnectCallback(c->ac, on_connect);
    if (c->password) {
        argv[argc] = "AUTH", len[argc++] = 4;
        if (c->user) argv[argc] = c->user, len[argc] = strlen(c->user), argc++;
        argv[argc] = c->password, len[argc] = strlen(c->password), argc++;
        if (redisAsyncCommandArgv(c->ac, on_login, NULL, argc, argv, len) == REDIS_OK) c->pending++;
    }
    if (c->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", c->db);
        argv[0] = "SELECT", len[0] = 6, argv[1] = db, len[1] = strlen(db);
        if (redisAsyncCommandArgv(c->ac, on_login, c, 2, argv, len) == REDIS_OK) c->pending++;
    }
    return 1;
}

cc_redis *cc_redis_get(cc_session *s, const char *url)
{
    cc_redis *c;
    for (c = s->redis; c; c = c->next)
        if (strcmp(c->url, url) == 0) {
            if (c->ac && c->pid != (long)getpid()) {
                /* opened by the parent before a fork: its socket is the
                 * parent's conversation; left alone (and its memory with it) */
                c->ac = NULL;
                c->rd = c->wr = c->pending = 0;
                c->due = HUGE_VAL;
                c->opened = 0;
            }
            return c;
        }
    if (!(c = conn_new(url))) return NULL;
    c->next = s->redis;
    s->redis = c;
    return c;
}

const char *cc_redis_why(const cc_redis *c)
{
    return c->why[0] ? c->why : c->where;
}

void cc_redis_close_all(cc_session *s)
{
    while (s->redis) {
        cc_redis *c = s->redis;
        s->redis = c->next;
        drop_now(c);
        conn_free(c);
    }
}

/* ---- the loop's side ----------------------------------------------------- */

int cc_redis_fds(cc_session *s, struct curl_waitfd *fds, int max)
{
    cc_redis *c;
    int n = 0;
    for (c = s->redis; c && n < max; c = c->next) {
        /* an idle kept connection is not polled: a close by the server is
         * seen at its next use */
        if (!c->ac || c->drop || !(c->wr || (c->rd && c->pending > 0))) continue;
        fds[n].fd = c->ac->c.fd;
        fds[n].events = (short)((c->rd ? CURL_WAIT_POLLIN : 0) | (c->wr ? CURL_WAIT_POLLOUT : 0));
        fds[n].revents = 0;
        n++;
    }
    return n;
}

double cc_redis_due(const cc_session *s)
{
    const cc_redis *c;
    double due = HUGE_VAL;
    for (c = s->redis; c; c = c->next)
        if (c->ac && c->pending > 0 && c->due < due) due = c->due;
    return due;
}

/* Reads and writes what poll found ready, then drops the connections that
 * failed or missed their due time (their askers hear of it through their
 * callbacks). */
void cc_redis_io(cc_session *s, const struct curl_waitfd *fds, int n, double now)
{
    cc_redis *c;
    int i;
    for (i = 0; i < n; i++) {
        for (c = s->redis; c && !(c->ac && c->ac->c.fd == fds[i].fd); c = c->next) {}
        if (!c || !fds[i].revents) continue;
        if (fds[i].revents & (CURL_WAIT_POLLIN | CURL_WAIT_POLLPRI)) redisAsyncHandleRead(c->ac);
        if (c->ac && (fds[i].revents & CURL_WAIT_POLLOUT)) handle_write(c->ac);
    }
    for (c = s->redis; c; c = c->next) {
        if (c->ac && c->pending > 0 && now >= c->due && !c->drop) {
            char t[64];
            snprintf(t, sizeof t, "no answer within %.3gs", c->due - c->asked);
            fail(c, t, NULL);
            c->expiring = 1;
        }
        if (c->drop) drop_now(c);
    }
}

/* ---- turns -------------------------------------------------------------- */

/* One turn per pair ARGV[i], ARGV[i + 1] (i = 3, 5, ...): the item's budget
 * and the wait before which it must not start (its process's own window:
 * the starts it made while Redis was away). At most n starts in any `per`
 * microseconds, the list the last n of them (server clock, newest first).
 * Each reply element: the wait in µs (reserved), or -(wait + 1) when it lies
 * past that item's budget (nothing reserved); then the server's now (µs),
 * from which a reserved start can be named to give it back (LREM). */
static const char turn_script[] =
    "if redis.replicate_commands then redis.replicate_commands() end\n"
    "local key, n, per = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local out = {}\n"
    "for i = 3, #ARGV - 1, 2 do\n"
    "  local start = now + tonumber(ARGV[i + 1])\n"
    "  local last = redis.call('LINDEX', key, 0)\n"
    "  if last then start = math.max(start, tonumber(last)) end\n"
    "  local nth = redis.call('LINDEX', key, n - 1)\n"
    "  if nth then start = math.max(start, tonumber(nth) + per) end\n"
    "  local wait = start - now\n"
    "  if wait > tonumber(ARGV[i]) then out[#out + 1] = -wait - 1 else\n"
    "    redis.call('LPUSH', key, string.format('%.0f', start))\n"
    "    redis.call('LTRIM', key, 0, n - 1)\n"
    "    redis.call('PEXPIRE', key, math.ceil((wait + per) / 1000) + 1)\n"
    "    out[#out + 1] = wait\n"
    "  end\n"
    "end\n"
    "out[#out + 1] = now\n"
    "return out\n";
static char turn_sha[41];
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void make_sha(void)
{
    cc_sha1_hex(turn_script, sizeof turn_script - 1, turn_sha);
}

/* An ask in flight. Its items live as long as their run, which never ends
 * with an ask in flight (cc_redis_settle). */
typedef struct turn_op {
    cc_redis *c;
    int k, eval;
    double sent;
    char **argv;            /* EVALSHA sha 1 key n per (budget notbefore)... */
    size_t *len;
    xfer *x[1];             /* k of them */
} turn_op;

static void op_free(turn_op *op)
{
    int i;
    for (i = 4; op->argv && i < 2 * op->k + 6; i++) free(op->argv[i]);
    free(op->argv);
    free(op->len);
    free(op);
}

static void op_tell(turn_op *op, int state)
{
    int i;
    for (i = 0; i < op->k; i++) op->x[i]->rstate = state;
}

/* Every element a wait in µs: an integer within a day either way; then
 * the server's clock. */
static int sane(const redisReply *rep)
{
    size_t i;
    if (rep->element[rep->elements - 1]->type != REDIS_REPLY_INTEGER) return 0;
    for (i = 0; i + 1 < rep->elements; i++)
        if (rep->element[i]->type != REDIS_REPLY_INTEGER || rep->element[i]->integer > 86400000000LL ||
            rep->element[i]->integer < -86400000001LL)
            return 0;
    return 1;
}

static void on_turn(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *rep = reply;
    turn_op *op = priv;
    cc_redis *c = op->c;
    int i;
    (void)ac;
    answered(c);
    if (rep && rep->type == REDIS_REPLY_ERROR && !op->eval && strncmp(rep->str, "NOSCRIPT", 8) == 0 && c->ac) {
        /* the server does not know the script yet: send it whole once */
        op->eval = 1;
        op->argv[0] = "EVAL";
        op->len[0] = 4;
        op->argv[1] = (char *)turn_script;
        op->len[1] = sizeof turn_script - 1;
        if (redisAsyncCommandArgv(c->ac, on_turn, op, 2 * op->k + 6, (const char **)op->argv, op->len) == REDIS_OK) {
            c->pending++;
            return;
        }
    }
    if (rep && c->drop) {
        /* AUTH or SELECT failed before: whatever this reply says, it was not
         * the window of the database asked for */
        op_tell(op, RS_FAILED);
    } else if (!rep) {
        /* no reply: a kept connection that broke before this ask is asked
         * again on a fresh one; else the ask failed */
        int again = !c->expiring && c->opened > 0 && c->opened < op->sent && !op->x[0]->redis_again;
        for (i = 0; i < op->k && again; i++) op->x[i]->redis_again = 1;
        if (!again && !c->drop && !c->why[0]) fail(c, "connection lost", NULL);
        op_tell(op, again ? RS_AGAIN : RS_FAILED);
    } else if (rep->type == REDIS_REPLY_ERROR) {
        /* refused (an ACL, a full Redis): the connection itself still works */
        snprintf(c->why, sizeof c->why, "%s: the turn script failed: %s", c->where, rep->str);
        scrub_why(c, c->why, sizeof c->why);
        op_tell(op, RS_FAILED);
    } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements != (size_t)op->k + 1) {
        fail(c, "unexpected reply to the turn script", NULL);
        op_tell(op, RS_FAILED);
    } else if (!sane(rep)) {
        fail(c, "unexpected reply to the turn script", NULL);
        op_tell(op, RS_FAILED);
    } else {
        long long now = rep->element[op->k]->integer;
        for (i = 0; i < op->k; i++) {
            long long v = rep->element[i]->integer;
            op->x[i]->rstate = v >= 0 ? RS_GRANTED : RS_LATE;
            op->x[i]->rwait = (v >= 0 ? (double)v : (double)(-v - 1)) / 1e6;
            op->x[i]->rstart = v >= 0 ? now + v : 0;
        }
    }
    op_free(op);
}

static char *num_text(double v, const char *fmt)
{
    char t[64];
    snprintf(t, sizeof t, fmt, v);
    return strdup(t);
}

/* Asks c for a turn for each of xs[0..k) (one key, one limit) in one
 * round trip, with each item's budget; the reply must come by `due`.
 * Returns 1 (the items are RS_ASKED), 0 when Redis cannot be asked now
 * (c->why says why), -1 when out of memory. */
int cc_redis_turns(cc_redis *c, xfer **xs, const double *notbefore, int k, double now, double due)
{
    turn_op *op;
    int i, bad = 0;
    pthread_once(&sha_once, make_sha);
    if (!ensure(c, now, due)) return 0;
    if (!(op = calloc(1, sizeof *op + (size_t)k * sizeof op->x[0]))) return -1;
    op->c = c, op->k = k, op->sent = now;
    op->argv = calloc(2 * (size_t)k + 6, sizeof *op->argv);
    op->len = calloc(2 * (size_t)k + 6, sizeof *op->len);
    if (!op->argv || !op->len) bad = 1;
    if (!bad) {
        const cc_req *q = &xs[0]->req;
        op->argv[0] = "EVALSHA", op->argv[1] = turn_sha, op->argv[2] = "1", op->argv[3] = q->lim_name;
        op->argv[4] = num_text(q->limit_requests, "%.0f");
        op->argv[5] = num_text(q->limit_per * 1e6 < 1 ? 1 : floor(q->limit_per * 1e6 + 0.5), "%.0f");
        for (i = 0; i < k; i++) {
            double budget = xs[i]->deadline - now, nb = notbefore[i] > 0 ? notbefore[i] : 0;
            op->x[i] = xs[i];
            op->argv[6 + 2 * i] = num_text(budget > 1e9 ? 1e15 : floor(budget * 1e6), "%.0f");
            op->argv[7 + 2 * i] = num_text(nb > 1e9 ? 1e15 : ceil(nb * 1e6), "%.0f");
        }
        for (i = 0; i < 2 * k + 6; i++) {
            if (i >= 4 && !op->argv[i]) bad = 1;
            else op->len[i] = strlen(op->argv[i]);
        }
    }
    if (bad) {
        op_free(op);
        return -1;
    }
    if (redisAsyncCommandArgv(c->ac, on_turn, op, 2 * k + 6, (const char **)op->argv, op->len) != REDIS_OK) {
        fail(c, "cannot send the turn script", c->ac->errstr);
        op_free(op);
        return 0;
    }
    c->pending++;
    if (due < c->due) c->due = due;
    c->asked = now;
    op_tell(op, RS_ASKED);
    if (c->opened > 0) handle_write(c->ac);     /* connected: out now, not after a poll */
    return 1;
}

/* A run ends (an error, a signal) with asks in flight: their connections
 * are dropped now, while the items the callbacks write to still exist. */
void cc_redis_settle(cc_session *s)
{
    cc_redis *c;
    for (c = s->redis; c; c = c->next)
        if (c->ac && c->pending > 0) {
            c->expiring = c->drop = 1;      /* not a failure of Redis: not left alone */
            drop_now(c);
        }
}

/* ---- plain commands (session:redis) -------------------------------------- */

/* A reply, copied out of hiredis (which frees its own after the callback)
 * so that Lua values are made outside hiredis's calls. */
typedef struct creply {
    int type, done, again;      /* again: a kept connection broke; ask once more */
    double sent;
    long long integer;
    char *str;
    size_t len, n;
    struct creply *el;
} creply;

static void creply_free(creply *r)
{
    size_t i;
    for (i = 0; i < r->n; i++) creply_free(&r->el[i]);
    free(r->el);
    free(r->str);
}

static int creply_copy(creply *d, const redisReply *s, int depth)
{
    size_t i;
    memset(d, 0, sizeof *d);
    d->type = s->type;
    d->integer = s->integer;
    if (s->str && (d->str = malloc(s->len + 1)) != NULL) {
        memcpy(d->str, s->str, s->len);
        d->str[s->len] = '\0';
        d->len = s->len;
    } else if (s->str) {
        return 0;
    }
    if (s->type == REDIS_REPLY_ARRAY && s->elements > 0 && depth < 4) {
        if (!(d->el = calloc(s->elements, sizeof *d->el))) return 0;
        d->n = s->elements;
        for (i = 0; i < s->elements; i++)
            if (!creply_copy(&d->el[i], s->element[i], depth + 1)) return 0;
    }
    return 1;
}

static void on_command(redisAsyncContext *ac, void *reply, void *priv)
{
    creply *out = priv;
    cc_redis *c = ac->data;
    answered(c);
    if (!reply) {
        out->type = -1;
        out->again = !c->expiring && c->opened > 0 && c->opened < out->sent;
        if (!out->again && !c->drop && !c->why[0]) fail(c, "connection lost", NULL);
    } else if (!creply_copy(out, reply, 0)) {
        out->type = -2;
    }
    out->done = 1;
}

static void push_reply(lua_State *L, const creply *r)
{
    size_t i;
    switch (r->type) {
    case REDIS_REPLY_INTEGER: lua_pushinteger(L, (lua_Integer)r->integer); break;
    case REDIS_REPLY_STRING: case REDIS_REPLY_STATUS: lua_pushlstring(L, r->str, r->len); break;
    case REDIS_REPLY_ARRAY:
        lua_createtable(L, (int)r->n, 0);
        for (i = 0; i < r->n; i++) {
            push_reply(L, &r->el[i]);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    default: lua_pushnil(L);
    }
}

/* Waits for c until out is done or `due`, reading and writing as poll
 * says. Returns 1 when the connection failed meanwhile (a refused login
 * among others: then out holds no answer worth giving). */
/* Whether a signal handler set a hook on L or the main thread since `was`
 * (the standalone interpreter's Ctrl-C). */
static int hooked(lua_State *L, lua_State *m, const lua_Hook was[2])
{
    return lua_gethook(L) != was[0] || (m && lua_gethook(m) != was[1]);
}

static int wait_reply(cc_redis *c, creply *out, double due, lua_State *L, lua_State *m)
{
    int failed;
    lua_Hook was[2];
    was[0] = lua_gethook(L);
    was[1] = m ? lua_gethook(m) : NULL;
    while (!out->done && c->ac && !c->drop) {
        struct pollfd p;
        double left = due - cc_mono();
        if (left <= 0 || hooked(L, m, was)) {
            fail(c, left <= 0 ? "no answer in time" : "interrupted by a signal", NULL);
            c->expiring = 1;
            break;
        }
        if (left > 0.1) left = 0.1;     /* a look at the hooks now and then */
        p.fd = c->ac->c.fd;
        p.events = (short)((c->rd ? POLLIN : 0) | (c->wr ? POLLOUT : 0));
        p.revents = 0;
        if (poll(&p, 1, (int)ceil(left * 1000)) > 0) {
            if (p.revents & (POLLIN | POLLERR | POLLHUP)) redisAsyncHandleRead(c->ac);
            if (c->ac && (p.revents & POLLOUT)) handle_write(c->ac);
        }
    }
    failed = c->drop;
    if (c->drop) drop_now(c);
    return failed;
}

/* ok, value = session:redis(url, budget, connect_timeout, arg...): one command,
 * its reply as Lua values (nil for none; a table for an array), or false,
 * "unreachable" | "error" | "invalid", message. The reply must come within
 * min(connect_timeout, budget) seconds. Not while a call runs on the session. */
/* Sends one command on c and waits for its reply within min(ct, budget),
 * asking once more on a fresh connection when a kept one broke. Returns 1
 * when the connection failed meanwhile (a refused login or SELECT). */
static int ask(cc_redis *c, creply *out, int argc, const char **argv, const size_t *len, double budget,
               double ct, lua_State *L, lua_State *m)
{
    int tries, failed = 0;
    for (tries = 0; tries < 2 && (tries == 0 || out->again); tries++) {
        double now = cc_mono(), due = now + (ct < budget ? ct : budget);
        memset(out, 0, sizeof *out);
        if (!ensure(c, now, due)) break;
        out->sent = now;
        if (redisAsyncCommandArgv(c->ac, on_command, out, argc, argv, len) != REDIS_OK) {
            fail(c, "cannot send a command", c->ac->errstr);
            drop_now(c);
            break;
        }
        c->pending++;
        c->asked = now;
        c->due = due;
        failed = wait_reply(c, out, due, L, m);
        if (!out->done) drop_now(c);      /* its callback sees out before it goes */
    }
    return failed;
}

/* true, reply; or false, "error" | "unreachable", message */
static int push_outcome(lua_State *L, cc_redis *c, creply *out)
{
    char msg[700];
    if (out->done && out->type >= 0 && out->type != REDIS_REPLY_ERROR) {
        lua_pushboolean(L, 1);
        push_reply(L, out);
        return 2;
    }
    lua_pushboolean(L, 0);
    if (out->type == REDIS_REPLY_ERROR) {
        lua_pushliteral(L, "error");
        snprintf(msg, sizeof msg, "%s: %s", c->where, out->str ? out->str : "error");
        scrub_why(c, msg, sizeof msg);
        lua_pushstring(L, msg);
    } else {
        lua_pushstring(L, out->type == -2 ? "error" : "unreachable");
        lua_pushstring(L, out->type == -2 ? "not enough memory" : cc_redis_why(c));
    }
    return 3;
}

int cc_redis_command(lua_State *L, cc_session *s)
{
    size_t ulen, i, *len;
    const char *url = luaL_checklstring(L, 2, &ulen), *why, **argv;
    double budget = luaL_checknumber(L, 3), ct = luaL_optnumber(L, 4, 10);
    int argc = lua_gettop(L) - 4, n;
    cc_redis *c;
    creply out;
    cc_redis_url parts;
    luaL_argcheck(L, argc >= 1 && argc <= 64, 5, "a Redis command");
    if (s->active) return luaL_error(L, "cachectl: session:redis while a call runs on the session");
    if ((why = cc_redis_url_parse(url, ulen, &parts)) != NULL) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "invalid");
        lua_pushstring(L, why);
        return 3;
    }
    argv = cc_newuserdata(L, (size_t)argc * (sizeof *argv + sizeof *len));
    len = (size_t *)(argv + argc);
    for (i = 0; i < (size_t)argc; i++) argv[i] = luaL_checklstring(L, (int)i + 5, &len[i]);
    if (!(c = cc_redis_get(s, url))) return luaL_error(L, "not enough memory");
    memset(&out, 0, sizeof out);
    if (ask(c, &out, argc, argv, len, budget, ct, L, s->main)) out.type = -1;  /* the login's failure tells */
    n = push_outcome(L, c, &out);
    creply_free(&out);
    return n;
}

/* Gives back a start Redis reserved for x that x never used (its call
 * ended before: an error from on_event, Ctrl-C): the list entry goes, sent
 * now on a connected socket (no answer awaited; a connection that is not
 * up keeps the slot, which only makes the window stricter). */
void cc_redis_give_back(cc_session *s, const xfer *x)
{
    cc_redis *c;
    char start[32];
    const char *argv[4];
    size_t len[4];
    for (c = s->redis; c && strcmp(c->url, x->req.redis_url) != 0; c = c->next) {}
    if (!c || !c->ac || c->drop || c->opened <= 0 || x->rstart <= 0) return;
    snprintf(start, sizeof start, "%lld", x->rstart);
    argv[0] = "LREM", argv[1] = x->req.lim_name, argv[2] = "1", argv[3] = start;
    len[0] = 4, len[1] = strlen(x->req.lim_name), len[2] = 1, len[3] = strlen(start);
    if (redisAsyncCommandArgv(c->ac, NULL, NULL, 4, argv, len) == REDIS_OK) handle_write(c->ac);
}
