/* endpoints.c — the single source of truth about the services and their
 * calls: one service row each (hosts, credential, environment variables,
 * default limit) and one endpoint row per call (method, path, success rule,
 * idempotency, options, the client method's positional arguments and the
 * command's action). core.c exports both whole to Lua; the clients and the
 * command are built from them. Adding a call is adding a row. */
#include <string.h>
#include "cachectl.h"

const cc_service cc_services[] = {
    { "modelslab", "key", "MODELSLAB_API_KEY", "MODELSLAB_BASE_URL",
      "https://modelslab.com/api", NULL, NULL, AUTH_BODY_KEY, NULL, "3d", 0, 0 },
    { "omni", "token", "OMNI_API_KEY", "OMNI_BASE_URL",
      NULL, "https://{instance}.omniapp.co/api", "https://{instance}.playground.exploreomni.dev/api",
      AUTH_BEARER, "Authorization: Bearer ", NULL, 60, 60 },
};
const size_t cc_nservices = sizeof cc_services / sizeof cc_services[0];

#define ML (&cc_services[0])
#define OMNI (&cc_services[1])
#define OMNI_HOST (OPT_TOKEN | OPT_INSTANCE | OPT_PLAYGROUND)
#define ENTERPRISE (OPT_KEY | OPT_PRODUCT | OPT_DEPLOY_TYPE)

/* The five Enterprise server calls of any product (or none: product = false). */
#define ENTERPRISE_ROW(fn, action, cli, idempotent, rule) \
    { ML, "modelslab", fn, "POST", "/v1/enterprise/{product}/" action, rule, idempotent, ENTERPRISE, \
      { NULL }, cli }

/* service, name, method, path, success rule, idempotent, options,
 * positional arguments of the client method, the command's action */
const cc_endpoint cc_endpoints[] = {
    { ML, "modelslab", "clear_cache", "POST", "/v5/clear_cache", RULE_STATUS_SUCCESS, 1, OPT_KEY,
      { NULL }, "clear-cache" },
    ENTERPRISE_ROW("clear_queue", "clear_queue", "clear-queue", 1, RULE_STATUS_SUCCESS),
    ENTERPRISE_ROW("enterprise_clear_cache", "clear_cache", "enterprise-clear-cache", 1, RULE_STATUS_SUCCESS),
    ENTERPRISE_ROW("restart_server", "restart_server", "restart-server", 0, RULE_STATUS_SUCCESS),
    ENTERPRISE_ROW("update_server", "update_server", "update-server", 0, RULE_STATUS_SUCCESS),
    ENTERPRISE_ROW("system_details", "system_details", "system-details", 1, RULE_STATUS_NOT_ERROR),
    { ML, "modelslab", "request", NULL, "{path}", RULE_STATUS_NOT_ERROR, 1, OPT_KEY | OPT_REQUEST,
      { "method", "path", "body" }, NULL },
    { OMNI, "omni", "reset_cache", "POST", "/v1/models/{model_id}/cache_reset/{policy}",
      RULE_SUCCESS_NOT_FALSE, 1, OMNI_HOST | OPT_MODEL_ID | OPT_POLICY | OPT_RESET_AT,
      { "model_id", "policy" }, "reset-cache" },
    { OMNI, "omni", "list_models", "GET", "/v1/models", RULE_SUCCESS_NOT_FALSE, 1,
      OMNI_HOST | OPT_LIST, { NULL }, NULL },
    { OMNI, "omni", "model_yaml", "GET", "/v1/models/{model_id}/yaml", RULE_SUCCESS_NOT_FALSE, 1,
      OMNI_HOST | OPT_MODEL_ID | OPT_YAML, { "model_id" }, NULL },
    { OMNI, "omni", "request", NULL, "{path}", RULE_SUCCESS_NOT_FALSE, 1, OMNI_HOST | OPT_REQUEST,
      { "method", "path", "body" }, NULL },
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

const cc_service *cc_service_find(const char *name)
{
    size_t i;
    for (i = 0; i < cc_nservices; i++)
        if (strcmp(cc_services[i].name, name) == 0) return &cc_services[i];
    return NULL;
}
