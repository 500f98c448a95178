/* engine.h — what the session (session.c), its libcurl handles
 * (handles.c) and the run loop (engine.c) share: a session's state and its
 * pool of easy handles, one run and its requests. Private to those files. */
#ifndef CACHECTL_ENGINE_H
#define CACHECTL_ENGINE_H

#include "cachectl.h"

#define POOL_MAX 16

enum { X_WAIT, X_RUN, X_DONE, X_TURN };     /* X_TURN: a turn asked of Redis */
/* An item's Redis turn: to ask, asked, then what the reply said. */
enum { RS_NONE, RS_WANT, RS_ASKED, RS_GRANTED, RS_LATE, RS_FAILED, RS_AGAIN };

/* What an easy handle has been set to beyond the options every handle
 * shares, so a pooled handle is only told what changed. Zeroed with the
 * handle (curl_easy_reset). */
typedef struct hstate {
    const void *bound;            /* the xfer its callbacks and buffers point to */
    const CURLU *url;
    const struct curl_slist *headers;
    long timeout_ms, connect_ms, body_len;
    curl_off_t max_bytes;
    int no_proxy;                 /* CURLOPT_NOPROXY "*" is set */
} hstate;

typedef struct xfer {
    cc_req req;
    CURL *easy;
    hstate st;                    /* what easy has been set to */
    int sticky;
    struct curl_slist *headers;   /* the session's, or nodes below in front of them */
    struct curl_slist auth;       /* "Authorization: Bearer ..." (data malloc'd) */
    struct curl_slist ua;         /* "User-Agent: ..." of user_agent (data malloc'd) */
    struct curl_slist expect;     /* "Expect:" for a large body */
    CURLU *url;                   /* req.url parsed: the session's cached one, or own */
    cc_buf resp;
    int too_large, oom, state, attempts;
    int sends;              /* requests libcurl sent in this attempt */
    int turn;               /* a rate-limit start is reserved at next_start */
    int slot;               /* holds one of the run's `concurrency` places */
    int rstate, redis_again;    /* RS_*; asked again once after a kept connection broke */
    int fell_back;          /* Redis failed: the fallback limiter takes its turns */
    int fallback;           /* LIM_DICT with a shared dict, else LIM_PROCESS */
    double rwait;           /* the Redis reply's wait, seconds */
    long long rstart;       /* the start Redis reserved, µs on its clock (0: none) */
    int turn_from;          /* the limiter that reserved the start at next_start (x->turn) */
    int event;              /* on_event given: it sits in the run's event table */
    double deadline, next_start, started;
    char retry_after[64];
    char errbuf[CURL_ERROR_SIZE];
} xfer;

/* A Lua hook as seen at one moment (see the interrupt check in engine.c). */
typedef struct hookseen {
    lua_Hook hook, main_hook;
    int mask, main_mask;
} hookseen;

typedef struct run {
    struct cc_session *s;
    size_t n;
    int oom;
    int events;         /* stack index of the on_event functions, by item */
    int dicts;          /* stack index of the shared dicts, by item (rate_limit.shared_dict) */
    int active;         /* items holding a place (running, asking, or reserved) */
    int xfers;          /* transfers in libcurl's hands */
    int concurrency;
    int told;           /* the redis_fallback event was emitted */
    hookseen hooks;
    xfer *x;            /* calloc'd, or one[] for a single call */
    xfer one[1];
} run;

/* An idle easy handle; sticky: its last request set options beyond the
 * usual ones (proxy, CA file, no verification, a method, a fresh
 * connection), so it must be reset before the next. */
typedef struct pooled {
    CURL *easy;
    int sticky;
    hstate st;
} pooled;

struct cc_session {
    CURLM *multi;
    pooled pool[POOL_MAX];
    int npool;
    /* the headers every request sends: User-Agent (the default), then
     * Content-Type and Accept (headers_noua) */
    struct curl_slist *headers, *headers_noua;
    CURLU *url;             /* the last URL parsed, shared by requests to it */
    char *url_text;
    int url_users;
    uint64_t rng;
    lua_State *main;        /* the main thread, whose hook a signal handler sets */
    int close_pending;      /* __close or __gc came while a call ran */
    struct run *active;     /* the run in progress */
    struct cc_redis *redis; /* connections to Redis, one per URL (redis.c) */
    struct run single;      /* the run of single calls, reused */
    int closed;             /* close() ran: no call may start */
    long pid;               /* the process that opened multi (fork: another one) */
    int counted;            /* counted among the process's open sessions */
};

/* handles.c: the pool of easy handles (a handle comes back with the options
 * every request shares and st telling what else it holds; sticky: it must
 * be reset before reuse). NULL with *refused naming a libcurl option that
 * failed, or with *refused NULL when out of memory. */
CURL *cc_easy_get(cc_session *s, int sticky, hstate *st, const char **refused);
void cc_easy_put(cc_session *s, CURL *e, int sticky, const hstate *st);
void cc_session_close(cc_session *s);
/* handles.c: opens the multi handle on a session's first call (its
 * descriptors close-on-exec); 0 when libcurl cannot make one. Forgetting
 * drops what a session inherited through fork() without touching it. */
int cc_session_open(cc_session *s);
void cc_session_forget(cc_session *s);
long cc_open_sessions(void);     /* sessions with handles open, process-wide */
/* handles.c: why opening a socket failed for want of descriptors (EMFILE or
 * ENFILE, in words) in this thread at or after `since` (cc_mono's clock),
 * or NULL. */
const char *cc_fd_shortage(double since);
const char *cc_fd_probe(void);

/* handles.c: the callbacks every pooled handle is set up with */
size_t cc_on_body(char *p, size_t size, size_t nmemb, void *ud);
size_t cc_on_header(char *p, size_t size, size_t nmemb, void *ud);
#if LIBCURL_VERSION_NUM >= 0x075000
int cc_on_send(void *ud, char *ip, char *local_ip, int port, int local_port);
#endif

/* transfer.c: an attempt's request handed to libcurl */
void cc_wipe_node(struct curl_slist *n);
int cc_build_headers(cc_session *s, xfer *x);          /* 0: out of memory */
/* 1, or 0 when out of memory, or -1 when libcurl refused something that
 * matters (nothing sent; x->errbuf says what) */
int cc_start_attempt(cc_session *s, xfer *x, double now);

/* events.c: on_event calls, and the hooks a signal handler sets */
void cc_see_hooks(lua_State *L, run *r);
int cc_interrupted(lua_State *L, const run *r);
void cc_event_new(lua_State *L, const xfer *x, const char *type, int attempt);
void cc_emit(lua_State *L, run *r, const xfer *x);
void cc_emit_attempt(lua_State *L, run *r, const xfer *x, const outcome *o, int ok, double now);
void cc_emit_wait(lua_State *L, run *r, const xfer *x, double wait, const char *reason);

/* redis.c: the session's Redis connections, driven by the run loop */
typedef struct cc_redis cc_redis;
cc_redis *cc_redis_get(cc_session *s, const char *url);     /* NULL: out of memory */
const char *cc_redis_why(const cc_redis *c);                /* the last failure, naming the server */
int cc_redis_turns(cc_redis *c, xfer **xs, const double *notbefore, int k, double now, double due);
int cc_redis_fds(cc_session *s, struct curl_waitfd *fds, int max);
double cc_redis_due(const cc_session *s);
void cc_redis_io(cc_session *s, const struct curl_waitfd *fds, int n, double now);
void cc_redis_settle(cc_session *s);
void cc_redis_close_all(cc_session *s);
void cc_redis_give_back(cc_session *s, const xfer *x);
int cc_redis_command(lua_State *L, cc_session *s);     /* session:redis (session.c) */

/* limiter.c: an nginx shared dict's turns */
void cc_dict_find(lua_State *L, const cc_req *r);
int cc_dict_take(lua_State *L, int dict, const cc_req *q, double now, double budget, double *wait);
/* the waits k more starts would get (none recorded); a start at t recorded */
void cc_dict_plan(lua_State *L, int dict, const cc_req *q, double now, size_t k, double *wait);
void cc_dict_note(lua_State *L, int dict, const cc_req *q, double now, double t);

#endif
