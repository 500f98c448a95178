/* handles.c — the libcurl side of a session: its multi handle, opened on
 * the first call (its descriptors close-on-exec), the pool of idle easy
 * handles, each set up once with the options and callbacks every request
 * shares (its sockets close-on-exec; the callbacks only copy bytes into the
 * transfer's buffers and never touch Lua), what a session inherited through
 * fork() (left alone), and freeing all a session holds. The engine takes
 * handles from here; nothing here calls the engine. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include "engine.h"
#include "clock.h"

/* ---- what a child process inherited ---------------------------------- */

/* A session used in a process other than the one that opened its handles
 * (fork) shares their connections with the parent: neither used nor freed
 * there (freeing may write to a connection the parent still uses, e.g. a
 * TLS close_notify). They stay listed here, reachable, for the life of the
 * child: a bounded leak, one multi handle and its idle easy handles per
 * session. */
typedef struct kept { void *handle; struct kept *next; } kept;
static kept *inherited;
static pthread_mutex_t inherited_lock = PTHREAD_MUTEX_INITIALIZER;

static void keep(void *handle)
{
    kept *k = malloc(sizeof *k);
    if (!k) return;               /* then only unreachable: still never freed */
    k->handle = handle;
    pthread_mutex_lock(&inherited_lock);
    k->next = inherited;
    inherited = k;
    pthread_mutex_unlock(&inherited_lock);
}

void cc_session_forget(cc_session *s)
{
    while (s->npool > 0) keep(s->pool[--s->npool].easy);
    if (s->multi) keep(s->multi);
    s->multi = NULL;
}

/* Sessions with their handles open (or forgotten in a child, until
 * closed), process-wide: session.c asks for a collection when they pile
 * up. */
static long open_count;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

long cc_open_sessions(void)
{
    long n;
    pthread_mutex_lock(&count_lock);
    n = open_count;
    pthread_mutex_unlock(&count_lock);
    return n;
}

static void uncount(cc_session *s)
{
    if (!s->counted) return;
    pthread_mutex_lock(&count_lock);
    open_count--;
    pthread_mutex_unlock(&count_lock);
    s->counted = 0;
}

/* Frees what the session holds; idempotent. Never while a run is active:
 * the callers defer or refuse. In a forked child the inherited handles
 * are forgotten instead. */
void cc_session_close(cc_session *s)
{
    if (s->multi && s->pid != (long)getpid()) cc_session_forget(s);
    while (s->npool > 0) curl_easy_cleanup(s->pool[--s->npool].easy);
    curl_slist_free_all(s->headers);
    s->headers = s->headers_noua = NULL;
    curl_url_cleanup(s->url);
    free(s->url_text);
    s->url = NULL;
    s->url_text = NULL;
    cc_redis_close_all(s);
    if (s->multi) curl_multi_cleanup(s->multi);
    s->multi = NULL;
    s->close_pending = 0;
    s->closed = 1;
    uncount(s);
}

/* ---- the multi handle ------------------------------------------------- */

/* libcurl before 8.8 makes the multi handle's wakeup pair (a socketpair,
 * or a pipe) without close-on-exec, and says nothing of its descriptors.
 * New descriptors take the lowest free numbers: those are found before
 * curl_multi_init, and afterwards each of them that is open without
 * close-on-exec is marked. Sessions open one at a time (nginx's pool
 * threads may open theirs at once); a descriptor another thread opens in
 * that instant may be marked too, which only keeps it from child
 * processes. */
#define NPROBE 3
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;

int cc_session_open(cc_session *s)
{
    int probe[NPROBE], i;
    pthread_mutex_lock(&open_lock);
    for (i = 0; i < NPROBE; i++) probe[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (i = 0; i < NPROBE; i++)
        if (probe[i] >= 0) close(probe[i]);
    s->multi = curl_multi_init();
    for (i = 0; i < NPROBE && s->multi; i++) {
        int flags = probe[i] >= 0 ? fcntl(probe[i], F_GETFD) : -1;
        if (flags >= 0 && !(flags & FD_CLOEXEC)) fcntl(probe[i], F_SETFD, flags | FD_CLOEXEC);
    }
    pthread_mutex_unlock(&open_lock);
    s->pid = (long)getpid();
    if (s->multi && !s->counted) {
        pthread_mutex_lock(&count_lock);
        open_count++;
        pthread_mutex_unlock(&count_lock);
        s->counted = 1;
    }
    return s->multi != NULL;
}

/* ---- libcurl's callbacks -------------------------------------------- */

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

#if LIBCURL_VERSION_NUM >= 0x075000
/* Called before each request goes out, so a silent resend by libcurl on a
 * dead reused connection is counted in err.attempts too. (Before libcurl
 * 7.80 there is no such callback: a silent resend is not counted.) */
int cc_on_send(void *ud, char *ip, char *local_ip, int port, int local_port)
{
    (void)ip, (void)local_ip, (void)port, (void)local_port;
    ((xfer *)ud)->sends++;
    return CURL_PREREQFUNC_OK;
}
#endif

/* A socket that could not be opened for want of descriptors, in this
 * thread: when (cc_mono) and why. The run that reads the failure is on the
 * same thread; libcurl itself only says "Couldn't connect". */
static __thread double shortage_at = -1;
static __thread int shortage_errno;

/* Whether the process is (about) out of descriptors now: a few opened and
 * closed again. For failures libcurl reports as something else (a CA file
 * it could not open). */
const char *cc_fd_probe(void)
{
    int fds[4], i, n = 0, err = 0;
    for (i = 0; i < 4; i++) {
        if ((fds[n] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
            err = errno;
            break;
        }
        n++;
    }
    while (n > 0) close(fds[--n]);
    return err == EMFILE ? "EMFILE: the process is at its limit, see ulimit -n"
         : err == ENFILE ? "ENFILE: the system is at its limit" : NULL;
}

const char *cc_fd_shortage(double since)
{
    if (shortage_at < since) return NULL;
    return shortage_errno == EMFILE ? "EMFILE: the process is at its limit, see ulimit -n"
                                    : "ENFILE: the system is at its limit";
}

/* Every socket libcurl opens is close-on-exec, so a child process started
 * during or after a call (io.popen, os.execute) holds none of them. */
static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    int fd;
    (void)ud, (void)purpose;
#ifdef SOCK_CLOEXEC
    fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
#else
    fd = socket(a->family, a->socktype, a->protocol);
    if (fd >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
        close(fd);
        fd = -1;
    }
#endif
    if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
        shortage_errno = errno;
        shortage_at = cc_mono();
    }
    return fd < 0 ? CURL_SOCKET_BAD : fd;
}

/* The options every request shares. Those that keep a credential safe
 * (only http and https, no redirects, TLS verification on) are checked:
 * returns the name of one libcurl refused, or NULL. */
static const char *shared_options(CURL *e)
{
#if LIBCURL_VERSION_NUM >= 0x075500
    if (curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK)
        return "CURLOPT_PROTOCOLS_STR";
#else
    if (curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) != CURLE_OK)
        return "CURLOPT_PROTOCOLS";
#endif
    if (curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK) return "CURLOPT_FOLLOWLOCATION";
    if (curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK) return "CURLOPT_SSL_VERIFYPEER";
    if (curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK) return "CURLOPT_SSL_VERIFYHOST";
    if (curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket) != CURLE_OK)
        return "CURLOPT_OPENSOCKETFUNCTION";
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, cc_on_body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, cc_on_header);
#if LIBCURL_VERSION_NUM >= 0x075000
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, cc_on_send);
#endif
    return NULL;
}

/* An easy handle with the options every request shares. A pooled handle
 * keeps them, and is reset only when its last request or this one is
 * sticky: most calls set just the handful of options that change. */
CURL *cc_easy_get(cc_session *s, int sticky, hstate *st, const char **refused)
{
    CURL *e = NULL;
    *refused = NULL;
    if (s->npool > 0) {
        pooled *p = &s->pool[--s->npool];
        e = p->easy;
        if (!p->sticky && !sticky) {
            *st = p->st;
            return e;
        }
        curl_easy_reset(e);
    } else if (!(e = curl_easy_init())) {
        return NULL;
    }
    memset(st, 0, sizeof *st);
    if ((*refused = shared_options(e)) != NULL) {
        curl_easy_cleanup(e);
        return NULL;
    }
    return e;
}

void cc_easy_put(cc_session *s, CURL *e, int sticky, const hstate *st)
{
    if (s->npool < POOL_MAX) {
        pooled *p = &s->pool[s->npool++];
        p->easy = e;
        p->sticky = sticky;
        p->st = *st;
    } else {
        curl_easy_cleanup(e);
    }
}
