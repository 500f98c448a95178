--- cachectl.openresty: cachectl inside nginx (OpenResty, lua-nginx-module).
--
-- `cachectl.core` makes blocking libcurl calls. Inside an nginx worker a
-- blocking call would stall every other request of that worker, so the Lua
-- layer (`require "cachectl"`) hands each call to an nginx thread pool with
-- `ngx.run_worker_thread` whenever it runs inside nginx; this module is how.
-- Plain Lua never loads it. docs/nginx.md is the user's guide.
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
-- * Rate limits: the core takes every request's turn in the pool thread,
--   when the request starts (a retry too): from the worker process's window,
--   from `rate_limit.shared_dict` (the thread VM's `ngx.shared`, shared by
--   every worker) or from `rate_limit.redis` (hiredis, in the thread). A wait
--   for a turn holds that pool thread, never the worker. docs/nginx.md says
--   why the turns are taken there.
-- * Events: `on_event` cannot cross into a thread's VM. The thread collects
--   the core's events as plain tables and the main side replays them, in
--   order, once the call returns.
--
-- @module cachectl.openresty

local ngx = ngx
local error, pairs, pcall, type, tostring, getmetatable, setmetatable, require =
  error, pairs, pcall, type, tostring, getmetatable, setmetatable, require
local format = string.format
local min = math.min

local core = require "cachectl.core"

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

-- ---------------------------------------------------------------- errors

local error_mt

-- The core's own error metatable (its __tostring is src/errors.c's), taken
-- from an error the core returns without sending anything.
local function core_error_mt()
  if not error_mt then
    local _, err = core.modelslab.clear_cache{ key = "" }
    error_mt = getmetatable(err)
  end
  return error_mt
end

-- A shallow copy of a table (an error, an event, options), without metatable.
local function copy(t)
  if type(t) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

-- -------------------------------------------------------- the thread side

local session

--- Loads cachectl in a pool thread's Lua VM and makes its session; called
-- by `M.warm` in a worker thread.
-- @treturn boolean true
function M.thread_warm()
  if not session then session = core.session() end
  return true
end

--- Runs one core call; called in a worker thread's own Lua VM.
-- @tparam string service "omni" or "modelslab"
-- @tparam string call the endpoint, e.g. "reset_cache"
-- @tparam table opts the call's options (plain values only)
-- @tparam[opt] boolean collect collect the call's events (the main side replays them)
-- @treturn table|nil the decoded answer
-- @treturn[2] table err, as a plain table (no metatable)
-- @treturn table|nil the events, as plain tables in order, when `collect`
function M.thread_call(service, call, opts, collect)
  if not session then session = core.session() end
  local events
  if collect then
    events = {}
    opts.on_event = function(ev) events[#events + 1] = copy(ev) end
  end
  local res, err = session:call(service, call, opts)
  return res, copy(err), events
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

-- -------------------------------------------------------------- warming up

--- Readies the threads of a pool ahead of the first calls: each thread
-- makes its Lua VM and loads cachectl the first time it runs a call, which
-- costs a few milliseconds (tens on a busy machine) that would otherwise
-- delay the first calls after nginx starts, and make the starts of a burst
-- uneven under a shared rate limit. Call it from `init_worker_by_lua*`: it
-- starts a timer that hands `threads` small tasks to the pool at once.
-- @tparam[opt] string pool the thread pool (default `M.default_pool`)
-- @tparam[opt] number threads how many threads the pool has (its `threads=`; default 16)
-- @usage init_worker_by_lua_block { require("cachectl.openresty").warm("cachectl", 16) }
function M.warm(pool, threads)
  pool = pool or M.default_pool
  local ok, err = ngx.timer.at(0, function(premature)
    if premature then return end
    local tasks = {}
    for i = 1, threads or 16 do
      tasks[i] = ngx.thread.spawn(ngx.run_worker_thread, pool, MODULE, "thread_warm")
    end
    for i = 1, #tasks do
      local ran, done, why = ngx.thread.wait(tasks[i])
      if not (ran and done) then
        ngx.log(ngx.WARN, "cachectl: warming thread pool ", pool, ": ", tostring(ran and why or done))
      end
    end
  end)
  if not ok then ngx.log(ngx.WARN, "cachectl: warming thread pool ", pool, ": ", err) end
end

-- -------------------------------------------------------------- the calls

local function pool_name(pool)
  if pool == nil or pool == true then return M.default_pool end
  return pool
end

-- The call in a thread of `pool`; its events come back as a list.
local function in_thread(c, opts, pool)
  opts.on_event = nil
  local ok, res, err, events = ngx.run_worker_thread(pool, MODULE, "thread_call", c.service, c.call, opts,
    c.on_event ~= nil)
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
  return res, err, events
end

-- One call in the pool's thread or (pool == false) right here; then the
-- thread's events, replayed in order. An error raised by on_event propagates.
local function dispatch(service, call, opts, pool)
  local c = { service = service, call = call, opts = opts, on_event = opts.on_event }
  core.check_options(service, opts, call, service .. "." .. call)
  if pool == false then
    -- Blocks this worker for the whole call: for comparisons and tests only.
    return core[service][call](opts)
  end
  local res, err, events
  res, err, events = in_thread(c, copy(opts), pool)
  for i = 1, events and #events or 0 do c.on_event(events[i]) end
  return res, err
end

--- Runs one core call without blocking the nginx worker.
-- Raises when the phase cannot yield, when the pool or the shared dict is
-- not configured, on the core's own programming errors (unknown option...)
-- and with what `on_event` raises.
-- @tparam string service "omni" or "modelslab"
-- @tparam string call the endpoint, e.g. "reset_cache"
-- @tparam table opts the call's options; `on_event` gets the call's events here
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
-- rate-limit turn, then one worker-thread call). Calls run at once only as
-- far as the pool has threads (`threads=N`); the rest queue in the pool.
-- When a call raises (on_event, misuse), no further call starts, and the
-- error is raised once the running ones have ended.
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
  local failed, failure = false, nil
  local function worker()
    while next_i < n and not failed do
      next_i = next_i + 1
      local i = next_i
      local ok, res, err = pcall(dispatch, service, call, list[i], pool)
      if not ok then
        if not failed then failed, failure = true, res end
        return
      end
      items[i] = { result = res, err = err }
    end
  end
  local threads = {}
  for t = 1, min(concurrency or 8, n) do threads[t] = ngx.thread.spawn(worker) end
  for t = 1, #threads do ngx.thread.wait(threads[t]) end
  if failed then error(failure, 0) end
  return items
end

return M
