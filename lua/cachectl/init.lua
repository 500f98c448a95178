--- cachectl: clear and reset remote caches and queues from Lua.
--
-- The Lua layer over `cachectl.core`: clients with defaults taken from the
-- environment, kept-alive connections, and concurrent batches.
--
--    local cachectl = require "cachectl"
--    local omni = cachectl.omni.new{ instance = "acme" }   -- token from $OMNI_API_KEY
--    local res, err = omni:reset_cache(model_id, "daily")
--
-- @module cachectl

local core = require "cachectl.core"

local error, pairs, ipairs, type, tostring, setmetatable = error, pairs, ipairs, type, tostring, setmetatable
local rawget, _G = rawget, _G
local getenv = os.getenv
local format = string.format

-- Inside nginx, calls run in an nginx thread pool instead of blocking the
-- worker (see cachectl.openresty); plain Lua never loads that module.
local openresty = rawget(_G, "ngx") and require "cachectl.openresty" or nil

local M = {
  version = core.version,
  modelslab = core.modelslab,
  omni = core.omni,
}

-- What each service's client knows: its calls, the environment variables it
-- reads, and the options that belong to the client rather than to a call.
local services = {
  modelslab = {
    calls = { "clear_cache", "clear_queue", "enterprise_clear_cache", "restart_server",
              "update_server", "system_details", "request" },
    secret = "key",
    env = { key = "MODELSLAB_API_KEY", base_url = "MODELSLAB_BASE_URL" },
    default_base = "https://modelslab.com/api",
  },
  omni = {
    calls = { "reset_cache", "request" },
    secret = "token",
    env = { token = "OMNI_API_KEY", base_url = "OMNI_BASE_URL" },
  },
}

-- thread_pool: the nginx thread pool calls run in (cachectl.openresty).
local client_options = { product = "string", concurrency = "number", thread_pool = "string|boolean" }

-- The option names (and types) a service's clients take: every option of
-- every call of the service, plus the client's own.
for name, svc in pairs(services) do
  svc.name = name
  svc.accepts = {}
  svc.call_options = {}
  for _, call in pairs(svc.calls) do
    local opts = core.endpoints[name .. "." .. call].options
    svc.call_options[call] = opts
    for k, t in pairs(opts) do svc.accepts[k] = t end
  end
  for k, t in pairs(client_options) do
    if not svc.accepts[k] then svc.accepts[k] = t end
  end
end

-- Client state lives here, not in the client table, so that no credential
-- can be reached by printing or walking a client.
local private = setmetatable({}, { __mode = "k" })

-- The methods of both kinds of client; each service's class adds its calls.
local Client = {}
local classes = { modelslab = {}, omni = {} }

-- Raises, `level` frames up, on an unknown option name or a wrong type.
local function check_options(where, opts, accepts, level)
  for k, v in pairs(opts) do
    local want = accepts[k]
    if not want then
      error(format("%s: unknown option '%s'", where, tostring(k)), level + 1)
    end
    local t = type(v)
    if not ("|" .. want .. "|"):find("|" .. t .. "|", 1, true) then
      error(format("%s: option '%s' must be a %s, got %s", where, k, want:gsub("|", " or "), t), level + 1)
    end
  end
end

local function nonempty_env(name)
  local v = getenv(name)
  if v ~= nil and v ~= "" then return v end
  return nil
end

local function new_client(svc, opts)
  local where = "cachectl." .. svc.name .. ".new"
  if opts ~= nil and type(opts) ~= "table" then
    error(format("bad argument #1 to '%s' (table expected, got %s)", where, type(opts)), 2)
  end
  opts = opts or {}
  check_options(where, opts, svc.accepts, 3)
  local defaults = {}
  for k, v in pairs(opts) do defaults[k] = v end
  if defaults[svc.secret] == nil then
    defaults[svc.secret] = nonempty_env(svc.env[svc.secret])
  end
  if defaults.base_url == nil and defaults.instance == nil then
    defaults.base_url = nonempty_env(svc.env.base_url)
  end
  if defaults.instance and defaults.base_url then
    error(format("%s: give either 'instance' or 'base_url', not both", where), 2)
  end
  local self = setmetatable({}, classes[svc.name])
  -- plain[call]: the options of a call made without options of its own,
  -- built once (callers only ever set the same positional fields in it)
  private[self] = { svc = svc, defaults = defaults, session = core.session(), plain = {} }
  return self
end

local function state(self)
  local st = private[self]
  if not st then error("cachectl: not a client", 3) end
  if st.closed then error("cachectl: client is closed", 3) end
  return st
end

-- The options for one call: the client's defaults that this call takes,
-- overridden by the call's own. Naming a host per call replaces the
-- client's way of naming it. Mistakes raise at the caller's caller.
-- Without options of its own a call gets the same table every time.
local function call_options(st, call, opts, where)
  if opts ~= nil and type(opts) ~= "table" then
    error(format("bad argument to '%s' (options table expected, got %s)", where, type(opts)), 4)
  end
  if opts == nil and st.plain[call] then return st.plain[call] end
  local takes = st.svc.call_options[call]
  if opts then check_options(where, opts, takes, 4) end
  local merged = {}
  local own_host = opts and (opts.base_url ~= nil or opts.instance ~= nil)
  for k, v in pairs(st.defaults) do
    if takes[k] and not (own_host and (k == "base_url" or k == "instance" or k == "playground")) then
      merged[k] = v
    end
  end
  if opts then
    for k, v in pairs(opts) do merged[k] = v end
  else
    st.plain[call] = merged
  end
  return merged
end

-- A positional argument left nil falls back to the client's option of that
-- name (new{ model_id = ... } gives a default model).
local function arg_or_default(st, value, name)
  if value == nil then return st.defaults[name] end
  return value
end

-- An invalid secret most often means an unset environment variable: say so.
local function hint(st, err)
  if err and err.kind == "invalid" and err.field == st.svc.secret then
    err.message = format("%s (give %s= or set %s)", err.message, st.svc.secret,
      st.svc.env[st.svc.secret])
  end
  return err
end

-- rate_limit.shared_dict names an nginx lua_shared_dict (cachectl.openresty);
-- outside nginx the core's process-wide bucket applies, with the same numbers
-- (60 per 60 s unless given). The core takes only requests and per.
local function without_shared_dict(opts)
  local limit = opts.rate_limit
  if type(limit) ~= "table" or limit.shared_dict == nil then return opts end
  local copy, core_limit = {}, { requests = 60, per = 60 }
  for k, v in pairs(opts) do copy[k] = v end
  for k, v in pairs(limit) do
    if k ~= "shared_dict" then core_limit[k] = v end
  end
  copy.rate_limit = core_limit
  return copy
end

local function perform(st, call, opts)
  local res, err
  if openresty and openresty.active() then
    res, err = openresty.call(st.svc.name, call, opts, st.defaults.thread_pool)
  else
    res, err = st.session:call(st.svc.name, call, without_shared_dict(opts))
  end
  return res, hint(st, err)
end

--- Clears the ModelsLab user cache.
-- @tparam[opt] table opts per-call options, overriding the client's
-- @treturn table|nil the decoded answer, e.g. `{ status = "success", message = "Cache cleared" }`
-- @treturn[2] table err (`kind`, `message`, `status`, `code`, `retry_after`, `attempts`, `field`)
-- @usage local res, err = ml:clear_cache()
-- @function modelslab_client:clear_cache
function classes.modelslab:clear_cache(opts)
  local st = state(self)
  return perform(st, "clear_cache", call_options(st, "clear_cache", opts, "modelslab:clear_cache"))
end

--- Clears a ModelsLab Enterprise queue (product from the options, the client, or "3d").
-- @tparam[opt] table opts per-call options, e.g. `{ product = "3d" }`
-- @treturn table|nil the decoded answer
-- @treturn[2] table err
-- @usage local res, err = ml:clear_queue{ product = "3d" }
-- @function modelslab_client:clear_queue
function classes.modelslab:clear_queue(opts)
  local st = state(self)
  return perform(st, "clear_queue", call_options(st, "clear_queue", opts, "modelslab:clear_queue"))
end

--- The ModelsLab Enterprise server calls, one method each, for any product:
-- `POST {base}/v1/enterprise/{product}/{action}` with `{"key": ...}`:
-- `ml:enterprise_clear_cache(opts)`, `ml:restart_server(opts)`,
-- `ml:update_server(opts)`, `ml:system_details(opts)`, each returning `res` or
-- `nil, err` like `clear_queue`. restart_server and update_server are never retried.
-- @section enterprise
for _, call in ipairs{ "enterprise_clear_cache", "restart_server", "update_server", "system_details" } do
  classes.modelslab[call] = function(self, opts)
    local st = state(self)
    return perform(st, call, call_options(st, call, opts, "modelslab:" .. call))
  end
end

--- Sends any other request to the service, authenticated like the client's
-- calls (ModelsLab: `key` added to the JSON body; Omni: Bearer token), with
-- the same errors and retries (only GET, PUT and DELETE are retried).
-- @tparam string method "GET", "POST", "PUT", "PATCH" or "DELETE"
-- @tparam string path below the base URL, URL-encoded, e.g. "/v1/models"
-- @tparam[opt] table body encoded as JSON (ModelsLab: an object, without `key`)
-- @tparam[opt] table opts per-call options
-- @treturn table|nil the decoded answer
-- @treturn[2] table err
-- @usage local res, err = omni:request("GET", "/v1/models")
-- @function client:request
function Client:request(method, path, body, opts)
  local st = state(self)
  local merged = call_options(st, "request", opts, st.svc.name .. ":request")
  merged.method = arg_or_default(st, method, "method")
  merged.path = arg_or_default(st, path, "path")
  merged.body = arg_or_default(st, body, "body")
  return perform(st, "request", merged)
end

--- Resets one Omni cache policy of a model.
-- @tparam string model_id the model's UUID
-- @tparam string policy the cache policy name
-- @tparam[opt] table opts per-call options, e.g. `{ reset_at = "2026-11-22T08:00:00Z" }`
-- @treturn table|nil the whole decoded answer (`res.cache_reset.policy_name`, `res.success`)
-- @treturn[2] table err
-- @usage local res, err = omni:reset_cache(model_id, "daily")
-- @function omni_client:reset_cache
function classes.omni:reset_cache(model_id, policy, opts)
  local st = state(self)
  local merged = call_options(st, "reset_cache", opts, "omni:reset_cache")
  merged.model_id = arg_or_default(st, model_id, "model_id")
  merged.policy = arg_or_default(st, policy, "policy")
  return perform(st, "reset_cache", merged)
end

--- Resets several cache policies of a model, concurrently.
-- @tparam string model_id the model's UUID
-- @tparam {string,...} policies the policy names
-- @tparam[opt] table opts per-call options plus `concurrency` (default: the client's, else 8)
-- @treturn {table,...} one `{ policy = name, result = res, err = err }` per policy, in input order
-- @usage local results = omni:reset_caches(model_id, { "daily", "hourly" }, { concurrency = 8 })
-- @function omni_client:reset_caches
function classes.omni:reset_caches(model_id, policies, opts)
  local st = state(self)
  if type(policies) ~= "table" then
    error(format("bad argument #2 to 'omni:reset_caches' (table expected, got %s)", type(policies)), 2)
  end
  local concurrency = st.defaults.concurrency or 8
  if opts and opts.concurrency ~= nil then
    concurrency = opts.concurrency
    local copy = {}
    for k, v in pairs(opts) do copy[k] = v end
    copy.concurrency = nil
    opts = copy
  end
  if type(concurrency) ~= "number" or concurrency < 1 or concurrency % 1 ~= 0 then
    error("omni:reset_caches: concurrency must be a whole number >= 1", 2)
  end
  local nginx = openresty and openresty.active()
  local base = call_options(st, "reset_cache", opts, "omni:reset_caches")
  if not nginx then base = without_shared_dict(base) end
  local list = {}
  for i = 1, #policies do
    local one = { model_id = arg_or_default(st, model_id, "model_id"), policy = policies[i] }
    for k, v in pairs(base) do
      if k ~= "model_id" and k ~= "policy" then one[k] = v end
    end
    list[i] = one
  end
  local items
  if nginx then
    items = openresty.batch("omni", "reset_cache", list, concurrency, st.defaults.thread_pool)
  else
    items = st.session:batch("omni", "reset_cache", list, concurrency)
  end
  local results = {}
  for i = 1, #policies do
    results[i] = { policy = policies[i], result = items[i].result, err = hint(st, items[i].err) }
  end
  return results
end

--- Closes the client's connections. Closing twice does nothing; any other
-- use of a closed client raises "client is closed".
-- @function client:close
function Client:close()
  local st = private[self]
  if st and not st.closed then
    st.closed = true
    st.session:close()
  end
end

Client.__close = Client.close

function Client.__tostring(self)
  local st = private[self]
  local d = st.defaults
  local base = d.base_url
  if not base and d.instance then
    base = format("https://%s.%s/api", d.instance,
      d.playground and "playground.exploreomni.dev" or "omniapp.co")
  end
  base = base and base:gsub("//[^/@]*@", "//") or st.svc.default_base or "no instance set"
  return format("cachectl.%s client (%s)%s", st.svc.name, base, st.closed and ", closed" or "")
end

for _, class in pairs(classes) do
  for k, v in pairs(Client) do class[k] = v end
  class.__index = class
end

--- Creates a ModelsLab client.
-- @tparam[opt] table opts defaults for every call: `key` (default `$MODELSLAB_API_KEY`),
-- `base_url` (default `$MODELSLAB_BASE_URL`, else https://modelslab.com/api), `product`,
-- and the common options
-- @treturn table the client
-- @usage local ml = cachectl.modelslab.new{ key = KEY }
-- @function modelslab.new
function M.modelslab.new(opts)
  return new_client(services.modelslab, opts)
end

--- Creates an Omni client.
-- @tparam[opt] table opts defaults for every call: `token` (default `$OMNI_API_KEY`),
-- `instance` and `playground`, or `base_url` (default `$OMNI_BASE_URL`), `concurrency`,
-- and the common options
-- @treturn table the client
-- @usage local omni = cachectl.omni.new{ instance = "acme" }
-- @function omni.new
function M.omni.new(opts)
  return new_client(services.omni, opts)
end

return M
