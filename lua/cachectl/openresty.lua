--- cachectl.openresty: cachectl inside nginx (OpenResty, lua-nginx-module).
--
-- `cachectl.core` makes blocking libcurl calls. Inside an nginx worker a
-- blocking call would stall every other request of that worker, so the Lua
-- layer (`require "cachectl"`) hands each call to an nginx thread pool with
-- `ngx.run_worker_thread` whenever it runs inside nginx; this module is how.
-- Plain Lua never loads it.
--
--    # nginx.conf, main section
--    thread_pool cachectl threads=16;
--    # http section
--    lua_shared_dict cachectl_limits 1m;      # only for rate_limit.shared_dict
--
--    local omni = cachectl.omni.new{ instance = "acme", thread_pool = "cachectl",
--      rate_limit = { requests = 60, per = 60, shared_dict = "cachectl_limits" } }
--    local res, err = omni:reset_cache(model_id, "daily")  -- the worker keeps serving meanwhile
--
-- How it works:
--
-- * The call runs in a thread of the pool, in that thread's own Lua VM, which
--   loads this module by name and calls `thread_call`. The VM and its
--   `core.session()` live as long as the thread, so its connections are
--   reused by later calls. Only plain values cross between the VMs; the main
--   side puts the core's error metatable back on errors.
-- * Phases: calls may run where nginx lets a request yield (rewrite, access,
--   content, timer, ssl_cert, ssl_session_fetch, ssl_client_hello). Anywhere
--   else (init, init_worker, set, header_filter, body_filter, log, balancer,
--   ...) a call raises an error that says so; start a timer there instead:
--   `ngx.timer.at(0, function() omni:reset_cache(...) end)`.
-- * `rate_limit.shared_dict` names a `lua_shared_dict`: the token bucket is
--   then kept there and shared by every worker (see `take_slot`), and the
--   core's own per-process bucket is turned off for the call.
--
-- @module cachectl.openresty

local ngx = ngx
local error, pairs, type, tostring, getmetatable, setmetatable, require =
  error, pairs, type, tostring, getmetatable, setmetatable, require
local format = string.format
local min, max = math.min, math.max

local M = {}

--- The thread pool used when the client does not name one (`thread_pool` option).
M.default_pool = "cachectl"

-- The module name the worker threads load; they call M.thread_call in it.
local MODULE = "cachectl.openresty"

-- Phases in which a request (or timer) may yield, so that
-- ngx.run_worker_thread and ngx.sleep are allowed.
local yieldable = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}

-- The secret option of each service: what the shared bucket is keyed by.
local secrets = { modelslab = "key", omni = "token" }

-- ---------------------------------------------------------------- errors

local error_mt

-- The core's own error metatable (its __tostring is src/errors.c's), taken
-- from an error the core returns without sending anything.
local function core_error_mt()
  if not error_mt then
    local _, err = require("cachectl.core").modelslab.clear_cache{ key = "" }
    error_mt = getmetatable(err)
  end
  return error_mt
end

local function new_error(fields)
  local err = {}
  for k, v in pairs(fields) do err[k] = v end
  return setmetatable(err, core_error_mt())
end

-- An error table without its metatable, as it crosses from a thread VM.
local function plain(err)
  if type(err) ~= "table" then return err end
  local t = {}
  for k, v in pairs(err) do t[k] = v end
  return t
end

-- -------------------------------------------------------- the thread side

local session

--- Runs one core call; called in a worker thread's own Lua VM.
-- @tparam string service "omni" or "modelslab"
-- @tparam string call the endpoint, e.g. "reset_cache"
-- @tparam table opts the call's options (plain values only)
-- @treturn table|nil the decoded answer
-- @treturn[2] table err, as a plain table (no metatable)
function M.thread_call(service, call, opts)
  if not session then session = require("cachectl.core").session() end
  local res, err = session:call(service, call, opts)
  return res, plain(err)
end

-- ---------------------------------------------------------- the nginx side

--- Whether calls should go through this module: true inside an nginx worker
-- (`ngx.run_worker_thread` exists), whatever the phase; false in plain Lua
-- and inside a worker thread's own VM (which has `ngx` but no
-- `run_worker_thread`).
-- @treturn boolean
function M.active()
  return type(ngx) == "table" and type(ngx.run_worker_thread) == "function"
end

local function check_phase()
  local phase = ngx.get_phase()
  if not yieldable[phase] then
    error(format("cachectl: calls cannot run in nginx's %s phase, which cannot yield; "
      .. "run them from a timer instead: ngx.timer.at(0, function() ... end)", phase), 0)
  end
end

local function now()
  ngx.update_time()
  return ngx.now()
end

-- The shared-dict rate limit of a call, from its `rate_limit` option, or
-- nil when the call has none (then the option goes to the core untouched).
-- Raises, like the core, on a wrong field name or type.
local function shared_limit(rate_limit)
  if type(rate_limit) ~= "table" or rate_limit.shared_dict == nil then return nil end
  for k, v in pairs(rate_limit) do
    if k ~= "requests" and k ~= "per" and k ~= "shared_dict" then
      error(format("cachectl: option 'rate_limit' takes only 'requests', 'per' and 'shared_dict', got '%s'",
        tostring(k)), 0)
    end
    local want = k == "shared_dict" and "string" or "number"
    if type(v) ~= want then
      error(format("cachectl: option 'rate_limit.%s' must be a %s, got %s", k, want, type(v)), 0)
    end
  end
  local dict = ngx.shared[rate_limit.shared_dict]
  if not dict then
    error(format("cachectl: rate_limit.shared_dict '%s' is not defined: add 'lua_shared_dict %s 1m;' "
      .. "to the http section of nginx.conf", rate_limit.shared_dict, rate_limit.shared_dict), 0)
  end
  return {
    dict = dict, name = rate_limit.shared_dict,
    requests = rate_limit.requests or 60, per = rate_limit.per or 60,
  }
end

local LOCK_TTL = 0.1    -- seconds; the lock is held for microseconds
local LOCK_RETRY = 0.001

-- Takes one request slot from the token bucket that `limit.dict` keeps under
-- `key` for every worker of this nginx: `limit.requests` slots per
-- `limit.per` seconds, bursts up to `limit.requests`. Returns the seconds to
-- wait before sending (0: at once), or nil and that wait when it would not
-- end within `budget` seconds (no slot is taken then).
--
-- Atomicity across workers. Each shared-dict operation is atomic, but the
-- bucket update (read tokens and time, refill, take one, write back) is a
-- read-modify-write and needs a lock. `dict:add` is the lock: it succeeds for
-- exactly one caller while the lock key exists; the others retry 1 ms later
-- (ngx.sleep, so their workers keep serving). The holder never yields
-- between add and delete (shared-dict calls do not yield), so the lock is
-- held for microseconds; its expiry (LOCK_TTL) frees it should a worker die
-- holding it.
--
-- Slots are reserved, not polled: the token count may go below zero, and a
-- caller k tokens short sleeps k / rate seconds and then sends without
-- asking again, so waiting callers are served in the order they asked.
-- Idle buckets expire once they would be full again: absent means full.
local function take_slot(limit, key, budget)
  local dict, lock = limit.dict, key .. ":lock"
  local deadline = now() + budget
  while true do
    local ok, err = dict:add(lock, true, LOCK_TTL)
    if ok then break end
    if err ~= "exists" then
      error(format("cachectl: rate_limit.shared_dict '%s': %s", limit.name, tostring(err)), 0)
    end
    if now() >= deadline then return nil, budget end
    ngx.sleep(LOCK_RETRY)
  end
  local t = now()
  local rate, cap = limit.requests / limit.per, limit.requests
  local tokens, last = dict:get(key .. ":tokens"), dict:get(key .. ":last")
  if type(tokens) ~= "number" or type(last) ~= "number" then
    tokens, last = cap, t
  end
  tokens = min(cap, tokens + max(0, t - last) * rate)
  local wait = tokens >= 1 and 0 or (1 - tokens) / rate
  local granted = wait < deadline - t
  if granted then
    tokens = tokens - 1
    local ttl = (cap - tokens) / rate + 1
    dict:set(key .. ":tokens", tokens, ttl)
    dict:set(key .. ":last", t, ttl)
  end
  dict:delete(lock)
  if not granted then return nil, wait end
  return wait
end

-- The bucket's key: a hash of the service, the credential and the limit,
-- never the credential itself.
local function bucket_key(service, secret, limit)
  return "cachectl:" .. ngx.md5(format("%s\0%s\0%.17g\0%.17g", service, secret, limit.requests, limit.per))
end

-- Waits for a slot of the shared rate limit when the call has one; returns
-- the options to hand to the core (rate_limit = false, timeout less the
-- wait), or nil, err when no slot comes within the call's timeout.
local function limited(service, opts)
  local limit = shared_limit(opts.rate_limit)
  if not limit then return opts end
  local out = {}
  for k, v in pairs(opts) do out[k] = v end
  out.rate_limit = false
  if not (limit.requests >= 1 and limit.requests <= 1e9 and limit.per > 0 and limit.per <= 1e9) then
    return nil, new_error{ kind = "invalid", field = "rate_limit", attempts = 0,
      message = "rate_limit must be { requests = n >= 1, per = seconds > 0, shared_dict = name }" }
  end
  local secret, timeout = opts[secrets[service]], opts.timeout or 30
  -- A missing credential or a bad timeout is the core's to report (`invalid`,
  -- nothing sent): let the call through without taking a slot.
  if type(secret) ~= "string" or secret == "" or type(timeout) ~= "number" or timeout ~= timeout or timeout <= 0 then
    return out
  end
  local started = now()
  local wait, late = take_slot(limit, bucket_key(service, secret, limit), timeout)
  if not wait then
    return nil, new_error{ kind = "rate_limited", attempts = 0, retry_after = late,
      message = format("client-side rate limit (%g requests per %gs, shared dict '%s'): no slot before the timeout",
        limit.requests, limit.per, limit.name) }
  end
  if wait > 0 then ngx.sleep(wait) end
  local left = timeout - (now() - started)
  out.timeout = left > 0.001 and left or 0.001
  return out
end

local function pool_name(pool)
  if pool == nil or pool == true then return M.default_pool end
  return pool
end

-- One call, in the pool's thread or (pool == false) right here.
local function dispatch(service, call, opts, pool)
  local core_opts, lerr = limited(service, opts)
  if not core_opts then return nil, lerr end
  if pool == false then
    -- Blocks this worker for the whole call: for comparisons and tests only.
    return require("cachectl.core")[service][call](core_opts)
  end
  local ok, res, err = ngx.run_worker_thread(pool, MODULE, "thread_call", service, call, core_opts)
  if not ok then
    if type(res) == "string" and res:find("^thread pool .* not found$") then
      error(format("cachectl: nginx %s: add 'thread_pool %s threads=16;' to the main section of nginx.conf "
        .. "(or give the client option thread_pool)", res, pool), 0)
    end
    -- A mistake the core raised in the thread: raise it here too, without
    -- the position LuaJIT gives it (a line of thread_call, of no use).
    error((tostring(res):gsub("^[^\n]-openresty%.lua:%d+: ", "")), 0)
  end
  if type(err) == "table" then setmetatable(err, core_error_mt()) end
  return res, err
end

--- Runs one core call without blocking the nginx worker.
-- Raises when the phase cannot yield, when the pool or the shared dict is
-- not configured, and on the core's own programming errors (unknown option...).
-- @tparam string service "omni" or "modelslab"
-- @tparam string call the endpoint, e.g. "reset_cache"
-- @tparam table opts the call's options; `rate_limit.shared_dict` is handled here
-- @tparam[opt] string|boolean pool the thread pool (default `M.default_pool`);
-- `false` runs the call in the worker itself, blocking it: for comparisons and tests only
-- @treturn table|nil the decoded answer
-- @treturn[2] table err, with the core's error metatable
-- @usage local res, err = openresty.call("omni", "reset_cache", opts, "cachectl")
function M.call(service, call, opts, pool)
  check_phase()
  return dispatch(service, call, opts, pool_name(pool))
end

--- Runs several calls of one endpoint concurrently, without blocking the
-- worker: up to `concurrency` light threads (`ngx.thread.spawn`), each
-- taking the next call of the list and running it as `M.call` does (its own
-- rate-limit slot, then one worker-thread call). Calls run at once only as
-- far as the pool has threads (`threads=N`); the rest queue in the pool.
-- @tparam string service "omni" or "modelslab"
-- @tparam string call the endpoint
-- @tparam {table,...} list one options table per call
-- @tparam[opt] number concurrency at most this many at once (default 8)
-- @tparam[opt] string|boolean pool as for `M.call`
-- @treturn {table,...} one `{ result = res, err = err }` per call, in input order
function M.batch(service, call, list, concurrency, pool)
  check_phase()
  pool = pool_name(pool)
  local n, items, next_i = #list, {}, 0
  local function worker()
    while next_i < n do
      next_i = next_i + 1
      local i = next_i
      local res, err = dispatch(service, call, list[i], pool)
      items[i] = { result = res, err = err }
    end
  end
  local threads = {}
  for t = 1, min(concurrency or 8, n) do threads[t] = ngx.thread.spawn(worker) end
  local failure
  for t = 1, #threads do
    local ok, why = ngx.thread.wait(threads[t])
    if not ok and not failure then failure = why end
  end
  if failure then error(failure, 0) end
  return items
end

return M
