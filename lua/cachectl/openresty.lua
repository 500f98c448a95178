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
-- * The call runs in a thread of the pool, in a Lua VM of the worker's
--   worker-thread VM pool (`lua_worker_thread_vm_pool_size`, default 100),
--   which loads this module by name and calls `thread_call`. A VM lives as
--   long as the worker and keeps its `core.session()`, so its connections
--   are reused by later calls; a call holds its VM from the moment it is
--   handed over until it returns, waiting in the pool's queue included.
--   Only plain values cross between the VMs; the main side puts the core's
--   error metatable back on errors.
-- * At most `vms` calls of a worker hold a VM at once (`M.configure`,
--   default 100): more wait for one, within their timeout, on a semaphore of
--   the worker, instead of failing with nginx's "no available Lua vm".
-- * While calls of a worker are in worker threads, a timer of the worker
--   sleeps in steps: nginx's graceful shutdown (reload, quit) waits for
--   pending timers, not for worker-thread tasks, and would close the
--   connection of a request that only waits for its thread.
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
local error, pairs, pcall, type, tostring, getmetatable, setmetatable, require, newproxy, collectgarbage =
  error, pairs, pcall, type, tostring, getmetatable, setmetatable, require, newproxy, collectgarbage
local format = string.format
local min, max = math.min, math.max

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


-- A shallow copy of a table (an error, an event, options), without metatable.
local function copy(t)
  if type(t) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

-- -------------------------------------------------------- the thread side

local session

--- Runs one core call in a worker-thread Lua VM; without arguments, only
-- readies the VM (`M.warm`).
-- @tparam string service "omni" or "modelslab"
-- @tparam string call the endpoint, e.g. "reset_cache"
-- @tparam table opts the call's options (plain values only)
-- @tparam[opt] boolean collect collect the call's events (the main side replays them)
-- @treturn table|nil the decoded answer (without arguments: whether the VM was made ready now)
-- @treturn[2] table err (its metatable stays behind: only its fields cross)
-- @treturn table|nil the events, as plain tables in order, when `collect`
function M.thread_call(service, call, opts, collect)
  local fresh = session == nil
  session = session or core.session()
  if service == nil then return fresh end
  local events
  if collect then
    events = {}
    opts.on_event = function(ev) events[#events + 1] = ev end   -- a new table each time
  end
  local res, err = session:call(service, call, opts)
  return res, err, events
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

-- ------------------------------------------------ the worker-thread VMs

local settings = { vms = 100 }
local slots          -- the worker's semaphore of VMs, made on its first use

-- A count of VMs, or of threads to warm: a whole number from 1 to 100000.
local function count_of(n, where, name)
  if type(n) ~= "number" or not (n >= 1 and n <= 100000 and n % 1 == 0) then
    error(format("%s: %s must be a whole number from 1 to 100000, got %s", where, name, tostring(n)), 3)
  end
  return n
end

--- Sets how this worker hands calls to worker threads. Call it in
-- `init_worker_by_lua*` (or `init_by_lua*`), before the worker's first call.
-- @tparam table opts `vms`: how many calls of one worker may hold a
-- worker-thread Lua VM at once (default 100, nginx's default
-- `lua_worker_thread_vm_pool_size`; at most that setting). More calls wait,
-- within their timeout, for one to return. Each VM keeps its own session,
-- libcurl handles and connections: a worker holds up to `vms` of them.
-- @usage init_worker_by_lua_block { require("cachectl.openresty").configure{ vms = 16 } }
function M.configure(opts)
  local where = "cachectl.openresty.configure"
  if type(opts) ~= "table" then error(format("bad argument #1 to '%s' (table expected)", where), 2) end
  for k in pairs(opts) do
    if k ~= "vms" then error(format("%s: unknown option '%s'", where, tostring(k)), 2) end
  end
  if opts.vms ~= nil then
    count_of(opts.vms, where, "vms")
    if slots then error(where .. ": set vms before the worker's first call (in init_worker_by_lua)", 2) end
    settings.vms = opts.vms
  end
end

local function vm_slots()
  if not slots then slots = assert(require("ngx.semaphore").new(settings.vms)) end
  return slots
end

local SLICE = 1             -- seconds a call waits for a slot before the collector is asked
local collected = 0         -- when (ngx.now) it was last asked

-- Waits up to `budget` seconds for a slot. A slot whose light thread was
-- killed (a client abort, ngx.exit in another light thread) comes back
-- only when the collector finalizes its guard (take_slot): a worker whose
-- calls wait for a second runs a full collection, at most once a second.
local function wait_slot(sem, budget)
  local t0 = now()
  while true do
    local left = budget - (now() - t0)
    if sem:wait(max(min(left, SLICE), 0)) then return true end
    if left <= SLICE then return false end
    if now() - collected >= SLICE then
      collected = now()
      collectgarbage()
    end
  end
end

-- A slot of the semaphore within `budget` seconds, given back by calling
-- the function returned, or by the collector should the light thread
-- holding it be killed first; nil when none came in time.
local function take_slot(budget)
  local sem = vm_slots()
  if not wait_slot(sem, budget) then return nil end
  local held = true
  local guard = newproxy(true)
  getmetatable(guard).__gc = function()
    if held then held = false; sem:post(1) end
  end
  return function()
    if held then held = false; sem:post(1) end
    return guard          -- keeps the guard alive until released
  end
end

-- nginx's graceful shutdown (reload, quit) ends a worker once no timer is
-- pending in it, and a request waiting only for its worker-thread task has
-- none: its connection would be closed unanswered. So while any call of the
-- worker holds or waits for a VM, a timer of the worker sleeps in steps
-- (ngx.sleep sets a timer). A timer rather than a light thread of each
-- caller: a light thread outlives a caller killed by its parent
-- (ngx.thread.kill), and would keep that request open.
local KEEP_STEP = 0.5
local keeping = false
local kept_at = 0          -- when (ngx.now) the keeper last ticked, or was started

local function keep_while_busy()
  while slots:count() < settings.vms do
    kept_at = now()
    ngx.sleep(KEEP_STEP)
    -- the slots of calls whose light threads were killed come back through
    -- the collector; an idle worker may not run it by itself
    if ngx.worker.exiting() then collectgarbage() end
  end
end

local function keep_worker()
  local ok, err = pcall(keep_while_busy)
  keeping = false
  if not ok then ngx.log(ngx.WARN, "cachectl: keeping the worker while calls run: ", tostring(err)) end
end

-- The worker can make no timer (it is exiting, or at lua_max_pending_timers):
-- a light thread of the caller sleeps beside the call instead, until the
-- call is done, or for the call's budget and a minute at most should the
-- caller be killed.
local function keep_call(state, budget)
  local limit = now() + budget + 60
  while not state.done and now() < limit do ngx.sleep(KEEP_STEP) end
end

local VM_RETRY = 0.01      -- seconds between two tries when nginx has no VM free

-- The call's budget for waiting for a VM: its timeout, and whether it is
-- invalid (the core will say so; it waits as long as the default).
local function budget_of(timeout)
  if timeout == nil then return 30 end
  if type(timeout) == "number" and timeout > 0 and timeout <= 1e6 then return timeout end
  return 30, true
end

-- `func` of this module in a worker-thread VM of `pool`, once a VM is free:
-- ok and what it returned (false and the message when nginx refused it), or
-- nil when no VM came within the timeout of `opts` (the call's options, or
-- nil: 30 s). The wait counts against the call's timeout: `opts.timeout`
-- is what is left of it when the call goes.
local function in_vm(pool, func, opts, ...)
  local t0 = now()
  local budget, invalid = budget_of(opts and opts.timeout)
  local release = take_slot(budget)
  if not release then return nil end
  local ok, r1, r2, r3
  while true do
    if opts and not invalid then opts.timeout = max(budget - (now() - t0), 0.001) end
    ok, r1, r2, r3 = ngx.run_worker_thread(pool, MODULE, func, ...)
    -- nginx made lua_worker_thread_vm_pool_size VMs and other code of the
    -- worker holds the ones vms leaves free: wait for one
    if ok or r1 ~= "no available Lua vm" then break end
    if now() - t0 + VM_RETRY >= budget then
      ok = nil
      break
    end
    ngx.sleep(VM_RETRY)
  end
  release()
  return ok, r1, r2, r3
end

-- in_vm, with the worker kept alive meanwhile.
local function hand_over(pool, func, opts, ...)
  local state, thread
  -- a keeper that stopped ticking was never run (nginx refuses a timer at
  -- lua_max_running_timers): another is started
  if not keeping or now() - kept_at > 3 * KEEP_STEP then
    vm_slots()
    keeping = ngx.timer.at(0, keep_worker) ~= nil
    kept_at = now()
    if not keeping then
      state = {}
      thread = ngx.thread.spawn(keep_call, state, (budget_of(opts and opts.timeout)))
    end
  end
  local ok, r1, r2, r3, r4 = pcall(in_vm, pool, func, opts, ...)
  if thread then
    state.done = true
    ngx.thread.kill(thread)
  end
  if not ok then error(r1, 0) end
  return r1, r2, r3, r4
end

-- ---------------------------------------------------------- warming up

--- Readies worker-thread VMs ahead of the first calls: a VM is made, and
-- loads cachectl, the first time a call needs one, which costs a few
-- milliseconds (tens on a busy machine) that would otherwise delay the
-- first calls after nginx starts, and make the starts of a burst uneven
-- under a shared rate limit. Call it from `init_worker_by_lua*`: it starts a
-- timer that hands `threads` small tasks (at most `vms`) to the pool at
-- once, so that as many VMs are made, each with cachectl loaded and its
-- session made. A failure is logged (warn) in the error log. Once done,
-- `M.warmed` is how many VMs it readied.
-- @tparam[opt] string pool the thread pool (default `M.default_pool`)
-- @tparam[opt] number threads how many VMs to ready: the pool's `threads=` (default 16)
-- @usage init_worker_by_lua_block { require("cachectl.openresty").warm("cachectl", 16) }
function M.warm(pool, threads)
  pool = pool or M.default_pool
  local n = min(count_of(threads or 16, "cachectl.openresty.warm", "threads"), settings.vms)
  local function one()
    local ok, fresh = hand_over(pool, "thread_call", nil)
    if ok == nil then return nil, "no worker-thread Lua VM came free within 30 s" end
    if not ok then return nil, fresh end
    return true, fresh
  end
  local started, err = ngx.timer.at(0, function(premature)
    if premature then return end
    local tasks, warmed = {}, 0
    for i = 1, n do tasks[i] = ngx.thread.spawn(one) end
    for i = 1, n do
      local ran, ok, why = ngx.thread.wait(tasks[i])
      if ran and ok then
        if why then warmed = warmed + 1 end    -- a VM readied now, not one a task found ready
      else
        ngx.log(ngx.WARN, "cachectl: warming thread pool ", pool, ": ", tostring(ran and why or ok))
      end
    end
    M.warmed = warmed
  end)
  if not started then ngx.log(ngx.WARN, "cachectl: warming thread pool ", pool, ": ", err) end
end

-- -------------------------------------------------------------- the calls

local function pool_name(pool)
  if pool == nil or pool == true then return M.default_pool end
  return pool
end

-- The call in a thread of `pool`; its events come back as a list. Time
-- spent waiting for a VM counts against the call's timeout.
local function in_thread(c, opts, pool)
  opts.on_event = nil
  local timeout = opts.timeout
  if vm_slots():count() <= 0 then
    -- every VM is taken: a bad value is said now, not after the wait (a call
    -- that gets a VM at once is read only there, once)
    local _, bad = core.identity(c.service, c.call, opts)
    if bad then return nil, bad end
  end
  local ok, res, err, events = hand_over(pool, "thread_call", opts, c.service, c.call, opts, c.on_event ~= nil)
  if ok == nil then
    return nil, core.error({ kind = "timeout", attempts = 0,
      message = format("no worker-thread Lua VM came free within "
      .. "the timeout (%gs): this worker's calls hold all %d (cachectl.openresty.configure{ vms = n }, "
      .. "lua_worker_thread_vm_pool_size)", budget_of(timeout), settings.vms) })
  end
  if not ok then
    if type(res) == "string" and res:find("^thread pool .* not found$") then
      error(format("cachectl: nginx %s: add 'thread_pool %s threads=16;' to the main section of nginx.conf "
        .. "(or give the client option thread_pool)", res, pool), 0)
    end
    -- A mistake the core raised in the thread: raise it here too, without
    -- the position LuaJIT gives it (a line of thread_call, of no use).
    error((tostring(res):gsub("^[^\n]-openresty%.lua:%d+: ", "")), 0)
  end
  if type(err) == "table" then setmetatable(err, core.error_mt) end
  return res, err, events
end

-- One call in the pool's thread or (pool == false) right here; then the
-- thread's events, replayed in order. An error raised by on_event propagates.
local function dispatch(service, call, opts, pool)
  local c = { service = service, call = call, opts = opts, on_event = opts.on_event }
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
