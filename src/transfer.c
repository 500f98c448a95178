/* transfer.c — one attempt handed to libcurl: the request's headers (the
 * session's, with its own User-Agent and Authorization in front), its URL
 * parsed once, the options that change from request to request, those that
 * matter for safety (checked), and the easy handle added to the multi
 * handle. The run loop (engine.c) decides when; this file only how. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "engine.h"

void cc_wipe_node(struct curl_slist *n)
{
    if (!n->data) return;
    memset(n->data, 0, strlen(n->data));
    free(n->data);
    n->data = NULL;
}

/* ---- the request's shape -------------------------------------------- */

/* The headers every request of the session sends, built once: the default
 * User-Agent first, so that a request with its own starts after it. */
static int session_headers(cc_session *s)
{
    static const char *const fixed[] = { "Content-Type: application/json", "Accept: application/json" };
    struct curl_slist *h, *t;
    char ua[128];
    size_t i;
    snprintf(ua, sizeof ua, "User-Agent: %s", cc_user_agent_default());
    if (!(h = curl_slist_append(NULL, ua))) return 0;
    for (i = 0; i < sizeof fixed / sizeof fixed[0]; i++) {
        if (!(t = curl_slist_append(h, fixed[i]))) {
            curl_slist_free_all(h);
            return 0;
        }
        h = t;
    }
    s->headers = h;
    s->headers_noua = h->next;
    return 1;
}

/* Node n holds the line prefix + value (malloc'd) in front of next. */
static int header_node(struct curl_slist *n, const char *prefix, const char *v, size_t vn,
                       struct curl_slist *next)
{
    size_t pn = strlen(prefix);
    if (!(n->data = malloc(pn + vn + 1))) return 0;
    memcpy(n->data, prefix, pn);
    memcpy(n->data + pn, v, vn);
    n->data[pn + vn] = '\0';
    n->next = next;
    return 1;
}

static char no_expect[] = "Expect:";      /* libcurl only reads it */

/* The request's headers: the session's, with the request's own User-Agent,
 * Authorization and, for a body libcurl would announce with "Expect:
 * 100-continue" (over 1 KiB), an empty Expect in front. The User-Agent is a
 * header line: CURLOPT_USERAGENT would be formatted anew for every request. */
int cc_build_headers(cc_session *s, xfer *x)
{
    const cc_req *q = &x->req;
    struct curl_slist *h;
    if (!s->headers && !session_headers(s)) return 0;
    h = s->headers;
    if (q->user_agent && q->user_agent != cc_user_agent_default()) {
        if (!header_node(&x->ua, "User-Agent: ", q->user_agent, strlen(q->user_agent), s->headers_noua))
            return 0;
        h = &x->ua;
    }
    if (q->ep->svc->auth_header) {
        if (!header_node(&x->auth, q->ep->svc->auth_header, q->secret, q->secret_len, h)) return 0;
        h = &x->auth;
    }
    if (q->body_len > 1024) {
        x->expect.data = no_expect;
        x->expect.next = h;
        h = &x->expect;
    }
    x->headers = h;
    return 1;
}

/* req.url parsed once (CURLOPT_CURLU spares libcurl parsing the URL again
 * for every transfer); requests to the session's last URL share its parse.
 * Returns 1, 0 when out of memory, -1 when libcurl cannot parse it. */
static int parse_url(cc_session *s, xfer *x)
{
    const char *text = x->req.url;
    CURLU *u;
    char *copy;
    CURLUcode rc;
    if (s->url && strcmp(s->url_text, text) == 0) {
        x->url = s->url;
        s->url_users++;
        return 1;
    }
    if (!(u = curl_url())) return 0;
    if ((rc = curl_url_set(u, CURLUPART_URL, text, 0)) != CURLUE_OK) {
        curl_url_cleanup(u);
        return rc == CURLUE_OUT_OF_MEMORY ? 0 : -1;
    }
    x->url = u;
    if (s->url_users == 0 && (copy = strdup(text)) != NULL) {
        curl_url_cleanup(s->url);
        free(s->url_text);
        s->url = u;
        s->url_text = copy;
        s->url_users = 1;
    }
    return 1;
}

static long ms(double seconds)
{
    double v = ceil(seconds * 1000.0);
    return v < 1 ? 1 : v > 1e9 ? 1000000000L : (long)v;
}

/* The options that differ from request to request, each set only when the
 * pooled handle holds another value. */
static void set_usual(xfer *x, double left)
{
    const cc_req *q = &x->req;
    hstate *st = &x->st;
    CURL *e = x->easy;
    long t = ms(left), c = ms(q->connect_timeout < left ? q->connect_timeout : left);
    if (st->bound != x) {
        curl_easy_setopt(e, CURLOPT_PRIVATE, x);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
#if LIBCURL_VERSION_NUM >= 0x075000
        curl_easy_setopt(e, CURLOPT_PREREQDATA, x);
#endif
        st->bound = x;
    }
    if (st->url != x->url) curl_easy_setopt(e, CURLOPT_CURLU, (st->url = x->url));
    if (st->headers != x->headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, (st->headers = x->headers));
    if (q->method && strcmp(q->method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, q->method);
    if (q->body || !q->method || strcmp(q->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body ? q->body : "");
        if (st->body_len != (long)q->body_len + 1)
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (st->body_len = (long)q->body_len + 1) - 1);
    }
    if (st->timeout_ms != t) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (st->timeout_ms = t));
    if (st->connect_ms != c) curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (st->connect_ms = c));
    if (st->max_bytes != q->max_bytes)
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (st->max_bytes = q->max_bytes));
}

/* The options that matter for safety, checked: a plain http:// request
 * never goes through a proxy (whatever the environment says: it carries the
 * credential in cleartext), TLS as asked. Returns the name of an option
 * libcurl refused, or NULL. */
static const char *set_guarded(xfer *x)
{
    const cc_req *q = &x->req;
    CURL *e = x->easy;
    int http = strncasecmp(q->url, "http://", 7) == 0;
    if (http != x->st.no_proxy) {
        /* "*": no host goes through a proxy, given or from the environment */
        if (curl_easy_setopt(e, CURLOPT_NOPROXY, http ? "*" : NULL) != CURLE_OK) return "CURLOPT_NOPROXY";
        x->st.no_proxy = http;
    }
    if (!http && q->proxy) {
        /* a proxy given as an option is used as given: no_proxy in the
         * environment is for the environment's proxies (a sticky handle:
         * reset before its next request) */
        if (curl_easy_setopt(e, CURLOPT_PROXY, q->proxy) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_NOPROXY, "") != CURLE_OK)
            return "CURLOPT_PROXY";
        /* the CONNECT request to the proxy sends this one, not the header line */
        curl_easy_setopt(e, CURLOPT_USERAGENT, q->user_agent ? q->user_agent : cc_user_agent_default());
    }
    if (!q->verify_tls && (curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L) != CURLE_OK ||
                           curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L) != CURLE_OK))
        return "CURLOPT_SSL_VERIFYPEER";
    if (q->ca_file && curl_easy_setopt(e, CURLOPT_CAINFO, q->ca_file) != CURLE_OK)
        return "CURLOPT_CAINFO";
    if (!q->retry_ok) {
        /* libcurl silently resends a request once when a reused connection
         * turns out dead; a call that must not run twice gets its own. */
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    return NULL;
}

/* The request cannot be sent as asked; x->errbuf says why. */
static int refuse(xfer *x, const char *what)
{
    snprintf(x->errbuf, sizeof x->errbuf, "libcurl refused %s; nothing was sent", what);
    return -1;
}

/* Starts an attempt: 1, or 0 when out of memory, or -1 when libcurl refused
 * something that matters (nothing sent; x->errbuf says what). */
int cc_start_attempt(cc_session *s, xfer *x, double now)
{
    const cc_req *q = &x->req;
    const char *refused;
    int rc;
    if (!x->url && (rc = parse_url(s, x)) <= 0) return rc < 0 ? refuse(x, "the URL") : 0;
    x->sticky = q->proxy || q->ca_file || !q->verify_tls || q->method || !q->retry_ok;
    if (!(x->easy = cc_easy_get(s, x->sticky, &x->st, &refused)))
        return refused ? refuse(x, refused) : 0;
    x->resp.len = 0;
    x->too_large = 0;
    x->sends = 0;
    x->retry_after[0] = x->errbuf[0] = '\0';
    set_usual(x, x->deadline - now);
    if ((refused = set_guarded(x)) != NULL) return refuse(x, refused);
    if (curl_multi_add_handle(s->multi, x->easy) != CURLM_OK)
        return refuse(x, "the transfer (curl_multi_add_handle)");
    x->state = X_RUN;
    x->attempts++;
    x->started = now;
    return 1;
}
