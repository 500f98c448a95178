--- cachectl.perform: how a client's call goes out: coalescing of identical
-- calls (in the process, and across the fleet through Redis), the fleet's
-- rate-limit turn (`rate_limit.redis`), then the core (or, inside nginx,
-- cachectl.openresty, which takes its own turns).
--
-- A call is described by a context: `{ service = row, call = "reset_cache",
-- session = <core session>, nginx = bool, pool = <thread pool> }`.
--
-- @module cachectl.perform

local core = require "cachectl.core"

local pcall, require, error, type, pairs, ipairs, next, select, tostring, setmetatable, getmetatable =
  pcall, require, error, type, pairs, ipairs, next, select, tostring, setmetatable, getmetatable
local rawget, _G = rawget, _G
local format = string.format
local max = math.max
local gettime = require("socket").gettime

local M = {}

-- The core's error metatable (its __tostring), from an error the core
-- returns without sending anything.
local error_mt = getmetatable(select(2, core.identity("modelslab", "clear_cache", { key = "" })))

--- An error table like the core's.
-- @tparam table fields kind, message, attempts, and any of field, status, code, retry_after
-- @treturn table the error, with the core's `__tostring`
function M.new_error(fields)
  return setmetatable(fields, error_mt)
end

local fleet_module

-- cachectl.fleet, loaded when a call first names Redis.
local function fleet()
  if not fleet_module then
    local ok, mod = pcall(require, "cachectl.fleet")
    if not ok then error("cachectl: rate_limit.redis needs the module cachectl.fleet: " .. tostring(mod), 0) end
    fleet_module = mod
  end
  return fleet_module
end

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return setmetatable(out, getmetatable(v))
end

local function emit(opts, ev)
  if opts.on_event then opts.on_event(ev) end
end

-- ------------------------------------------------------------ the wire

-- rate_limit.shared_dict names an nginx lua_shared_dict: outside nginx the
-- core's own window applies instead, with the same numbers.
local function outside_nginx(opts)
  local limit = opts.rate_limit
  if type(limit) ~= "table" or limit.shared_dict == nil then return opts end
  local out = copy(opts)
  out.rate_limit = copy(limit)
  out.rate_limit.shared_dict = nil
  return out
end

local function send_now(ctx, opts)
  if ctx.nginx then
    return require("cachectl.openresty").call(ctx.service.name, ctx.call, opts, ctx.pool)
  end
  return ctx.session:call(ctx.service.name, ctx.call, outside_nginx(opts))
end

-- The numbers of a rate_limit table, the service's default filling gaps.
local function limit_numbers(ctx, limit)
  local default = ctx.service.rate_limit or {}
  return limit.requests or default.requests, limit.per or default.per
end

-- Redis cannot be reached: the process's own window, after a
-- `redis_fallback` event (unless `quiet`: reported already); or, with
-- redis_required, a `connect` error.
local function fallback(ctx, opts, message, quiet)
  local limit = opts.rate_limit
  if limit.redis_required then
    if not message:find("Redis", 1, true) then message = "Redis: " .. message end
    return nil, M.new_error{ kind = "connect", message = message, attempts = 0 }
  end
  if not quiet then
    emit(opts, { type = "redis_fallback", service = ctx.service.name, call = ctx.call, message = message })
  end
  local out = copy(opts)
  out.rate_limit = { requests = limit.requests, per = limit.per }
  if limit.requests == nil and limit.per == nil then out.rate_limit = true end
  return out
end

-- fleet's failure: unreachable (the fallback, and the message as a third
-- value), or a malformed URL.
local function redis_failure(ctx, opts, why, detail)
  if why == "unreachable" then
    local out, err = fallback(ctx, opts, detail)
    return out, err, detail
  end
  return nil, M.new_error{ kind = "invalid", field = "rate_limit", attempts = 0,
    message = "rate_limit.redis " .. tostring(detail) }
end

-- The options to hand the core for a call with rate_limit.redis: its turn
-- taken in Redis (delay = the wait; the core keeps no window of its own for
-- it), or the process's own window when Redis cannot be reached (then
-- fleet's message as a third value); or nil, err.
local function redis_turn(ctx, opts)
  local _, bad = core.identity(ctx.service.name, ctx.call, opts)
  if bad then return nil, bad end           -- nothing reserved for a call the core refuses
  local limit = opts.rate_limit
  local requests, per = limit_numbers(ctx, limit)
  local parts = { service = ctx.service.name, digest = core.sha256(opts[ctx.service.secret]) }
  local wait, why, detail = fleet().take(limit.redis, parts, requests, per, opts.timeout or 30,
    opts.connect_timeout)
  if wait then
    local out = copy(opts)
    out.delay = max(wait, opts.delay or 0)
    return out
  end
  if why == "late" then
    return nil, M.new_error{ kind = "rate_limited", retry_after = detail, attempts = 0,
      message = format("client-side rate limit (%g requests per %gs, shared through Redis): no turn "
        .. "before the timeout", requests, per) }
  end
  return redis_failure(ctx, opts, why, detail)
end

-- Whether a call's rate limit lives in Redis.
local function names_redis(opts)
  return type(opts.rate_limit) == "table" and opts.rate_limit.redis ~= nil
end

-- Whether this layer takes the call's turn in Redis (inside nginx,
-- cachectl.openresty takes it).
local function in_redis(ctx, opts)
  return not ctx.nginx and names_redis(opts)
end

--- Sends one call: the fleet turn when its rate limit lives in Redis, then
-- the core (or cachectl.openresty inside nginx).
-- @tparam table ctx the call's context
-- @tparam table opts the core's options
-- @treturn table|nil res
-- @treturn[2] table err
function M.send(ctx, opts)
  if in_redis(ctx, opts) then
    local out, err = redis_turn(ctx, opts)
    if not out then return nil, err end
    opts = out
  end
  return send_now(ctx, opts)
end

-- ------------------------------------------------------------ coalescing

-- Outcomes of coalesced calls in this process: identity digest ->
-- { expires, res, err }. Swept of expired entries now and then.
local outcomes, stored = {}, 0

local function sweep(now)
  for k, o in pairs(outcomes) do
    if o.expires <= now then outcomes[k] = nil end
  end
end

local function lookup(digest, now)
  local o = outcomes[digest]
  if o and o.expires <= now then
    outcomes[digest] = nil
    return nil
  end
  return o
end

-- Keeps an outcome for the rest of the window that began at `started`;
-- only when a request went out (an error sent nothing: attempts 0).
local function keep(digest, started, window, res, err)
  if err and not (err.attempts and err.attempts > 0) then return end
  stored = stored + 1
  if stored % 64 == 0 then sweep(gettime()) end
  outcomes[digest] = { expires = started + window, res = deep_copy(res), err = deep_copy(err) }
end

--- An outcome handed to another caller: a copy marked `coalesced = true`,
-- and a `coalesced` event.
-- @tparam table ctx the call's context
-- @tparam table opts the sharing call's options (its on_event)
-- @tparam table|nil res
-- @tparam table|nil err
-- @treturn table|nil res
-- @treturn[2] table err
function M.share(ctx, opts, res, err)
  res, err = deep_copy(res), deep_copy(err)
  if res then res.coalesced = true end
  if err then err.coalesced = true end
  emit(opts, { type = "coalesced", service = ctx.service.name, call = ctx.call })
  if res then return res end
  return nil, err
end

-- A call through fleet.coalesce: one outcome per identical call across
-- every process using the Redis; Redis away -> this process alone (and
-- fleet's message as a third value).
local function across_fleet(ctx, opts, digest, window)
  local limit = opts.rate_limit
  local res, err, shared = fleet().coalesce(limit.redis, digest, window, opts.timeout or 30,
    function() return M.send(ctx, opts) end,
    { connect_timeout = opts.connect_timeout, label = ctx.service.name .. "." .. ctx.call,
      secrets = { opts[ctx.service.secret] } })
  if type(err) == "string" then
    local out, ferr, down = redis_failure(ctx, opts, err, shared)
    if not out then return nil, ferr, down end
    res, err = send_now(ctx, out)
    return res, err, down
  end
  if shared then emit(opts, { type = "coalesced", service = ctx.service.name, call = ctx.call }) end
  return res, err
end

--- Validates a coalesce window: nil or 0 is off.
-- @tparam number|nil window seconds
-- @treturn number|nil the window when on
-- @treturn[2] table err an `invalid` error (field "coalesce") for a negative or not finite number
function M.window(window)
  if window == nil or window == 0 then return nil end
  if not (window > 0 and window < 1 / 0) then
    return nil, M.new_error{ kind = "invalid", field = "coalesce", attempts = 0,
      message = "coalesce must be a number of seconds >= 0" }
  end
  return window
end

-- Inside nginx, identical calls of one worker overlap (each yields while
-- its request runs): a later one waits, up to its timeout, for the first's
-- outcome; none kept (the first sent nothing, or raised) -> nil: it goes
-- itself; none within the timeout -> nil, a timeout error.
local function await(ctx, opts, digest, mark)
  local sleep, budget = rawget(_G, "ngx").sleep, opts.timeout or 30
  local deadline = gettime() + budget
  while outcomes[digest] == mark and gettime() < deadline do sleep(0.005) end
  local o = outcomes[digest]
  if o == mark then
    return nil, M.new_error{ kind = "timeout", attempts = 0, message = format(
      "coalesced call %s.%s: no outcome from the first caller within %g s", ctx.service.name, ctx.call, budget) }
  end
  if o and not o.pending then return o end
end

local function go(ctx, opts, digest, window)
  if names_redis(opts) then return across_fleet(ctx, opts, digest, window) end
  return M.send(ctx, opts)
end

-- Runs the first of identical calls inside nginx, marked as in flight for
-- the others of the worker; the mark goes whatever happens.
local function go_marked(ctx, opts, digest, window, now)
  local mark = { pending = true, expires = now + window }
  outcomes[digest] = mark
  local ok, res, err = pcall(go, ctx, opts, digest, window)
  if outcomes[digest] == mark then outcomes[digest] = nil end
  if not ok then error(res, 0) end
  return res, err
end

--- One call, coalesced with identical ones within `window` seconds when
-- a window is given.
-- @tparam table ctx the call's context
-- @tparam table opts the core's options
-- @tparam[opt] number window the coalesce window (seconds), or nil
-- @treturn table|nil res (a shared one has `coalesced = true`)
-- @treturn[2] table err
function M.one(ctx, opts, window)
  if not window then return M.send(ctx, opts) end
  local digest, bad = core.identity(ctx.service.name, ctx.call, opts)
  if not digest then return nil, bad end
  local now = gettime()
  local o = lookup(digest, now)
  if o and o.pending then
    local late
    if ctx.nginx then o, late = await(ctx, opts, digest, o) else o = nil end
    if late then return nil, late end
  end
  if o then return M.share(ctx, opts, o.res, o.err) end
  local res, err
  if ctx.nginx then
    res, err = go_marked(ctx, opts, digest, window, now)
  else
    res, err = go(ctx, opts, digest, window)
  end
  keep(digest, now, window, res, err)
  return res, err
end

-- ------------------------------------------------------------ batches

-- The batch's items before sending: identical ones found (dup[i] = the
-- first of them), stored outcomes shared; `todo` the items to send.
local function plan(ctx, list, window, items)
  local todo, dup, digests, seen = {}, {}, {}, {}
  local now = gettime()
  for i = 1, #list do
    local digest, bad
    if window then digest, bad = core.identity(ctx.service.name, ctx.call, list[i]) end
    local o = digest and lookup(digest, now)
    if o and o.pending then o = nil end       -- in flight elsewhere in the worker: send our own
    if bad then
      items[i] = { err = bad }
    elseif o then
      local res, err = M.share(ctx, list[i], o.res, o.err)
      items[i] = { result = res, err = err }
    elseif digest and seen[digest] then
      dup[i] = seen[digest]
    else
      if digest then seen[digest] = i end
      todo[#todo + 1] = i
      digests[i] = digest
    end
  end
  return todo, dup, digests, now
end

-- The options each item goes out with: its fleet turn taken (one after
-- another: a turn is fast), or its outcome when it ends here. Once Redis
-- could not be reached, the batch's other items use the process's own
-- window without trying it again (one redis_fallback event per batch).
local function prepare(ctx, list, todo, digests, window, items)
  local send, index, down = {}, {}, nil
  for _, i in ipairs(todo) do
    local opts, err = list[i], nil
    if down and names_redis(opts) then
      opts, err = fallback(ctx, opts, down, true)
    elseif window and names_redis(opts) then
      local res, cerr
      res, cerr, down = across_fleet(ctx, opts, digests[i], window)
      items[i] = { result = res, err = cerr }
      opts = nil
    elseif in_redis(ctx, opts) then
      opts, err, down = redis_turn(ctx, opts)
    end
    if not opts and not items[i] then items[i] = { err = err } end
    if opts then
      send[#send + 1] = ctx.nginx and opts or outside_nginx(opts)
      index[#index + 1] = i
    end
  end
  return send, index
end

--- Several calls of one endpoint, concurrently (up to `concurrency`), with
-- identical ones sent once and shared when a coalesce window is given.
-- @tparam table ctx the call's context
-- @tparam {table,...} list the core's options, one table per call
-- @tparam number concurrency
-- @tparam[opt] number window the coalesce window (seconds), or nil
-- @treturn {table,...} one `{ result = res, err = err }` per call, in order
function M.batch(ctx, list, concurrency, window)
  local items = {}
  local todo, dup, digests, started = plan(ctx, list, window, items)
  local send, index = prepare(ctx, list, todo, digests, window, items)
  if next(send) then
    local sent
    if ctx.nginx then
      sent = require("cachectl.openresty").batch(ctx.service.name, ctx.call, send, concurrency, ctx.pool)
    else
      sent = ctx.session:batch(ctx.service.name, ctx.call, send, concurrency)
    end
    for k, i in ipairs(index) do items[i] = sent[k] end
  end
  for _, i in ipairs(todo) do
    if window then keep(digests[i], started, window, items[i].result, items[i].err) end
  end
  for i = 1, #list do
    local first = dup[i]
    if first then
      local res, err = M.share(ctx, list[i], items[first].result, items[first].err)
      items[i] = { result = res, err = err }
    end
  end
  return items
end

return M
