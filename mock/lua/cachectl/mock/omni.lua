--- The Omni routes of the mock server: "Reset cache"
-- (`POST .../v1/models/{modelId}/cache_reset/{policyName}`), the model list
-- (`GET .../v1/models`) and a model's YAML (`GET .../v1/models/{modelId}/yaml`),
-- all behind a Bearer token and the optional sliding-window rate limit.
--
-- Error shapes: each endpoint answers the shape its own documentation shows.
-- The reset page shows `{"error": "<code>", "message": "<text>"}`; the list
-- and YAML endpoints, documented only by the OpenAPI document, answer
-- `{"detail": "<text>", "status": n}` (422: `{"error": "<text>"}`). The
-- server option `omni_error_shape` ("detail" or "error") sets one shape for
-- all three, and a `shape=detail` or `shape=error` directive in the token
-- sets it for one request.
-- @module cachectl.mock.omni

local ipairs, pairs, tonumber, tostring, type = ipairs, pairs, tonumber, tostring, type
local math = math

local socket = require "socket"
local http = require "cachectl.mock.http"
local json = require "cachectl.mock.json"
local match = require "cachectl.mock.match"
local openapi = require "cachectl.mock.openapi"
local ratelimit = require "cachectl.mock.ratelimit"
local util = require "cachectl.mock.util"

local omni = { name = "omni" }

local ZERO_UUID = "00000000-0000-0000-0000-000000000000"
local MAX_PAGE_SIZE = 100
local BOOLEANS = { ["true"] = true, ["1"] = true, ["false"] = false, ["0"] = false }

local STATUS_MESSAGES = {
  [429] = "Too many requests", [500] = "Internal server error", [502] = "Bad gateway",
  [503] = "Service unavailable", [504] = "Gateway timeout",
}

local function bearer_token(req)
  local auth = req.headers["authorization"]
  local token = auth and auth:match("^%s*[Bb][Ee][Aa][Rr][Ee][Rr]%s+(.-)%s*$")
  if token ~= "" then return token end
end

--- The token of a request, or nil.
omni.credential = bearer_token

local function shape_of(req)
  local token = bearer_token(req)
  local asked = token and token:match("shape=(%a+)")
  if asked == "detail" or asked == "error" then return asked end
  return req.error_shape or "detail"
end

--- An error response in the request's error shape.
function omni.error(req, status, message, headers, extra)
  local body
  if shape_of(req) == "error" then
    body = { error = tostring(status), message = message }
  elseif status == 422 then
    body = { error = message }
  else
    body = { detail = message, status = status }
  end
  for k, v in pairs(extra or {}) do body[k] = v end
  return http.json(status, body, headers)
end

--- The service's error response for an HTTP status (for faults).
function omni.status_error(req, status, headers, extra)
  return omni.error(req, status, STATUS_MESSAGES[status] or http.reason(status), headers, extra)
end

--- A 2xx that says failure (the `api_error` fault).
function omni.api_error()
  return http.json(200, { success = false, message = "Something failed", error = "E42" })
end

--- A 429 with `retry_after` in the body and no header.
function omni.retry_after_body(req)
  return omni.status_error(req, 429, nil, { retry_after = 1 })
end

-- What every Omni route checks first: method, token, rate limit.
local function gate(srv, req, route)
  if req.method ~= route.method then
    return omni.error(req, 405, "Method not allowed", { Allow = route.method })
  end
  local token = bearer_token(req)
  if not token or token:sub(1, 3) == "bad" then
    return omni.error(req, 401, "Invalid or missing bearer token")
  end
  if srv.rate then
    local ok, wait = srv.rate:take(token, req.at or socket.gettime())
    if not ok then
      return omni.error(req, 429, "Too many requests", { ["Retry-After"] = ratelimit.retry_after(wait) })
    end
  end
end

-- What Omni's OpenAPI document says of a request: nil, or an error naming the
-- field (a path parameter 400, a query parameter 422, the body 400).
local function document_error(req, query, body)
  local found = openapi.find(req.method, req.path)
  local bad = found and openapi.check(found, query or {}, body)
  if bad then return omni.error(req, bad.where == "query" and 422 or 400, bad.field .. " " .. bad.rule) end
end

-- The resetAt of a body: nil (absent), the text, or false, message.
local function reset_at_of(body)
  local reset_at = body.resetAt
  if reset_at == nil or reset_at == json.null then return nil end
  local t = type(reset_at) == "string" and util.parse_rfc3339(reset_at)
  if not t then return false, "resetAt must be an RFC 3339 date-time" end
  if t > socket.gettime() + 1 then return false, "resetAt cannot be future dated" end
  return reset_at
end

local function reset(_, req, route)
  local body = {}
  if #req.body > 0 then
    local media = (req.headers["content-type"] or ""):lower():match("^%s*([^;%s]*)")
    if media ~= "application/json" then return omni.error(req, 400, "Content-Type must be application/json") end
    body = json.object(req.body)
    if not body then return omni.error(req, 400, "Request body must be a JSON object") end
  end
  local bad_request = document_error(req, nil, #req.body > 0 and body or nil)
  if bad_request then return bad_request end
  local model_id = util.percent_decode(route.model)
  local policy = util.percent_decode(route.policy)
  if not policy then return omni.error(req, 400, "cachePolicyName is not correctly percent-encoded") end
  local reset_at, bad = reset_at_of(body)
  if reset_at == false then return omni.error(req, 400, bad) end
  if model_id == ZERO_UUID then
    return omni.error(req, 404, "Model with id " .. model_id .. " does not exist")
  end
  local now = util.now_rfc3339()
  return http.json(200, {
    success = true,
    cache_reset = {
      id = util.new_uuid(), model_id = model_id, policy_name = policy,
      created_at = now, updated_at = now, reset_at = reset_at or now,
    },
  })
end

-- The query of a request without its empty values, or nil and an error response.
local function query_of(req)
  local q, bad = util.parse_query(req.target)
  if not q then return nil, omni.error(req, 400, "Malformed query parameter '" .. bad .. "'") end
  for k, v in pairs(q) do
    if v == "" then q[k] = nil end
  end
  return q
end

-- The list's options from a query the document accepted.
local function list_options(srv, q)
  return { name = q.name, kind = q.modelKind, model_id = q.modelId, include_deleted = BOOLEANS[q.includeDeleted or "0"],
           cursor = q.cursor, page_size = math.min(tonumber(q.pageSize) or srv.page_size, MAX_PAGE_SIZE) }
end

local function list(srv, req)
  local q, err = query_of(req)
  if not q then return err end
  err = document_error(req, q)
  if err then return err end
  local page = srv.models:page(list_options(srv, q))
  if not page then return omni.error(req, 400, "Invalid cursor") end
  return http.json(200, page)
end

-- The files named by fileName: that name, else the names the simple regular
-- expression matches (matched without backtracking: cachectl.mock.match).
local function select_files(files, file_name)
  local out = {}
  if not file_name or files[file_name] then
    for name, text in pairs(files) do
      if not file_name or name == file_name then out[name] = text end
    end
    return out
  end
  local matches = match.regex(file_name)
  for name, text in pairs(matches and files or {}) do
    if matches(name) then out[name] = text end
  end
  return out
end

-- The YAML call's checks beyond the document's (which takes any string as
-- fullyResolved); nil or an error response.
local function yaml_query_error(req, q)
  local resolved = BOOLEANS[q.fullyResolved or "false"]
  if resolved == nil then return omni.error(req, 422, "fullyResolved must be true or false") end
  if resolved and (q.mode or "combined") ~= "combined" then
    return omni.error(req, 400, "fullyResolved is only valid with mode=combined")
  end
end

local function yaml(srv, req, route)
  local q, err = query_of(req)
  if not q then return err end
  err = document_error(req, q) or yaml_query_error(req, q)
  if err then return err end
  local id = util.percent_decode(route.model)
  local model = srv.models:get(id)
  if not model or model.deletedAt then return omni.error(req, 404, "Model " .. id .. " not found") end
  if model.forbidden then return omni.error(req, 403, "Permission denied") end
  return http.json(200, { files = select_files(model.files, q.fileName), version = model.version })
end

--- The routes: a pattern on the end of the path, the names of its captures,
-- the method, the default error shape and the handler(srv, req, route).
omni.ROUTES = {
  { pattern = "/v1/models/([^/]+)/cache_reset/([^/]+)$", captures = { "model", "policy" }, method = "POST",
    shape = "error", serve = reset },
  { pattern = "/v1/models/([^/]+)/yaml$", captures = { "model" }, method = "GET", shape = "detail", serve = yaml },
  { pattern = "/v1/models$", captures = {}, method = "GET", shape = "detail", serve = list },
}
for _, r in ipairs(omni.ROUTES) do
  local serve = r.serve
  r.handler = function(srv, req, route) return gate(srv, req, route) or serve(srv, req, route) end
end

return omni
