--- cachectl.openresty: cachectl inside nginx (OpenResty, lua-nginx-module).
--
-- `cachectl.core` makes blocking libcurl calls; inside an nginx worker one
-- would stall every request of the worker. So the Lua layer (`require
-- "cachectl"`) hands each call to an nginx thread pool through this module
-- whenever it runs in a worker; plain Lua never loads it. docs/nginx.md is the
-- user's guide (configuration, reload, phases, shared limits, events).
--
-- How it works:
--
-- * A call runs in a worker-thread Lua VM (`lua_worker_thread_vm_pool_size`),
--   which loads this module by name and runs `thread_call`. A VM lives as
--   long as the worker and keeps its `core.session()` (kept-alive
--   connections). Only plain values cross between the VMs: options without
--   `on_event`, answers, errors (the main side gives them back the core's
--   error metatable) and the events the thread collected, which the main
--   side replays in order once the call returns.
-- * At most `vms` calls of a worker hold a VM at once, waiting in the pool's
--   queue included (`M.configure`); more wait for a slot within their
--   timeout instead of failing with nginx's "no available Lua vm".
-- * While calls of a worker hold or wait for a VM, a timer of the worker
--   sleeps in steps: nginx's graceful shutdown (reload, quit) waits for
--   pending timers, not for worker-thread tasks.
-- * Rate-limit turns are taken by the core in the pool thread, when each
--   request starts (docs/nginx.md says why).
--
-- @module cachectl.openresty

local ngx = ngx
local error, pairs, pcall, type, tostring, getmetatable, require, newproxy, collectgarbage =
  error, pairs, pcall, type, tostring, getmetatable, require, newproxy, collectgarbage
local format = string.format
local min, max = math.min, math.max

local core = require "cachectl.core"
local now = core.monotonic

local M = {}

--- The thread pool used when the client does not name one (`thread_pool` option).
M.default_pool = "cachectl"

local MODULE = "cachectl.openresty"   -- what the worker threads load

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

-- Phases in which a request (or timer) may yield: ngx.run_worker_thread and
-- ngx.sleep are allowed there.
local yieldable = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}

local function check_phase()
  local phase = ngx.get_phase()
  if not yieldable[phase] then
    error(format("cachectl: calls cannot run in nginx's %s phase, which cannot yield; "
      .. "run them from a timer instead: ngx.timer.at(0, function() ... end)", phase), 0)
  end
end

local vms = 100       -- M.configure's
local slots           -- the worker's semaphore of `vms` slots, made on its first call

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
    vms = opts.vms
  end
end

local collected = 0   -- when the collector was last asked for slots

-- A slot within `budget` seconds, or nil. It comes back through
-- `getmetatable(slot).__gc()`, or through the collector should the light
-- thread holding it be killed (a client abort, ngx.exit in another light
-- thread): a worker whose calls wait runs a full collection at most once a
-- second.
local function take_slot(budget)
  local deadline = now() + budget
  while true do
    local left = deadline - now()
    if slots:wait(max(min(left, 1), 0)) then break end
    if left <= 1 then return nil end
    if now() - collected >= 1 then
      collected = now()
      collectgarbage()
    end
  end
  local held, slot = true, newproxy(true)
  getmetatable(slot).__gc = function()
    if held then held = false; slots:post(1) end
  end
  return slot
end

-- nginx ends a gracefully shutting worker once no timer is pending in it, and
-- a request waiting only for its worker-thread task has none: it would be
-- closed unanswered. So while any slot is taken, a timer of the worker sleeps
-- in steps (ngx.sleep sets a timer). A timer rather than a light thread of
-- each caller: a light thread outlives a caller killed by its parent
-- (ngx.thread.kill), and would keep that request open.
local KEEP_STEP = 0.5
local kept_at = 0     -- when the keeper last ticked; 0 once it has ended

local function keep_worker()
  while slots:count() < vms do
    kept_at = now()
    ngx.sleep(KEEP_STEP)
    -- killed callers' slots come back through the collector, which an idle
    -- worker may not run by itself
    if ngx.worker.exiting() then collectgarbage() end
  end
  kept_at = 0
end

-- Starts the keeper unless it ticks: one that stopped ticking was never run
-- (nginx refuses a timer at lua_max_running_timers) or failed. When the worker
-- can make no timer (it is exiting, or at lua_max_pending_timers), a light
-- thread of the caller sleeps beside the call instead, for the call's budget
-- and a minute at most should the caller be killed; it is returned, to be
-- killed once the call ends.
local function keep_alive(budget)
  if now() - kept_at <= 3 * KEEP_STEP then return nil end
  if ngx.timer.at(0, keep_worker) then
    kept_at = now()
    return nil
  end
  return ngx.thread.spawn(function() ngx.sleep(budget + 60) end)
end

local VM_RETRY = 0.01 -- seconds between two tries when nginx has no VM free

-- `M[func](...)` in a worker-thread VM of `pool`, once a slot and a VM are
-- free within `budget` seconds, the worker kept alive meanwhile: what
-- ngx.run_worker_thread returned (false and a message when nginx refused),
-- or nil when no VM came in time. `opts` (the call's options, among `...`)
-- gets what is left of the budget as its timeout.
local function hand_over(pool, budget, opts, func, ...)
  slots = slots or assert(require("ngx.semaphore").new(vms))
  local deadline = now() + budget
  local keeper = keep_alive(budget)
  local slot = take_slot(budget)
  local ok, r1, r2, r3
  while slot do
    if opts then opts.timeout = max(deadline - now(), 0.001) end
    ok, r1, r2, r3 = ngx.run_worker_thread(pool, MODULE, func, ...)
    -- nginx made lua_worker_thread_vm_pool_size VMs and other code of the
    -- worker holds the ones vms leaves free: wait for one
    if ok or r1 ~= "no available Lua vm" then break end
    if deadline - now() <= VM_RETRY then ok = nil; break end
    ngx.sleep(VM_RETRY)
  end
  if slot then getmetatable(slot).__gc() end
  if keeper then ngx.thread.kill(keeper) end
  return ok, r1, r2, r3
end

--- Readies worker-thread VMs ahead of the first calls (a VM and cachectl's
-- loading take a few milliseconds, tens on a busy machine, that would delay
-- the first calls and make a burst's starts uneven under a shared limit).
-- Call it from `init_worker_by_lua*`: a timer hands `threads` small tasks (at
-- most `vms`) to the pool at once, so that as many VMs are made, each with
-- cachectl loaded and its session made. A failure is logged (warn). Once
-- done, `M.warmed` is how many VMs it readied.
-- @tparam[opt] string pool the thread pool (default `M.default_pool`)
-- @tparam[opt] number threads how many VMs to ready: the pool's `threads=` (default 16)
-- @usage init_worker_by_lua_block { require("cachectl.openresty").warm("cachectl", 16) }
function M.warm(pool, threads)
  pool = pool or M.default_pool
  local n = min(count_of(threads or 16, "cachectl.openresty.warm", "threads"), vms)
  local budget = core.defaults.timeout
  local started, err = ngx.timer.at(0, function(premature)
    if premature then return end
    local tasks, warmed = {}, 0
    for i = 1, n do tasks[i] = ngx.thread.spawn(hand_over, pool, budget, nil, "thread_call") end
    for i = 1, n do
      local ran, ok, fresh = ngx.thread.wait(tasks[i])
      if ran and ok then
        if fresh then warmed = warmed + 1 end    -- a VM readied now, not one a task found ready
      else                                       -- what the task raised, what nginx said, or no VM
        ngx.log(ngx.WARN, "cachectl: warming thread pool ", pool, ": ", tostring(not ran and ok or fresh
          or format("no worker-thread Lua VM came free within %g s", budget)))
      end
    end
    M.warmed = warmed
  end)
  if not started then ngx.log(ngx.WARN, "cachectl: warming thread pool ", pool, ": ", err) end
end

-- Raises a mistake the core raised (here or in the thread) without the
-- position LuaJIT gives it: a line of this file, of no use to the caller.
local function raise(msg)
  error((tostring(msg):gsub("^[^\n]-openresty%.lua:%d+: ", "")), 0)
end

--- Runs one core call without blocking the nginx worker.
-- Raises when the phase cannot yield, when the pool or the shared dict is
-- not configured, on the core's own programming errors (unknown option...)
-- and with what `on_event` raises.
-- @tparam string service "omni" or "modelslab"
-- @tparam string call the endpoint, e.g. "reset_cache"
-- @tparam table opts the call's options (left as they are); `on_event` gets
-- the call's events here, once the call has returned
-- @tparam[opt] string|boolean pool the thread pool (default `M.default_pool`);
-- `false` runs the call in the worker itself, blocking it: for comparisons and tests only
-- @treturn table|nil the decoded answer
-- @treturn[2] table err, with the core's error metatable
-- @usage local res, err = openresty.call("omni", "reset_cache", opts, "cachectl")
function M.call(service, call, opts, pool)
  check_phase()
  if pool == false then return core[service][call](opts) end
  if pool == nil or pool == true then pool = M.default_pool end
  local mine = {}
  for k, v in pairs(opts) do mine[k] = v end
  mine.on_event = nil
  local budget = opts.timeout or core.defaults.timeout
  if not (type(budget) == "number" and budget > 0 and budget <= 1e6) or (slots and slots:count() <= 0) then
    -- a bad value (the timeout the core refuses among them) is said now, not
    -- after a wait for a VM; a call that gets one at once is read only there
    local fine, id, bad = pcall(core.identity, service, call, mine)
    if not fine then raise(id) end
    if bad then return nil, bad end
  end
  local ok, res, err, events = hand_over(pool, budget, mine, "thread_call", service, call, mine, opts.on_event ~= nil)
  if ok == nil then
    return nil, core.error{ kind = "timeout", message = format("no worker-thread Lua VM came free within "
      .. "the timeout (%gs): this worker's calls hold all %d (cachectl.openresty.configure{ vms = n }, "
      .. "lua_worker_thread_vm_pool_size)", budget, vms) }
  elseif not ok and tostring(res):find("^thread pool .* not found$") then
    error(format("cachectl: nginx %s: add 'thread_pool %s threads=16;' to the main section of nginx.conf "
      .. "(or give the client option thread_pool)", res, pool), 0)
  elseif not ok then
    -- nginx could not copy the options (a function or a coroutine as a
    -- value: "unsupported Lua type"): the core's own words name the option
    local fine, id, bad = pcall(core.identity, service, call, mine)
    if not fine then raise(id) end
    if bad then return nil, bad end
    raise(res)
  end
  if err then err = core.error(err) end
  for i = 1, events and #events or 0 do opts.on_event(events[i]) end
  return res, err
end

--- Runs several calls of one endpoint concurrently, without blocking the
-- worker: up to `concurrency` light threads (`ngx.thread.spawn`), each
-- taking the next call of the list and running it as `M.call` does. Calls
-- run at once only as far as the pool has threads (`threads=N`); the rest
-- queue in the pool. When a call raises (on_event, misuse), no further call
-- starts, and the error is raised once the running ones have ended.
-- @tparam string service "omni" or "modelslab"
-- @tparam string call the endpoint
-- @tparam {table,...} list one options table per call
-- @tparam[opt] number concurrency at most this many at once (default 8)
-- @tparam[opt] string|boolean pool as for `M.call`
-- @treturn {table,...} one `{ result = res, err = err }` per call, in input order
function M.batch(service, call, list, concurrency, pool)
  check_phase()
  local n, items, next_i = #list, {}, 0
  local failed, failure = false, nil
  local function worker()
    while next_i < n and not failed do
      next_i = next_i + 1
      local i = next_i
      local ok, res, err = pcall(M.call, service, call, list[i], pool)
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
