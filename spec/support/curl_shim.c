/* curl_shim.c — a test double put in front of libcurl with LD_PRELOAD, to
 * see what cachectl.core does when libcurl fails where it never does on a
 * healthy machine (spec/libcurl_spec.lua):
 *   CURL_SHIM_REFUSE=NAME   curl_easy_setopt(CURLOPT_NAME, ...) fails
 *   CURL_SHIM_BROKEN_MULTI=1 curl_multi_perform fails without doing anything
 * Every other call goes to the real libcurl. */
#define CURL_DISABLE_TYPECHECK
#include <curl/curl.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

CURLcode curl_easy_setopt(CURL *e, CURLoption option, ...);
CURLMcode curl_multi_perform(CURLM *m, int *running);

static const struct { const char *name; CURLoption option; } options[] = {
    { "FOLLOWLOCATION", CURLOPT_FOLLOWLOCATION }, { "NOPROXY", CURLOPT_NOPROXY },
    { "SSL_VERIFYPEER", CURLOPT_SSL_VERIFYPEER }, { "PROTOCOLS_STR", CURLOPT_PROTOCOLS_STR },
    { "CAINFO", CURLOPT_CAINFO },
};

/* The real function: libcurl is loaded by the module, not globally, so it
 * is looked up in libcurl itself. */
static void *real_fn(const char *name)
{
    static void *libcurl;
    if (!libcurl) libcurl = dlopen("libcurl.so.4", RTLD_NOW);
    return libcurl ? dlsym(libcurl, name) : NULL;
}

static int refused(CURLoption option)
{
    const char *name = getenv("CURL_SHIM_REFUSE");
    size_t i;
    for (i = 0; name && i < sizeof options / sizeof options[0]; i++)
        if (options[i].option == option && strcmp(options[i].name, name) == 0) return 1;
    return 0;
}

/* Every option's value is a long, a pointer or a curl_off_t: one 64-bit
 * argument on the platforms this test runs on. */
CURLcode curl_easy_setopt(CURL *e, CURLoption option, ...)
{
    static CURLcode (*real)(CURL *, CURLoption, ...);
    va_list ap;
    void *arg;
    va_start(ap, option);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (refused(option)) return CURLE_UNKNOWN_OPTION;
    if (!real) *(void **)&real = real_fn("curl_easy_setopt");
    return real(e, option, arg);
}

CURLMcode curl_multi_perform(CURLM *m, int *running)
{
    static CURLMcode (*real)(CURLM *, int *);
    if (getenv("CURL_SHIM_BROKEN_MULTI")) {
        *running = 1;
        return CURLM_INTERNAL_ERROR;
    }
    if (!real) *(void **)&real = real_fn("curl_multi_perform");
    return real(m, running);
}
