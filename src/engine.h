/* engine.h — what the session (session.c) and the run loop (engine.c)
 * share: a session's state and its pool of easy handles, one run and its
 * requests, and the callbacks every pooled handle is set up with. Private
 * to those two files. */
#ifndef CACHECTL_ENGINE_H
#define CACHECTL_ENGINE_H

#include "cachectl.h"

#define POOL_MAX 16

enum { X_WAIT, X_RUN, X_DONE };

typedef struct xfer {
    cc_req req;
    CURL *easy;
    int sticky;
    struct curl_slist *headers;   /* the session's, or auth below in front of them */
    struct curl_slist auth;       /* "Authorization: Bearer ..." (data malloc'd) */
    cc_buf resp;
    int too_large, oom, state, attempts;
    int sends;              /* requests libcurl sent in this attempt */
    double deadline, next_start;
    char retry_after[64];
    char errbuf[CURL_ERROR_SIZE];
} xfer;

typedef struct run {
    struct cc_session *s;
    size_t n;
    int oom;
    xfer *x;            /* calloc'd, or one[] for a single call */
    xfer one[1];
} run;

/* An idle easy handle; sticky: its last request set options beyond the
 * usual ones (proxy, CA file, no verification, a method, a fresh
 * connection), so it must be reset before the next. */
typedef struct pooled {
    CURL *easy;
    int sticky;
} pooled;

struct cc_session {
    CURLM *multi;
    pooled pool[POOL_MAX];
    int npool;
    struct curl_slist *headers;  /* the headers every request sends */
    uint64_t rng;
    struct run *active;     /* the run in progress */
    struct run single;      /* the run of single calls, reused */
};

/* session.c: the pool of easy handles (a handle comes back with the options
 * every request shares; sticky: it must be reset before reuse). */
CURL *cc_easy_get(cc_session *s, int sticky);
void cc_easy_put(cc_session *s, CURL *e, int sticky);

/* engine.c */
void cc_run_release(run *r);
size_t cc_on_body(char *p, size_t size, size_t nmemb, void *ud);
size_t cc_on_header(char *p, size_t size, size_t nmemb, void *ud);
int cc_on_send(void *ud, char *ip, char *local_ip, int port, int local_port);

#endif
