/* cachectl.h — the types shared by the C files of cachectl.core: a request as
 * parsed from its options table, the endpoint rows, and the entry points of
 * each file. Nothing here is exported from the shared object. */
#ifndef CACHECTL_H
#define CACHECTL_H

#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>
#include "compat.h"
#include "buf.h"
#include "clock.h"
#include "scrub.h"
#include "parse.h"
#include "ratelimit.h"

/* Only luaopen_cachectl_core leaves the shared object, however it is built
 * (the luarocks builtin backend passes no -fvisibility flag). */
#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define CC_VERSION "0.1.0"

/* The defaults of the options every call takes (core.defaults tells Lua). */
#define CC_DEFAULT_TIMEOUT 30
#define CC_DEFAULT_CONNECT_TIMEOUT 10
#define CC_DEFAULT_RETRIES 2
#define CC_DEFAULT_MAX_BYTES (1024 * 1024)

/* Error kinds, in the order of cc_kind_names[]. */
enum cc_kind {
    CC_INVALID = 0, CC_CONNECT, CC_TIMEOUT, CC_TLS, CC_HTTP, CC_API,
    CC_RATE_LIMITED, CC_DECODE, CC_TOO_LARGE
};
extern const char *const cc_kind_names[];

/* Options an endpoint takes beyond the common ones. */
enum {
    OPT_KEY = 1 << 0, OPT_TOKEN = 1 << 1, OPT_PRODUCT = 1 << 2,
    OPT_INSTANCE = 1 << 3, OPT_PLAYGROUND = 1 << 4, OPT_MODEL_ID = 1 << 5,
    OPT_POLICY = 1 << 6, OPT_RESET_AT = 1 << 7, OPT_REQUEST = 1 << 8,  /* method, path, body */
    OPT_DEPLOY_TYPE = 1 << 9,
    OPT_LIST = 1 << 10,      /* name, kind, include_deleted, cursor, page_size */
    OPT_YAML = 1 << 11       /* file_name, mode, fully_resolved, branch_id */
};

enum cc_auth { AUTH_BODY_KEY, AUTH_BEARER };
enum cc_rule { RULE_STATUS_SUCCESS, RULE_STATUS_NOT_ERROR, RULE_SUCCESS_NOT_FALSE };

/* One row of the service table (endpoints.c). */
typedef struct cc_service {
    const char *name;             /* "modelslab", "omni" */
    const char *secret;           /* the credential's option name */
    const char *env_secret, *env_base_url;   /* read by the Lua layer only */
    const char *base_url;         /* the default, or NULL: built from instance */
    const char *host, *playground_host;      /* templates holding {instance} */
    enum cc_auth auth;
    const char *auth_header;      /* header line before the secret (Bearer) */
    const char *default_product;  /* {product} when none is given */
    double limit_requests, limit_per;        /* default rate limit; 0: none */
} cc_service;

extern const cc_service cc_services[];
extern const size_t cc_nservices;
const cc_service *cc_service_find(const char *name);

/* One row of the endpoint table (endpoints.c). The path template may hold
 * {product}, {model_id}, {policy} and {path}. */
typedef struct cc_endpoint {
    const cc_service *svc;
    const char *service;     /* svc->name, for messages */
    const char *name;        /* function name in the service table */
    const char *method;      /* NULL: the caller's (request) */
    const char *path;        /* appended to base_url */
    enum cc_rule rule;
    int idempotent;          /* retried on connection failures, 429, 502-504 */
    unsigned opts;           /* OPT_* bits accepted */
    const char *args[4];     /* positional arguments of the client method */
    const char *action;      /* the command's action, or NULL */
} cc_endpoint;

extern const cc_endpoint cc_endpoints[];
extern const size_t cc_nendpoints;
const cc_endpoint *cc_endpoint_find(const char *service, const char *name);

/* A request, read and checked (options.c) and built (request.c). It owns
 * copies of every string it uses, taken before any Lua code could run, so
 * Lua code run during the call (a finalizer, an event handler) may change
 * or collect the options table without touching the request. */
typedef struct cc_req {
    const cc_endpoint *ep;
    double timeout, connect_timeout;
    long retries;
    curl_off_t max_bytes;
    int verify_tls;
    const char *user_agent, *proxy, *ca_file;   /* in own (or static: the default
                                                   User-Agent, cc_user_agent_default()), NUL-terminated */
    const char *secret; size_t secret_len;   /* key or token, in own */
    char *own; size_t own_len;  /* malloc'd copies of the option texts; wiped when freed */
    double limit_requests, limit_per;         /* rate limit; 0 when off */
    uint64_t limit_key;                       /* the process window's */
    int lim;                                  /* enum cc_lim: where turns are taken */
    const char *redis_url, *dict_name;        /* rate_limit.redis, .shared_dict (in own) */
    int redis_required;
    int on_event;       /* an on_event function was given (cc_req_parse pushes it) */
    char *lim_name;     /* malloc'd "cachectl:rl:<service>:<sha256 of the secret>:<n>:<per>":
                           the window's key in Redis and in a shared dict */
    char *url;          /* malloc'd full URL */
    char *body;         /* malloc'd JSON body, NULL for none */
    size_t body_len;
    const char *method; /* NULL: POST */
    int retry_ok;       /* idempotent: may be retried */
    /* set when validation fails */
    const char *bad_field;
    char bad_msg[160];
} cc_req;

/* request.c: read opts (at index idx) into r. Raises on programming
 * mistakes; returns 0 and fills r->bad_field/bad_msg on a bad value (r then
 * holds nothing to free). On success with r->on_event, the on_event function
 * as the table held it when read is left pushed (Lua code run while the rest
 * is checked, a finalizer, may change the table). cc_req_free is idempotent. */
int cc_req_parse(lua_State *L, int idx, const cc_endpoint *ep, cc_req *r);
unsigned long cc_req_parsed(void);      /* options tables read so far, process-wide */
void cc_req_free(cc_req *r);
/* A copy of src that owns its own memory (a kept request sent again); 0
 * when out of memory (dst then holds nothing to free). */
int cc_req_copy(const cc_req *src, cc_req *dst);
/* options.c */
void cc_push_option_names(lua_State *L, const cc_endpoint *ep);
void cc_check_options(lua_State *L, const cc_service *svc, const cc_endpoint *ep, int idx,
                      const char *where);


/* urls.c: what libcurl reads for us. */
/* Retry-After header value -> seconds from now (< 0 when unusable). */
double cc_retry_after(const char *s, size_t n, double now_epoch);
/* NULL when s is a base URL we send to, else why not (a static message). */
const char *cc_check_base_url(const char *s, size_t n);

/* Where a request's turns are taken (limiter.c): nowhere, the process
 * window (ratelimit.c), Redis (redis.c), or an nginx shared dict. */
enum cc_lim { LIM_OFF = 0, LIM_PROCESS, LIM_REDIS, LIM_DICT };
/* prepared.c: request objects (core.prepare). cc_prepared_take moves the
 * request of the prepared object at idx into out, when it is one for ep
 * (raises when it is one for another call, or sent already): returns 0 (not
 * a prepared request), 1, or 2 with its on_event function pushed. */
int cc_prepare_l(lua_State *L);
void cc_prepared_init(lua_State *L);
int cc_prepared_take(lua_State *L, int idx, const cc_endpoint *ep, cc_req *out);
/* The SHA-256 of what makes two calls the same request (service, call,
 * credential, URL, body) as hex; 0 when SHA-256 failed. */
int cc_identity(const cc_endpoint *ep, const cc_req *r, char hex[65]);

/* redis.c: core.redis_url, a Redis URL read as the turns read it. */
int cc_redis_url_l(lua_State *L);

/* cache.c: the command's compile cache (core.cache_folder, core.cache_searcher). */
int cc_cache_folder_l(lua_State *L);
int cc_cache_searcher_l(lua_State *L);

/* yaml.c: a YAML document read within limits (a Lua C function: text,
 * limits, deadline, clock), its null value (in the registry under
 * CC_YAML_NULL), the slot a mapping keeps a key under; cc_yaml_init sets the
 * module's yaml_limits (the table at the top of the stack). */
#define CC_YAML_NULL "cachectl.yaml_null"
int cc_yaml_load_l(lua_State *L);
void cc_yaml_push_slot(lua_State *L, int idx);
void cc_yaml_init(lua_State *L);

/* policies.c: core.model_policies, core.policy_check. */
int cc_model_policies_l(lua_State *L);
int cc_policy_check_l(lua_State *L);

/* outcome.c: sets core.outcome_encode and core.outcome_decode (a coalesced
 * call's outcome as stored in Redis) in the module table at the top, which
 * holds the scrub and error they use. */
void cc_outcome_init(lua_State *L);

/* request.c: r->lim_name built (0 when out of memory). */
int cc_lim_name(cc_req *r);


/* What one attempt came to (engine.c, answer.c). */
#define CC_MSG_MAX 400
typedef struct outcome {
    enum cc_kind kind;
    long status;
    int retryable;
    double retry_after;     /* < 0: not given */
    char msg[CC_MSG_MAX];
    char code[64];
} outcome;

/* answer.c */
int cc_interpret(lua_State *L, const cc_endpoint *ep, long status, const char *body, size_t len,
                 const char *retry_after, outcome *o);

/* errors.c */
void cc_push_error(lua_State *L, enum cc_kind kind, const char *message,
                   long status, const char *code, double retry_after,
                   int attempts, const char *field, const cc_req *r);
void cc_errors_init(lua_State *L);
void cc_push_line(lua_State *L, const char *s, size_t n, const char *secret, size_t sn);

/* session.c, engine.c */
typedef struct cc_session cc_session;
cc_session *cc_session_new(lua_State *L);        /* pushes the userdata */
cc_session *cc_session_check(lua_State *L, int idx);
cc_session *cc_session_of(lua_State *L, int idx);  /* the module's own, unchecked */
int cc_bound_call(lua_State *L);                   /* upvalues: session, endpoint row */
/* Runs the request whose options table is at idx (single), or the requests
 * of the list of options tables at idx, up to concurrency at once. Pushes
 * the results: for a single request res or nil, err; for a list, one array
 * of { result = ..., err = ... } in input order. Returns the number of
 * values pushed. Raises on programming mistakes, with nothing sent. */
int cc_run(lua_State *L, cc_session *s, const cc_endpoint *ep, int idx, int single,
           int concurrency);
void cc_session_init(lua_State *L);

/* options.c: "cachectl/<version> libcurl/<version>", built once (pthread_once);
 * r->user_agent points to it when no user_agent is given. */
const char *cc_user_agent_default(void);

#endif
