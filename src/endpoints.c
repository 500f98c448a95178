/* endpoints.c — the endpoint table: one row per call, saying its path, how
 * it authenticates, how success is told apart and whether it may be retried.
 * Adding an endpoint is adding a row. */
#include <string.h>
#include "cachectl.h"

#define ML_KEY OPT_KEY
#define OMNI (OPT_TOKEN | OPT_INSTANCE | OPT_PLAYGROUND | OPT_MODEL_ID | OPT_POLICY | OPT_RESET_AT)

const cc_endpoint cc_endpoints[] = {
    { "modelslab", "clear_cache", "/v5/clear_cache", AUTH_BODY_KEY, RULE_STATUS_SUCCESS, 1, ML_KEY, 0 },
    { "modelslab", "clear_queue", "/v1/enterprise/{product}/clear_queue", AUTH_BODY_KEY,
      RULE_STATUS_SUCCESS, 1, ML_KEY | OPT_PRODUCT, 0 },
    { "omni", "reset_cache", "/v1/models/{model_id}/cache_reset/{policy}", AUTH_BEARER,
      RULE_SUCCESS_NOT_FALSE, 1, OMNI, 60 },
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
