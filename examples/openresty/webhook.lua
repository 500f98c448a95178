--- A webhook for OpenResty-style nginx: when a data load finishes, reset the
-- Omni cache policies of a model.
--
--    POST /hooks/data-loaded
--    Content-Type: application/json
--    {"model_id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "policies": ["daily", "hourly"]}
--
-- answers 200 when every reset succeeded, 502 when any failed:
--
--    {"ok": true, "results": [{"policy": "daily", "ok": true, "error": null}, ...]}
--
-- and 400 (bad JSON, missing or malformed model_id, policies not a list of
-- strings), 401 (wrong webhook secret), 405 (not POST) or 413 (body too
-- large) with {"ok": false, "error": "..."}.
--
-- The resets run concurrently in nginx's thread pool (`thread_pool cachectl`),
-- so the worker keeps serving other requests meanwhile. Configuration comes
-- from nginx's environment (list each variable with `env NAME;` in nginx.conf):
-- OMNI_API_KEY (the token), OMNI_BASE_URL or OMNI_INSTANCE (the host),
-- CACHECTL_REDIS_URL (optional: Omni's limit shared with every node through
-- Redis) and WEBHOOK_SECRET (optional: then callers must send
-- `Authorization: Bearer <it>`). Every attempt and wait goes to nginx's error
-- log at level info. docs/nginx.md explains it all.
--
--    location = /hooks/data-loaded {
--      content_by_lua_block { require("webhook").handle() }
--    }

local cachectl = require "cachectl"
local cjson = require "cjson.safe"

local ngx = ngx
local type, pairs, ipairs, pcall, tostring = type, pairs, ipairs, pcall, tostring
local getenv = os.getenv
local format = string.format

local M = {}

local MAX_POLICIES = 50
local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
local USAGE = 'send {"model_id": "<uuid>", "policies": ["daily", ...]}'

local function env(name)
  local v = getenv(name)
  if v ~= nil and v ~= "" then return v end
  return nil
end

local function reply(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(body))
end

local function fail(status, message)
  return reply(status, { ok = false, error = message })
end

-- The request's input, or nil and what is wrong with it.
local function parse(body)
  if not body or body == "" then return nil, "empty body: " .. USAGE end
  local input = cjson.decode(body)
  if type(input) ~= "table" or input[1] ~= nil then
    return nil, "the body is not a JSON object: " .. USAGE
  end
  local model_id, policies = input.model_id, input.policies
  if type(model_id) ~= "string" then return nil, "model_id is required: " .. USAGE end
  if not model_id:find(UUID) then return nil, "model_id must be a UUID (8-4-4-4-12 hex digits)" end
  if type(policies) ~= "table" then return nil, "policies is required: a list of policy names" end
  local n = 0
  for _ in pairs(policies) do n = n + 1 end
  if n == 0 or n ~= #policies then return nil, "policies must be a non-empty list of policy names" end
  if n > MAX_POLICIES then return nil, "policies: at most " .. MAX_POLICIES .. " names" end
  for i, p in ipairs(policies) do
    if type(p) ~= "string" or p == "" then
      return nil, "policies[" .. i .. "] must be a non-empty string"
    end
  end
  return { model_id = model_id, policies = policies }
end

-- Constant-time comparison of two strings.
local function same(a, b)
  if #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do
    if a:byte(i) ~= b:byte(i) then diff = diff + 1 end
  end
  return diff == 0
end

-- One line per cachectl event in nginx's error log, at level info
-- (`error_log ... info;` shows them): attempts, waits, Redis fallbacks.
local function log_event(ev)
  ngx.log(ngx.INFO, "cachectl: ", ev.type, " ", ev.service, ".", ev.call,
    ev.method and format(" %s %s", ev.method, ev.url) or "",
    ev.status and format(" -> %d", ev.status) or "", ev.kind and " " .. ev.kind or "",
    ev.ms and format(" (%.0f ms)", ev.ms) or "",
    ev.wait and format(" wait %.3f s (%s)", ev.wait, ev.reason) or "",
    ev.message and ": " .. ev.message or "")
end

--- Builds a content handler.
-- @tparam[opt] table opts `client`: options for `cachectl.omni.new` (default: token
-- from $OMNI_API_KEY, host from $OMNI_BASE_URL or $OMNI_INSTANCE, events to the
-- error log at level info); `secret`: the
-- Bearer token callers must send (default $WEBHOOK_SECRET; none: no check)
-- @treturn function the handler, for content_by_lua*
-- @usage content_by_lua_block { require("webhook").handle() }
function M.handler(opts)
  opts = opts or {}
  local client_opts = {}
  for k, v in pairs(opts.client or {}) do client_opts[k] = v end
  client_opts.token = client_opts.token or env("OMNI_API_KEY")
  client_opts.on_event = client_opts.on_event or log_event
  -- the host: the Lua layer reads $OMNI_BASE_URL, else $OMNI_INSTANCE
  local secret = opts.secret or env("WEBHOOK_SECRET")
  local client                                       -- one per worker, made on first use

  return function()
    if ngx.req.get_method() ~= "POST" then
      ngx.header["Allow"] = "POST"
      return fail(405, "use POST")
    end
    if secret and not same(ngx.var.http_authorization or "", "Bearer " .. secret) then
      return fail(401, "missing or wrong Authorization: Bearer <WEBHOOK_SECRET>")
    end
    if not client_opts.token then
      ngx.log(ngx.ERR, "webhook: OMNI_API_KEY is not set (add 'env OMNI_API_KEY;' to nginx.conf)")
      return fail(500, "the webhook is not configured: no Omni token")
    end
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body and ngx.req.get_body_file() then return fail(413, "body too large") end
    local input, why = parse(body)
    if not input then return fail(400, why) end

    local ok, items = pcall(function()
      client = client or cachectl.omni.new(client_opts)
      return client:reset_caches(input.model_id, input.policies)
    end)
    if not ok then
      ngx.log(ngx.ERR, "webhook: ", tostring(items))
      return fail(500, "cachectl failed: see nginx's error log")
    end
    local all_ok, results = true, {}
    for i, item in ipairs(items) do
      if item.err then
        all_ok = false
        ngx.log(ngx.WARN, "webhook: reset ", item.policy, ": ", tostring(item.err))
      end
      results[i] = { policy = item.policy, ok = item.err == nil,
                     error = item.err and tostring(item.err) or cjson.null }
    end
    return reply(all_ok and 200 or 502, { ok = all_ok, results = results })
  end
end

--- The handler with everything from the environment, and Omni's limit of 60
-- requests a minute per token kept as one sliding window for all workers
-- together in the `lua_shared_dict cachectl_limits` (without it, each worker
-- would allow 60), or, with $CACHECTL_REDIS_URL, for every node using that
-- Redis (the shared dict is then the fallback while Redis cannot be reached).
M.handle = M.handler{ client = { rate_limit = { requests = 60, per = 60, shared_dict = "cachectl_limits",
  redis = env("CACHECTL_REDIS_URL") } } }

return M
