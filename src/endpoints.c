/* endpoints.c — the endpoint table: one row per call, saying its path, how
 * it authenticates, how success is told apart and whether it may be retried.
 * Adding an endpoint is adding a row. */
#include <string.h>
#include "cachectl.h"

#define ML_KEY OPT_KEY
#define OMNI (OPT_TOKEN | OPT_INSTANCE | OPT_PLAYGROUND | OPT_MODEL_ID | OPT_POLICY | OPT_RESET_AT)

#define ENTERPRISE(name, idempotent) \
    { "modelslab", #name, "/v1/enterprise/{product}/" #name, AUTH_BODY_KEY, RULE_STATUS_SUCCESS, \
      idempotent, ML_KEY | OPT_PRODUCT, 0 }

/* service, name, path, auth, success rule, idempotent, options, rate limit a minute */
const cc_endpoint cc_endpoints[] = {
    { "modelslab", "clear_cache", "/v5/clear_cache", AUTH_BODY_KEY, RULE_STATUS_SUCCESS, 1, ML_KEY, 0 },
    ENTERPRISE(clear_queue, 1),
    { "modelslab", "enterprise_clear_cache", "/v1/enterprise/{product}/clear_cache", AUTH_BODY_KEY,
      RULE_STATUS_SUCCESS, 1, ML_KEY | OPT_PRODUCT, 0 },
    ENTERPRISE(restart_server, 0),
    ENTERPRISE(update_server, 0),
    ENTERPRISE(system_details, 1),
    { "modelslab", "request", "{path}", AUTH_BODY_KEY, RULE_STATUS_NOT_ERROR, 1, ML_KEY | OPT_REQUEST, 0 },
    { "omni", "reset_cache", "/v1/models/{model_id}/cache_reset/{policy}", AUTH_BEARER,
      RULE_SUCCESS_NOT_FALSE, 1, OMNI, 60 },
    { "omni", "request", "{path}", AUTH_BEARER, RULE_SUCCESS_NOT_FALSE, 1,
      OPT_TOKEN | OPT_INSTANCE | OPT_PLAYGROUND | OPT_REQUEST, 60 },
};

const size_t cc_nendpoints = sizeof cc_endpoints / sizeof cc_endpoints[0];

const cc_endpoint *cc_endpoint_find(const char *service, const char *name)
{
    size_t i;
    for (i = 0; i < cc_nendpoints; i++)
        if (strcmp(cc_endpoints[i].service, service) == 0 && strcmp(cc_endpoints[i].name, name) == 0)
            return &cc_endpoints[i];
    return NULL;
}
