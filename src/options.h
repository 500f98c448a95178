/* options.h — what options.c (reading and checking an options table) hands
 * to request.c (building the request from it): the option table and one
 * slot per option. Private to those two files. */
#ifndef CACHECTL_OPTIONS_H
#define CACHECTL_OPTIONS_H

#include "cachectl.h"

/* Type codes: Lua's, and a few unions of them. */
#define T_BOOL LUA_TBOOLEAN
#define T_NUM LUA_TNUMBER
#define T_STR LUA_TSTRING
#define T_FUNC LUA_TFUNCTION
#define T_STR_OR_NUM (-2)
#define T_LIMIT (-3)          /* { requests = n, per = seconds, ... } or a boolean */
#define T_STR_OR_FALSE (-4)   /* product: a slug, or false for none */
#define T_STR_OR_BOOL (-5)    /* thread_pool: a name, or true/false */

/* Longest text option, and longest request body (contract, "Fine points"). */
#define CC_MAX_TEXT (64 * 1024)
#define CC_MAX_BODY (1024 * 1024)

enum {
    O_BASE_URL, O_TIMEOUT, O_CONNECT_TIMEOUT, O_RETRIES, O_USER_AGENT, O_PROXY,
    O_CA_FILE, O_VERIFY_TLS, O_MAX_BYTES, O_RATE_LIMIT, O_KEY, O_TOKEN, O_PRODUCT, O_INSTANCE,
    O_PLAYGROUND, O_MODEL_ID, O_POLICY, O_RESET_AT, O_METHOD, O_PATH, O_BODY, O_ON_EVENT,
    O_DEPLOY_TYPE, O_NAME, O_KIND, O_INCLUDE_DELETED, O_CURSOR, O_PAGE_SIZE, O_FILE_NAME, O_MODE,
    O_FULLY_RESOLVED, O_BRANCH_ID, O_COUNT
};

typedef struct cc_optdef {
    const char *name;
    int type;
    unsigned bit;        /* 0: every endpoint takes it */
    const char *query;   /* sent as this query parameter, or NULL */
} cc_optdef;

extern const cc_optdef cc_optdefs[O_COUNT];

/* One option's value as read. s points into the Lua table until request.c
 * replaces it with the request's own copy. Small: a call zeroes one per
 * option there is. */
typedef struct cc_slot {
    const char *s;
    size_t len;
    double n;
    int set, b;
    int too_long;       /* a text over CC_MAX_TEXT: s is not kept */
} cc_slot;

/* rate_limit given as a table, as read (its slot holds b = 1). */
typedef struct cc_limit_opts {
    int table;                   /* rate_limit was given as a table */
    double requests, per;        /* -1: not given */
    const char *redis, *dict;    /* rate_limit.redis and .shared_dict, like a slot's s */
    size_t redis_len, dict_len;
    int required;                /* rate_limit.redis_required */
} cc_limit_opts;

/* An options table as read: a slot per option, and which ones it gave, so
 * that what is done per option given (copies, the length check, the query)
 * visits the two or three a call gives, not every option there is. */
typedef struct cc_opts {
    cc_slot v[O_COUNT];
    cc_limit_opts limit;
    int given[O_COUNT], ngiven;   /* the slots given, in the order read */
    int too_long;       /* the first slot (in slot order) with a text over CC_MAX_TEXT, or -1 */
    int query;          /* an option sent as a query parameter was given */
} cc_opts;

/* Reads the options table at idx (raw, without running any Lua code) into
 * o; raises on an unknown name or a wrong type. */
void cc_opts_read(lua_State *L, int idx, const cc_endpoint *ep, cc_opts *o);
/* Checks the values and fills r's settings; 0 with r->bad_field and
 * r->bad_msg set when one is bad. reset_at receives resetAt's text. */
int cc_opts_check(cc_req *r, cc_opts *o, char *reset_at, size_t sz);
/* Records a bad value in r; returns 0. */
int cc_opts_bad(cc_req *r, const char *field, const char *why);

#endif
