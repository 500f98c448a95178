/* engine.c — the run loop: one or many requests driven through a session's
 * multi handle; attempts, retries with Retry-After or jittered backoff
 * inside the call's deadline, the client-side rate limit, and the reading of
 * each answer into a result or an error.
 *
 * Lua is only touched between libcurl calls: the callbacks copy bytes into C
 * buffers and never raise. A run goes on under lua_pcall, so even a memory
 * error raised mid-run frees every handle before it is passed on. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "engine.h"

static double jitter(cc_session *s)
{
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    return (double)(s->rng >> 11) / 9007199254740992.0;
}

/* ---- the session ---------------------------------------------------- */

static void xfer_release(cc_session *s, xfer *x)
{
    if (x->easy) {
        if (x->state == X_RUN && s->multi) curl_multi_remove_handle(s->multi, x->easy);
        cc_easy_put(s, x->easy, 1);
        x->easy = NULL;
    }
    if (x->auth.data) {
        memset(x->auth.data, 0, strlen(x->auth.data));
        free(x->auth.data);
        x->auth.data = NULL;
    }
    cc_buf_free(&x->resp);
    cc_req_free(&x->req);
}

/* Frees what a run holds and returns its easy handles to the pool;
 * idempotent. */
void cc_run_release(run *r)
{
    size_t i;
    if (!r->s) return;
    for (i = 0; i < r->n && r->x; i++) xfer_release(r->s, &r->x[i]);
    if (r->x != r->one) free(r->x);
    r->x = NULL;
    if (r->s->active == r) r->s->active = NULL;
    r->s = NULL;
}

size_t cc_on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    if ((curl_off_t)(x->resp.len + n) > x->req.max_bytes) {
        x->too_large = 1;
        return 0;
    }
    if (!cc_buf_add(&x->resp, p, n)) {
        x->oom = 1;
        return 0;
    }
    return n;
}

size_t cc_on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) x->retry_after[0] = '\0';   /* a new response */
    if (n > 12 && (p[0] | 0x20) == 'r' && strncasecmp(p, "retry-after:", 12) == 0) {
        size_t len = n - 12 < sizeof x->retry_after - 1 ? n - 12 : sizeof x->retry_after - 1;
        memcpy(x->retry_after, p + 12, len);
        x->retry_after[len] = '\0';
    }
    return n;
}

/* Called before each request goes out, so a silent resend by libcurl on a
 * dead reused connection is counted in err.attempts too. */
int cc_on_send(void *ud, char *ip, char *local_ip, int port, int local_port)
{
    (void)ip, (void)local_ip, (void)port, (void)local_port;
    ((xfer *)ud)->sends++;
    return CURL_PREREQFUNC_OK;
}

/* The session's fixed headers, built once; an Omni request puts its own
 * Authorization node in front of them. */
static int build_headers(cc_session *s, xfer *x)
{
    static const char *const fixed[] = {
        "Content-Type: application/json", "Accept: application/json", "Expect:"
    };
    size_t i;
    if (!s->headers) {
        struct curl_slist *h = NULL, *t;
        for (i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
            if (!(t = curl_slist_append(h, fixed[i]))) {
                curl_slist_free_all(h);
                return 0;
            }
            h = t;
        }
        s->headers = h;
    }
    x->headers = s->headers;
    if (x->req.ep->svc->auth_header) {
        const char *h = x->req.ep->svc->auth_header;
        size_t hn = strlen(h), n = x->req.secret_len;
        if (!(x->auth.data = malloc(hn + n + 1))) return 0;
        memcpy(x->auth.data, h, hn);
        memcpy(x->auth.data + hn, x->req.secret, n);
        x->auth.data[hn + n] = '\0';
        x->auth.next = s->headers;
        x->headers = &x->auth;
    }
    return 1;
}

static long ms(double seconds)
{
    double v = ceil(seconds * 1000.0);
    return v < 1 ? 1 : v > 1e9 ? 1000000000L : (long)v;
}

/* Returns 0 when out of memory. */
static int start_attempt(cc_session *s, xfer *x, double now)
{
    const cc_req *q = &x->req;
    double left = x->deadline - now;
    CURL *e;
    if (!x->headers && !build_headers(s, x)) return 0;
    x->sticky = q->proxy || q->ca_file || !q->verify_tls || q->method || !q->retry_ok;
    if (!(e = cc_easy_get(s, x->sticky))) return 0;
    x->easy = e;
    x->resp.len = 0;
    x->too_large = 0;
    x->sends = 0;
    x->retry_after[0] = x->errbuf[0] = '\0';
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_URL, q->url);
    if (q->method && strcmp(q->method, "POST") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, q->method);
    if (q->body || !q->method || strcmp(q->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body ? q->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)q->body_len);
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, q->user_agent);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms(left));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ms(q->connect_timeout < left ? q->connect_timeout : left));
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, q->max_bytes);
    if (!q->verify_tls) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (!q->retry_ok) {
        /* libcurl silently resends a request once when a reused connection
         * turns out dead; a call that must not run twice gets its own. */
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    if (q->proxy) curl_easy_setopt(e, CURLOPT_PROXY, q->proxy);
    if (q->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, q->ca_file);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, x);
    if (curl_multi_add_handle(s->multi, e) != CURLM_OK) return 0;
    x->state = X_RUN;
    x->attempts++;
    return 1;
}

/* ---- reading an answer ---------------------------------------------- */

static int is_tls_error(CURLcode rc)
{
    switch (rc) {
    case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS: case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND: case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED: case CURLE_USE_SSL_FAILED:
        return 1;
    default:
        return 0;
    }
}

/* A transfer that libcurl ended with an error. */
static void read_failure(xfer *x, CURLcode rc, double now, outcome *o)
{
    const char *why = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
    curl_off_t connect_us = 0;
    curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
    if (x->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        o->kind = CC_TOO_LARGE;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &o->status);
        snprintf(o->msg, sizeof o->msg, "answer larger than max_response_bytes (%lld bytes)",
                 (long long)x->req.max_bytes);
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        o->kind = CC_TIMEOUT;
        if (connect_us == 0 && now < x->deadline) {
            o->retryable = 1;
            snprintf(o->msg, sizeof o->msg, "could not connect within connect_timeout (%gs)",
                     x->req.connect_timeout);
        } else {
            snprintf(o->msg, sizeof o->msg, "no complete answer within timeout (%gs)", x->req.timeout);
        }
    } else if (is_tls_error(rc)) {
        o->kind = CC_TLS;
        snprintf(o->msg, sizeof o->msg, "TLS failure: %s", why);
    } else {
        o->kind = CC_CONNECT;
        o->retryable = 1;
        snprintf(o->msg, sizeof o->msg, "%s", why);
    }
}

/* A complete HTTP answer: see cc_interpret. */
static int read_answer(lua_State *L, xfer *x, outcome *o)
{
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    return cc_interpret(L, x->req.ep, status, x->resp.data, x->resp.len, x->retry_after, o);
}

/* Decides what follows an attempt: another one later, or a result pushed as
 * two values (res, nil) or (nil, err). Returns 1 when the request is done. */
static int finish(lua_State *L, run *r, xfer *x, CURLcode rc)
{
    double now = cc_mono();
    outcome o;
    memset(&o, 0, sizeof o);
    o.retry_after = -1;
    if (x->sends > 1) x->attempts += x->sends - 1;
    if (x->oom) {
        r->oom = 1;
        x->state = X_DONE;
        return 0;
    }
    if (rc != CURLE_OK) {
        read_failure(x, rc, now, &o);
    } else if (read_answer(L, x, &o)) {
        lua_pushnil(L);
        x->state = X_DONE;
        return 1;
    }
    if (o.retryable && x->req.retry_ok && x->attempts <= x->req.retries) {
        double wait = o.retry_after;
        if (wait < 0) {
            double cap = 0.5 * pow(2, x->attempts - 1);
            wait = jitter(r->s) * (cap > 30 ? 30 : cap);
        }
        if (now + wait < x->deadline) {
            x->state = X_WAIT;
            x->next_start = now + wait;
            return 0;
        }
        if (o.retry_after >= 0) {
            o.kind = CC_RATE_LIMITED;
            snprintf(o.msg + strlen(o.msg), sizeof o.msg - strlen(o.msg),
                     "; asked to wait %gs, past the timeout", o.retry_after);
        }
    }
    lua_pushnil(L);
    cc_push_error(L, o.kind, o.msg, o.status, o.code[0] ? o.code : NULL, o.retry_after,
                  x->attempts, NULL, &x->req);
    x->state = X_DONE;
    return 1;
}

/* ---- the loop ------------------------------------------------------- */

/* Stores the two values on top as out[i] = { result = ..., err = ... }. */
static void store(lua_State *L, int out, size_t i)
{
    if (!out) return;
    lua_createtable(L, 0, 2);
    lua_insert(L, -3);
    lua_setfield(L, -3, "err");
    lua_setfield(L, -2, "result");
    lua_rawseti(L, out, (int)i + 1);
}

/* The client-side rate limit: 1 when x may start now; else x waits for
 * its slot, or fails at once when the slot lies past its deadline. */
static int slot_free(lua_State *L, run *r, xfer *x, int out, double now, size_t *done)
{
    char msg[CC_MSG_MAX];
    double wait;
    if (x->req.limit_requests <= 0) return 1;
    wait = cc_limit_take(x->req.limit_key, x->req.limit_requests, x->req.limit_per, now);
    if (wait <= 0) return 1;
    if (now + wait < x->deadline) {
        x->next_start = now + wait;
        return 0;
    }
    snprintf(msg, sizeof msg, "client-side rate limit (%g requests per %gs): no slot before the timeout",
             x->req.limit_requests, x->req.limit_per);
    lua_pushnil(L);
    cc_push_error(L, CC_RATE_LIMITED, msg, 0, NULL, wait, x->attempts, NULL, &x->req);
    x->state = X_DONE;
    store(L, out, (size_t)(x - r->x));
    (*done)++;
    return 0;
}

static void drive(lua_State *L, run *r, int out, int concurrency, size_t done)
{
    cc_session *s = r->s;
    int active = 0;
    while (done < r->n && !r->oom) {
        double now = cc_mono(), wake = now + 1.0;
        int running, queued, finished;
        size_t i;
        CURLMsg *m;
        for (i = 0; i < r->n && !r->oom; i++) {
            xfer *x = &r->x[i];
            if (x->state != X_WAIT || active >= concurrency) continue;
            if (x->next_start <= now && slot_free(L, r, x, out, now, &done)) {
                if (!start_attempt(s, x, now)) r->oom = 1;
                else active++;
            } else if (x->state == X_WAIT && x->next_start < wake) {
                wake = x->next_start;
            }
        }
        curl_multi_perform(s->multi, &running);
        finished = 0;
        while ((m = curl_multi_info_read(s->multi, &queued)) != NULL) {
            xfer *x = NULL;
            CURLcode rc = m->data.result;
            if (m->msg != CURLMSG_DONE) continue;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            curl_multi_remove_handle(s->multi, x->easy);
            x->state = X_DONE;
            active--;
            if (finish(L, r, x, rc)) {
                store(L, out, (size_t)(x - r->x));
                done++;
            }
            cc_easy_put(s, x->easy, x->sticky);
            x->easy = NULL;
            finished = 1;
        }
        /* a finished attempt may have freed a slot or set a retry time */
        if (done < r->n && !r->oom && !finished) {
            double left = wake - cc_mono();
            curl_multi_poll(s->multi, NULL, 0, left <= 0 ? 0 : (int)ceil(left * 1000), NULL);
        }
    }
}

typedef struct run_args {
    run *r;
    const cc_endpoint *ep;
    int single, concurrency;
} run_args;

/* Parses and drives a run, under lua_pcall (arguments: the options table or
 * the list of them, and the run_args), so that whatever it raises, cc_run
 * releases the run before passing the error on. */
static int run_protected(lua_State *L)
{
    run_args *a = lua_touserdata(L, 2);
    run *r = a->r;
    size_t i, done = 0;
    int out = 0;
    double now = cc_mono();
    if (!a->single) {
        lua_createtable(L, (int)r->n, 0);
        out = lua_gettop(L);
    }
    for (i = 0; i < r->n; i++) {
        xfer *x = &r->x[i];
        x->state = X_DONE;
        if (!a->single) {
            lua_rawgeti(L, 1, (int)i + 1);
            if (!lua_istable(L, -1))
                luaL_error(L, "%s.%s batch: item %d is not an options table (got %s)", a->ep->service,
                           a->ep->name, (int)i + 1, luaL_typename(L, -1));
        }
        if (cc_req_parse(L, a->single ? 1 : -1, a->ep, &x->req)) {
            x->state = X_WAIT;
            x->deadline = now + x->req.timeout;
            x->next_start = now + x->req.delay;
        } else {
            if (!a->single) lua_pop(L, 1);
            lua_pushnil(L);
            cc_push_error(L, CC_INVALID, x->req.bad_msg, 0, NULL, -1, 0, x->req.bad_field, NULL);
            store(L, out, i);
            done++;
            continue;
        }
        if (!a->single) lua_pop(L, 1);
    }
    drive(L, r, out, a->concurrency < 1 ? 1 : a->concurrency, done);
    if (r->oom) return luaL_error(L, "not enough memory");
    if (a->single) return 2;
    lua_pushvalue(L, out);
    return 1;
}

int cc_run(lua_State *L, cc_session *s, const cc_endpoint *ep, int idx, int single,
           int concurrency)
{
    run_args a;
    run *r;
    size_t n;
    int top, rc;
    if (s->active) return luaL_error(L, "cachectl: this session is already running a call");
    idx = cc_absindex(L, idx);
    n = single ? 1 : cc_rawlen(L, idx);
    top = lua_gettop(L);
    lua_pushcfunction(L, run_protected);
    lua_pushvalue(L, idx);
    lua_pushlightuserdata(L, &a);
    if (single) {
        /* single calls reuse the session's run: nothing to allocate */
        r = &s->single;
        memset(r, 0, sizeof *r);
        r->x = r->one;
    } else if (!(r = calloc(1, sizeof *r)) || (n > 0 && !(r->x = calloc(n, sizeof *r->x)))) {
        free(r);
        return luaL_error(L, "not enough memory");
    }
    r->s = s;
    r->n = n;
    s->active = r;
    a.r = r;
    a.ep = ep;
    a.single = single;
    a.concurrency = concurrency;
    rc = lua_pcall(L, 2, LUA_MULTRET, 0);
    cc_run_release(r);
    if (!single) free(r);
    if (rc != 0) return lua_error(L);
    return lua_gettop(L) - top;
}

/* ---- the session as seen from Lua ------------------------------------ */
