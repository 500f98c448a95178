/* engine.c — the run loop: one or many requests driven through a session's
 * multi handle (and its Redis connections); when each attempt starts (a
 * place among `concurrency`, its rate-limit turn from the process window,
 * Redis or a shared dict, the deadline), retries with Retry-After or
 * jittered backoff inside the call's deadline, and the reading of each
 * answer into a result or an error. How an attempt is handed to libcurl is
 * transfer.c's; the on_event calls are events.c's.
 *
 * Lua is only touched between libcurl calls: the callbacks copy bytes into C
 * buffers and never raise. A run goes on under lua_pcall, so an error raised
 * mid-run (out of memory, or by an on_event function) frees every handle
 * before it is passed on. The loop wakes at least every WAKE_EVERY seconds
 * to see whether a signal handler asked the interpreter to stop. */
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "engine.h"

#define WAKE_EVERY 0.1

static double jitter(cc_session *s)
{
    s->rng ^= s->rng << 13;
    s->rng ^= s->rng >> 7;
    s->rng ^= s->rng << 17;
    return (double)(s->rng >> 11) / 9007199254740992.0;
}

/* ---- releasing ------------------------------------------------------ */

static void xfer_release(cc_session *s, xfer *x)
{
    if (x->easy) {
        if (x->state == X_RUN && s->multi) curl_multi_remove_handle(s->multi, x->easy);
        cc_easy_put(s, x->easy, 1, &x->st);
        x->easy = NULL;
    }
    if (x->url) {
        if (x->url == s->url) s->url_users--;
        else curl_url_cleanup(x->url);
        x->url = NULL;
    }
    cc_wipe_node(&x->auth);
    cc_wipe_node(&x->ua);
    cc_buf_free(&x->resp);
    cc_req_free(&x->req);
}

/* Frees what a run holds and returns its easy handles to the pool;
 * idempotent. */
static void run_release(run *r)
{
    size_t i;
    if (!r->s) return;
    /* starts reserved for attempts that never began (the run ended by an
     * error or a signal) go back to their window */
    for (i = 0; i < r->n && r->x; i++) {
        xfer *x = &r->x[i];
        if (!x->turn || x->state == X_RUN) continue;
        if (x->turn_from == LIM_REDIS) cc_redis_give_back(r->s, x);
        /* the process window's own reservation, or its note of Redis's */
        if (x->turn_from == LIM_PROCESS || (x->turn_from == LIM_REDIS && x->fallback == LIM_PROCESS))
            cc_limit_give_back(x->req.limit_key, x->next_start);
        x->turn = 0;
    }
    cc_redis_settle(r->s);      /* asks in flight write to the items: answered first */
    for (i = 0; i < r->n && r->x; i++) xfer_release(r->s, &r->x[i]);
    if (r->x != r->one) free(r->x);
    r->x = NULL;
    if (r->s->active == r) r->s->active = NULL;
    r->s = NULL;
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
    long request_bytes = 0;
    const char *shortage = NULL;
    curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME_T, &connect_us);
    /* a kept-alive connection reused has no connect time (0): the request
     * sent says it was connected */
    curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &request_bytes);
    if (x->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        o->kind = CC_TOO_LARGE;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &o->status);
        snprintf(o->msg, sizeof o->msg, "answer larger than max_response_bytes (%lld bytes)",
                 (long long)x->req.max_bytes);
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        o->kind = CC_TIMEOUT;
        if (connect_us == 0 && request_bytes == 0 && now < x->deadline) {
            o->retryable = 1;
            snprintf(o->msg, sizeof o->msg, "could not connect within connect_timeout (%gs)",
                     x->req.connect_timeout);
        } else {
            snprintf(o->msg, sizeof o->msg, "no complete answer within timeout (%gs)", x->req.timeout);
        }
    } else if (is_tls_error(rc) && (shortage = cc_fd_probe()) == NULL) {
        o->kind = CC_TLS;
        snprintf(o->msg, sizeof o->msg, "TLS failure: %s", why);
    } else if (shortage || (shortage = cc_fd_shortage(x->started)) != NULL) {
        /* libcurl says "Couldn't connect": the socket was never made */
        o->kind = CC_CONNECT;
        o->retryable = 1;
        snprintf(o->msg, sizeof o->msg, "too many open files: no descriptor left for a connection (%s)",
                 shortage);
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

/* After a failed attempt: schedules the next one (1, with a wait event), or
 * leaves o saying why there is none (0). */
static int retry(lua_State *L, run *r, xfer *x, outcome *o, double now)
{
    double wait = o->retry_after;
    if (!(o->retryable && x->req.retry_ok && x->attempts <= x->req.retries)) return 0;
    if (wait < 0) {
        double cap = 0.5 * pow(2, x->attempts - 1);
        wait = jitter(r->s) * (cap > 30 ? 30 : cap);
    }
    if (now + wait < x->deadline) {
        x->state = X_WAIT;
        x->next_start = now + wait;
        cc_emit_wait(L, r, x, wait, o->retry_after >= 0 ? "retry_after" : "backoff");
        return 1;
    }
    if (o->retry_after >= 0) {
        o->kind = CC_RATE_LIMITED;
        snprintf(o->msg + strlen(o->msg), sizeof o->msg - strlen(o->msg),
                 "; asked to wait %gs, past the timeout", o->retry_after);
    }
    return 0;
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
        return 0;
    }
    if (rc != CURLE_OK) {
        read_failure(x, rc, now, &o);
    } else if (read_answer(L, x, &o)) {
        cc_emit_attempt(L, r, x, &o, 1, now);
        lua_pushnil(L);
        return 1;
    }
    cc_emit_attempt(L, r, x, &o, 0, now);
    if (retry(L, r, x, &o, now)) return 0;
    lua_pushnil(L);
    cc_push_error(L, o.kind, o.msg, o.status, o.code[0] ? o.code : NULL, o.retry_after,
                  x->attempts, NULL, &x->req);
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

/* Ends request x with an error of `kind` (nothing more is sent for it). */
static void end_with(lua_State *L, run *r, xfer *x, int out, enum cc_kind kind, const char *msg,
                     double retry_after)
{
    x->state = X_DONE;
    if (x->slot) r->active--;
    x->slot = 0;
    lua_pushnil(L);
    cc_push_error(L, kind, msg, 0, NULL, retry_after, x->attempts, NULL, &x->req);
    store(L, out, (size_t)(x - r->x));
}

/* ---- turns ---------------------------------------------------------- */

/* What a limiter said for x at `now`: rc 1, a start reserved `wait` from
 * now (x waits for it, after a wait event, unless it is now: returns 1);
 * rc 0, none before the deadline (x ends, rate_limited, nothing sent);
 * rc -1, out of memory. */
static int turn_said(lua_State *L, run *r, xfer *x, int out, int rc, double wait, double now, size_t *done)
{
    char msg[CC_MSG_MAX];
    const cc_req *q = &x->req;
    int lim = x->fell_back ? x->fallback : q->lim;
    if (rc < 0) {
        r->oom = 1;
        return 0;
    }
    if (rc > 0) {
        if (wait <= 0) return 1;
        x->turn = 1;
        x->turn_from = lim;
        x->next_start = now + wait;
        cc_emit_wait(L, r, x, wait, "rate_limit");
        return 0;
    }
    snprintf(msg, sizeof msg, "client-side rate limit (%g requests per %gs%s%s%s): no turn before the timeout",
             q->limit_requests, q->limit_per, lim == LIM_REDIS ? ", shared through Redis"
             : lim == LIM_DICT ? ", shared through the nginx shared dict '" : "",
             lim == LIM_DICT ? q->dict_name : "", lim == LIM_DICT ? "'" : "");
    end_with(L, r, x, out, CC_RATE_LIMITED, msg, wait);
    (*done)++;
    return 0;
}

/* The turn of x, whose time to start has come: 1 when it may start now;
 * else it waits for its reserved start or for Redis's answer (X_TURN), or
 * has ended. Every attempt takes its own turn, when it is about to start. */
static int take_turn(lua_State *L, run *r, xfer *x, int out, double now, size_t *done)
{
    const cc_req *q = &x->req;
    int lim = x->fell_back ? x->fallback : q->lim, rc;
    double wait = 0;
    if (lim == LIM_OFF || x->turn) {
        x->turn = 0;
        return 1;
    }
    if (lim == LIM_REDIS) {
        x->state = X_TURN;
        x->rstate = RS_WANT;        /* asked with the others due now, in one round trip */
        return 0;
    }
    if (lim == LIM_DICT) {
        lua_rawgeti(L, r->dicts, (int)(x - r->x) + 1);
        rc = cc_dict_take(L, -1, q, now, x->deadline - now, &wait);
        lua_pop(L, 1);
    } else {
        rc = cc_limit_take(q->limit_key, q->limit_requests, q->limit_per, now, x->deadline - now, &wait);
    }
    return turn_said(L, r, x, out, rc, wait, now, done);
}

/* Redis could not give x a turn: the process window takes over for the
 * rest of the run (after one redis_fallback event), or, with
 * redis_required, x ends with `connect`, nothing sent. */
static void fall_back(lua_State *L, run *r, xfer *x, int out, const char *why, size_t *done)
{
    char msg[CC_MSG_MAX];
    if (x->req.redis_required) {
        snprintf(msg, sizeof msg, "%s; rate_limit.redis_required: nothing sent", why);
        end_with(L, r, x, out, CC_CONNECT, msg, -1);
        (*done)++;
        return;
    }
    x->fell_back = 1;
    x->state = X_WAIT;
    if (!r->told && x->event) {
        r->told = 1;
        cc_event_new(L, x, "redis_fallback", x->attempts + 1);
        cc_push_line(L, why, strlen(why), NULL, 0);   /* Redis's words, on one line as errors are */
        lua_setfield(L, -2, "message");
        cc_emit(L, r, x);
    }
}

/* A start granted by Redis, recorded in the fallback's window too (the
 * process's, or the shared dict), so a fallback later remembers it. */
static void note_start(lua_State *L, run *r, xfer *x, double now, double t)
{
    const cc_req *q = &x->req;
    if (x->fallback == LIM_DICT) {
        lua_rawgeti(L, r->dicts, (int)(x - r->x) + 1);
        cc_dict_note(L, -1, q, now, t);
        lua_pop(L, 1);
    } else if (!cc_limit_note(q->limit_key, q->limit_requests, q->limit_per, t)) {
        r->oom = 1;
    }
}

/* The waits before which the k items of a Redis ask must not start: their
 * fallback window's, where the starts made while Redis was away are. */
static int not_before(lua_State *L, run *r, xfer **group, int k, double now, double *nb)
{
    const cc_req *q = &group[0]->req;
    if (group[0]->fallback == LIM_DICT) {
        lua_rawgeti(L, r->dicts, (int)(group[0] - r->x) + 1);
        cc_dict_plan(L, -1, q, now, (size_t)k, nb);
        lua_pop(L, 1);
        return 1;
    }
    return cc_limit_plan(q->limit_key, q->limit_requests, q->limit_per, now, (size_t)k, nb);
}

/* Acts on Redis's answers: a start reserved (kept in the process window
 * too, so a fallback later remembers it), none in time, or no answer. */
static void turn_answers(lua_State *L, run *r, int out, double now, size_t *done)
{
    size_t i;
    for (i = 0; i < r->n && !r->oom; i++) {
        xfer *x = &r->x[i];
        int rs = x->rstate;
        if (x->state != X_TURN || rs == RS_WANT || rs == RS_ASKED) continue;
        x->rstate = RS_NONE;
        x->state = X_WAIT;
        x->next_start = now;
        if (rs == RS_GRANTED && now + x->rwait >= x->deadline) {
            /* the answer came late: its start lies past the deadline (the
             * slot stays reserved, which only makes the window stricter) */
            turn_said(L, r, x, out, 0, x->rwait, now, done);
        } else if (rs == RS_GRANTED) {
            note_start(L, r, x, now, now + x->rwait);
            if (turn_said(L, r, x, out, 1, x->rwait, now, done)) x->turn = 1, x->turn_from = LIM_REDIS;
        } else if (rs == RS_LATE) {
            turn_said(L, r, x, out, 0, x->rwait, now, done);
        } else if (rs == RS_FAILED) {
            fall_back(L, r, x, out, cc_redis_why(cc_redis_get(r->s, x->req.redis_url)), done);
        }   /* RS_AGAIN: asked again, on a fresh connection */
    }
}

/* Seconds Redis may take to answer x: its connect_timeout, but never more
 * than half of what is left, so that a fallback still has time to send. */
static double redis_bound(const xfer *x, double now)
{
    double half = (x->deadline - now) / 2;
    return x->req.connect_timeout < half ? x->req.connect_timeout : half > 0.001 ? half : 0.001;
}

/* Asks Redis for the turns wanted now: one round trip per window (one key
 * and limit), whatever the number of items. Returns 1 when some could not
 * be asked and fell back (they are due now). */
static int ask_turns(lua_State *L, run *r, int out, double now, size_t *done)
{
    int fell = 0;
    xfer *few[8], **group = r->n <= 8 ? few : NULL;
    double nbfew[8], *nb = r->n <= 8 ? nbfew : NULL;
    size_t i, j;
    for (i = 0; i < r->n && !r->oom; i++) {
        xfer *x = &r->x[i];
        cc_redis *c;
        double due;
        int k = 0, rc;
        if (x->state != X_TURN || x->rstate != RS_WANT) continue;
        if (!group && !(group = malloc(r->n * sizeof *group))) {
            r->oom = 1;
            break;
        }
        if (!nb && !(nb = malloc(r->n * sizeof *nb))) {
            r->oom = 1;
            break;
        }
        if (!(c = cc_redis_get(r->s, x->req.redis_url))) {
            r->oom = 1;
            break;
        }
        due = now + redis_bound(x, now);
        for (j = i; j < r->n; j++) {
            xfer *y = &r->x[j];
            if (y->state == X_TURN && y->rstate == RS_WANT && strcmp(y->req.redis_url, x->req.redis_url) == 0 &&
                strcmp(y->req.lim_name, x->req.lim_name) == 0) {
                group[k++] = y;
                if (now + redis_bound(y, now) < due) due = now + redis_bound(y, now);
            }
        }
        if (!not_before(L, r, group, k, now, nb) || (rc = cc_redis_turns(c, group, nb, k, now, due)) < 0) {
            r->oom = 1;
            break;
        }
        for (j = 0; rc == 0 && j < (size_t)k; j++) {
            group[j]->rstate = RS_NONE;
            fall_back(L, r, group[j], out, cc_redis_why(c), done);
            fell = 1;
        }
    }
    if (group != few) free(group);
    if (nb != nbfew) free(nb);
    return fell;
}

/* Starts what may start now; returns the time of the next start to wait
 * for (at most WAKE_EVERY away). An item holds one of the run's places from
 * its turn to the end of its attempt, so no turn is taken for an item that
 * could not start at once. */
static double start_due(lua_State *L, run *r, int out, size_t *done)
{
    double now = cc_mono(), wake = now + WAKE_EVERY;
    size_t i;
    turn_answers(L, r, out, now, done);
    for (i = 0; i < r->n && !r->oom; i++) {
        xfer *x = &r->x[i];
        int rc;
        if (x->state != X_WAIT) continue;
        if (x->next_start > now) {
            if (x->next_start < wake) wake = x->next_start;
            continue;
        }
        if (!x->slot) {
            if (r->active >= r->concurrency) continue;
            x->slot = 1;
            r->active++;
        }
        if (now >= x->deadline) {
            end_with(L, r, x, out, CC_TIMEOUT, "no time left before the timeout for another attempt", -1);
            (*done)++;
            continue;
        }
        if (!take_turn(L, r, x, out, now, done)) {
            if (x->state == X_WAIT && x->next_start < wake) wake = x->next_start;
            continue;
        }
        if ((rc = cc_start_attempt(r->s, x, now)) > 0) {
            r->xfers++;
        } else if (rc == 0) {
            r->oom = 1;
        } else if (rc < 0) {
            int tls = strstr(x->errbuf, "SSL") || strstr(x->errbuf, "CAINFO");
            end_with(L, r, x, out, tls ? CC_TLS : CC_CONNECT, x->errbuf, -1);
            (*done)++;
        }
    }
    if (ask_turns(L, r, out, now, done)) wake = now;     /* the fallback's turn: at once */
    return wake;
}

/* Reads the attempts libcurl has finished; returns how many requests
 * ended (0 or more) and sets *finished when any attempt did. */
static size_t collect(lua_State *L, run *r, int out, int *finished)
{
    cc_session *s = r->s;
    size_t ended = 0;
    int queued;
    CURLMsg *m;
    while (!r->oom && (m = curl_multi_info_read(s->multi, &queued)) != NULL) {
        xfer *x = NULL;
        CURLcode rc = m->data.result;
        if (m->msg != CURLMSG_DONE) continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        curl_multi_remove_handle(s->multi, x->easy);
        x->state = X_DONE;
        x->slot = 0;            /* a retry takes a place again when it is due */
        r->active--;
        r->xfers--;
        *finished = 1;
        if (finish(L, r, x, rc)) {
            x->state = X_DONE;
            store(L, out, (size_t)(x - r->x));
            ended++;
        }
        cc_easy_put(s, x->easy, x->sticky, &x->st);
        x->easy = NULL;
    }
    return ended;
}

/* Raises when libcurl's multi handle fails, so a broken one cannot spin. */
static void check_multi(lua_State *L, CURLMcode rc)
{
    if (rc != CURLM_OK && rc != CURLM_CALL_MULTI_PERFORM)
        luaL_error(L, "cachectl: libcurl's multi handle failed: %s", curl_multi_strerror(rc));
}

#define MAX_REDIS_FDS 64

/* Waits for the network (libcurl's transfers and the session's Redis
 * connections) or until `wake`, then lets Redis read and write. */
static void wait_until(lua_State *L, cc_session *s, double wake, int running)
{
    struct curl_waitfd fds[MAX_REDIS_FDS];
    int nfds = s->redis ? cc_redis_fds(s, fds, MAX_REDIS_FDS) : 0, timeout;
    double left, due = s->redis ? cc_redis_due(s) : HUGE_VAL;
    if (due < wake) wake = due;
    left = wake - cc_mono();
    timeout = left <= 0 ? 0 : (int)ceil(left * 1000);
    if (running) {
#if LIBCURL_VERSION_NUM >= 0x074200
        check_multi(L, curl_multi_poll(s->multi, fds, (unsigned)nfds, timeout, NULL));
#else
        check_multi(L, curl_multi_wait(s->multi, fds, (unsigned)nfds, timeout, NULL));
#endif
    } else if (nfds > 0) {      /* only Redis: a plain poll */
        struct pollfd p[MAX_REDIS_FDS];
        int i;
        for (i = 0; i < nfds; i++) {
            p[i].fd = fds[i].fd;
            p[i].events = (short)(((fds[i].events & CURL_WAIT_POLLIN) ? POLLIN : 0) |
                                  ((fds[i].events & CURL_WAIT_POLLOUT) ? POLLOUT : 0));
            p[i].revents = 0;
        }
        poll(p, (nfds_t)nfds, timeout);
        for (i = 0; i < nfds; i++)
            fds[i].revents = (short)(((p[i].revents & (POLLIN | POLLERR | POLLHUP)) ? CURL_WAIT_POLLIN : 0) |
                                     ((p[i].revents & POLLOUT) ? CURL_WAIT_POLLOUT : 0));
    } else if (timeout > 0) {
        struct timespec ts = { timeout / 1000, (timeout % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    if (s->redis) cc_redis_io(s, fds, nfds, cc_mono());
}

/* Ends every request still open: a signal handler set a hook, which fires
 * (the interpreter's "interrupted!") as soon as the call returns. */
static void stop_all(lua_State *L, run *r, int out)
{
    size_t i;
    for (i = 0; i < r->n; i++) {
        xfer *x = &r->x[i];
        if (x->state == X_DONE) continue;
        if (x->state == X_RUN) {
            curl_multi_remove_handle(r->s->multi, x->easy);
            cc_easy_put(r->s, x->easy, 1, &x->st);
            x->easy = NULL;
        }
        end_with(L, r, x, out, CC_TIMEOUT, "interrupted by a signal before the answer came", -1);
    }
}

static void drive(lua_State *L, run *r, int out, size_t done)
{
    while (done < r->n && !r->oom) {
        double wake = start_due(L, r, out, &done);
        int running = 0, finished = 0;
        if (r->oom) break;
        if (r->xfers > 0) {     /* only Redis to wait for: libcurl has nothing to do */
            check_multi(L, curl_multi_perform(r->s->multi, &running));
            done += collect(L, r, out, &finished);
        }
        /* a finished attempt may have freed a slot or set a retry time */
        if (done < r->n && !r->oom && !finished) wait_until(L, r->s, wake, running);
        if (done < r->n && cc_interrupted(L, r)) {
            stop_all(L, r, out);
            break;
        }
    }
}

typedef struct run_args {
    run *r;
    const cc_endpoint *ep;
    int single, concurrency;
} run_args;

/* Keeps the request's on_event function, as given when the call started,
 * in the run's event table (created on the first). */
static void keep_event(lua_State *L, run *r, xfer *x)
{
    if (lua_isnil(L, r->events)) {
        lua_newtable(L);
        lua_replace(L, r->events);
    }
    lua_rawseti(L, r->events, (int)(x - r->x) + 1);
    x->event = 1;
}

/* Keeps the nginx shared dict of x's rate_limit.shared_dict in the run's
 * dict table: it takes the turns, or those of a Redis that failed. Outside
 * nginx the process window does. */
static void keep_dict(lua_State *L, run *r, xfer *x)
{
    x->fallback = LIM_PROCESS;
    cc_dict_find(L, &x->req);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        if (x->req.lim == LIM_DICT) x->req.lim = LIM_PROCESS;
        return;
    }
    x->fallback = LIM_DICT;
    if (lua_isnil(L, r->dicts)) {
        lua_newtable(L);
        lua_replace(L, r->dicts);
    }
    lua_rawseti(L, r->dicts, (int)(x - r->x) + 1);
}

/* Reads item i into its request. An invalid one ends at once (returns 1). */
static int parse_item(lua_State *L, const run_args *a, size_t i, int out, double now)
{
    run *r = a->r;
    xfer *x = &r->x[i];
    int top = lua_gettop(L), idx = 1, ok;
    x->state = X_DONE;
    if (!a->single) {
        lua_rawgeti(L, 1, (int)i + 1);
        if (!lua_istable(L, -1) && lua_type(L, -1) != LUA_TUSERDATA)
            luaL_error(L, "%s.%s batch: item %d is not an options table (got %s)", a->ep->service,
                       a->ep->name, (int)i + 1, luaL_typename(L, -1));
        idx = top + 1;
    }
    if (lua_istable(L, idx)) {
        /* on_event as read with the rest, pushed by cc_req_parse */
        if ((ok = cc_req_parse(L, idx, a->ep, &x->req)) != 0 && x->req.on_event) keep_event(L, r, x);
    } else if ((ok = cc_prepared_take(L, idx, a->ep, &x->req)) != 0) {
        if (ok == 2) keep_event(L, r, x);       /* parsed once, by core.prepare */
    } else {
        luaL_error(L, "%s.%s: options table expected (got %s)", a->ep->service, a->ep->name, luaL_typename(L, idx));
    }
    lua_settop(L, top);
    /* the header lines copy the credential and User-Agent at once: Lua code
     * that runs before the first attempt cannot change them */
    if (ok && !cc_build_headers(r->s, x)) luaL_error(L, "not enough memory");
    if (!ok) {
        lua_pushnil(L);
        cc_push_error(L, CC_INVALID, x->req.bad_msg, 0, NULL, -1, 0, x->req.bad_field, NULL);
        store(L, out, i);
        return 1;
    }
    x->fallback = LIM_PROCESS;
    if (x->req.dict_name) keep_dict(L, r, x);
    x->state = X_WAIT;
    x->deadline = now + x->req.timeout;
    x->next_start = now;
    return 0;
}

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
    lua_pushnil(L);         /* the on_event functions by item, once one is given */
    r->events = lua_gettop(L);
    lua_pushnil(L);         /* the shared dicts by item, once one is used */
    r->dicts = lua_gettop(L);
    for (i = 0; i < r->n; i++) done += (size_t)parse_item(L, a, i, out, now);
    cc_see_hooks(L, r);
    r->concurrency = a->concurrency < 1 ? 1 : a->concurrency;
    drive(L, r, out, done);
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
    run_release(r);
    if (!single) free(r);
    if (s->close_pending) cc_session_close(s);     /* __close or __gc during the run */
    if (rc != 0) return lua_error(L);
    return lua_gettop(L) - top;
}
