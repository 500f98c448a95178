--- The ModelsLab routes of the mock server: "Clear User Cache"
-- (`POST .../v5/clear_cache`) and the Enterprise actions of any product slug
-- (`POST .../v1/enterprise/{product}/{action}`) or of the product-less server
-- (`POST .../v1/enterprise/{action}`), with the service's error bodies.
-- @module cachectl.mock.modelslab

local pairs, type = pairs, type

local http = require "cachectl.mock.http"
local json = require "cachectl.mock.json"
local openapi = require "cachectl.mock.openapi"
local util = require "cachectl.mock.util"

local modelslab = { name = "modelslab" }

--- The Enterprise actions and their success messages.
modelslab.ACTIONS = {
  clear_queue = "Queue cleared successfully",
  clear_cache = "Cache cleared successfully",
  restart_server = "Server restart initiated successfully",
  update_server = "Server update initiated successfully",
  system_details = "System details fetched successfully",
}

local STATUS_MESSAGES = {
  [429] = "Rate limit exceeded", [500] = "Internal server error", [502] = "Bad gateway",
  [503] = "Service unavailable", [504] = "Gateway timeout",
}

local function ml_error(status, message, code, headers)
  return http.json(status, { status = "error", message = message, error_code = code }, headers)
end

--- The service's error response for an HTTP status (for faults).
function modelslab.status_error(_, status, headers, extra)
  local body = { status = "error", message = STATUS_MESSAGES[status] or http.reason(status),
                 error_code = status == 429 and "rate_limited" or "http_" .. status }
  for k, v in pairs(extra or {}) do body[k] = v end
  return http.json(status, body, headers)
end

--- A 2xx that says failure (the `api_error` fault).
function modelslab.api_error()
  return http.json(200, { status = "error", message = "Something failed", error_code = "E42" })
end

--- A 429 with `retry_after` in the body and no header.
function modelslab.retry_after_body()
  return http.json(429, { status = "error", message = "Rate limit exceeded", retry_after = 1 })
end

-- The request's body as a JSON object, or nil; decoded once per request.
local function body_of(req)
  if req.decoded == nil then req.decoded = json.object(req.body) or false end
  return req.decoded or nil
end

--- The key of a request, read from its JSON body, or nil.
function modelslab.credential(req)
  local body = body_of(req)
  if body and type(body.key) == "string" then return body.key end
end

-- What the vendor's OpenAPI document says of a body: nil, or a 400 naming the
-- field ("The key field is required.", error_code key_required).
local function document_error(found, body)
  local bad = found and openapi.check(found, {}, body)
  if not bad then return nil end
  local name = bad.field:match("^[%w_]+") or "body"
  if bad.rule == "is required" then
    return ml_error(400, "The " .. bad.field .. " field is required.", name .. "_required")
  end
  return ml_error(400, "The " .. bad.field .. " field " .. bad.rule .. ".", "invalid_" .. name)
end

-- Shared validation, `found` the operation of the vendor's document (or nil);
-- returns an error response, or nil and the body.
local function check(req, bad_key_response, found)
  if req.method ~= "POST" then
    return ml_error(405, "Method not allowed", "method_not_allowed", { Allow = "POST" })
  end
  local media = (req.headers["content-type"] or ""):lower():match("^%s*([^;%s]*)")
  if media ~= "application/json" then
    return ml_error(400, "Content-Type must be application/json", "invalid_content_type")
  end
  local body = body_of(req)
  if not body then
    return ml_error(400, "The request body must be a JSON object.", "invalid_body")
  end
  local bad = document_error(found, body)
  if bad then return bad end
  if type(body.key) ~= "string" or body.key == "" then
    return ml_error(400, "The key field is required.", "key_required")
  end
  if body.key:sub(1, 3) == "bad" then return bad_key_response end
  return nil, body
end

local function clear_cache(_, req)
  local err = check(req,
    http.json(200, { status = "error", message = "Invalid API key", error_code = "invalid_key" }))
  return err or http.json(200, { status = "success", message = "Cache cleared" })
end

local function enterprise(_, req, route)
  -- The product's own document, else the 3d document's operation for the action
  -- (every document gives an action the same body).
  local found = openapi.find("POST", req.path) or openapi.find("POST", "/v1/enterprise/3d/" .. route.action)
  local err, body = check(req, ml_error(401, "Invalid or missing API key", "unauthorized"), found)
  if err then return err end
  if route.product and not util.is_slug(route.product) then
    return ml_error(400, "Invalid product.", "invalid_product")
  end
  local deploy_type = body.deploy_type
  if deploy_type == json.null then deploy_type = nil end
  if deploy_type ~= nil and not util.is_slug(deploy_type) then
    return ml_error(400, "Invalid deploy_type.", "invalid_deploy_type")
  end
  local answer = { status = "success", message = modelslab.ACTIONS[route.action] }
  if route.action == "system_details" then
    answer.details = { product = route.product, deploy_type = deploy_type,
                       status = "running", gpu = "mock-gpu", queue_length = 0 }
  end
  return http.json(200, answer)
end

--- The routes: a pattern on the end of the path, the names of its captures,
-- the handler(srv, req, route) and, for Enterprise, the known actions.
modelslab.ROUTES = {
  { pattern = "/v1/enterprise/([^/]+)/([^/]+)$", captures = { "product", "action" }, handler = enterprise,
    accept = function(route) return modelslab.ACTIONS[route.action] ~= nil end },
  { pattern = "/v1/enterprise/([^/]+)$", captures = { "action" }, handler = enterprise,
    accept = function(route) return modelslab.ACTIONS[route.action] ~= nil end },
  { pattern = "/v5/clear_cache$", captures = {}, handler = clear_cache },
}

return modelslab
