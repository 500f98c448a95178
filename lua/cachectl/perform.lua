--- cachectl.perform: how a client's call goes out: coalescing of identical
-- calls (in the process, and across the fleet through Redis), then the core
-- (or, inside nginx, cachectl.openresty). Rate-limit turns are not taken
-- here: the core takes one for every request it sends, from the process
-- window, Redis or an nginx shared dict.
--
-- A call is described by a context: `{ service = row, call = "reset_cache",
-- session = <core session>, nginx = bool, pool = <thread pool> }`.
--
-- @module cachectl.perform

local core = require "cachectl.core"

local pcall, require, error, type, pairs, ipairs, next, tostring, setmetatable, getmetatable =
  pcall, require, error, type, pairs, ipairs, next, tostring, setmetatable, getmetatable
local rawget, _G = rawget, _G
local format = string.format
local max = math.max
local gettime = core.monotonic
local TIMEOUT = core.defaults.timeout

local M = {}

--- An error table like the core's.
-- @tparam table fields kind, message, attempts, and any of field, status, code, retry_after
-- @treturn table the error, with the core's `__tostring`
M.new_error = core.error

local fleet_module

-- cachectl.fleet, loaded when a call first coalesces through Redis.
local function fleet()
  if not fleet_module then
    local ok, mod = pcall(require, "cachectl.fleet")
    if not ok then error("cachectl: coalescing through Redis needs the module cachectl.fleet: " .. tostring(mod), 0) end
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

--- Sends one call: the core (or cachectl.openresty inside nginx).
-- @tparam table ctx the call's context
-- @tparam table opts the core's options
-- @treturn table|nil res
-- @treturn[2] table err
-- @tparam[opt] userdata prep the call prepared once (core.prepare), sent instead of opts
function M.send(ctx, opts, prep)
  if ctx.nginx then
    return require("cachectl.openresty").call(ctx.service.name, ctx.call, opts, ctx.pool)
  end
  return ctx.session:call(ctx.service.name, ctx.call, prep or opts)
end

-- The call's identity (what makes two calls the same request) and, outside
-- nginx, its request prepared once (core.prepare): the options table is
-- parsed once, whatever follows. Inside nginx the table goes to a pool
-- thread's VM, where it is parsed. nil, err for a bad value.
local function identify(ctx, opts)
  if ctx.nginx then return core.identity(ctx.service.name, ctx.call, opts) end
  local prep, bad = core.prepare(ctx.service.name, ctx.call, opts)
  if not prep then return nil, bad end
  return prep:identity(), nil, prep
end

local function send_batch(ctx, list, concurrency)
  if ctx.nginx then
    return require("cachectl.openresty").batch(ctx.service.name, ctx.call, list, concurrency, ctx.pool)
  end
  return ctx.session:batch(ctx.service.name, ctx.call, list, concurrency)
end

-- Whether a call's rate limit lives in Redis.
local function names_redis(opts)
  return type(opts.rate_limit) == "table" and opts.rate_limit.redis ~= nil
end

-- opts (or its prepared request) with what is left of its timeout,
-- `started` seconds ago.
local function rest_of(opts, started, prep)
  local left = max((opts.timeout or TIMEOUT) - (gettime() - started), 0.001)
  if prep then return prep:timeout(left) end
  local out = copy(opts)
  out.timeout = left
  return out
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

-- A link to the call's Redis for coalescing, its budget the call's timeout.
local function link_of(ctx, opts)
  return fleet().link(opts.rate_limit.redis, opts.timeout or TIMEOUT,
    { connect_timeout = opts.connect_timeout, session = not ctx.nginx and ctx.session or nil })
end

-- A call through fleet.coalesce: one outcome per identical call across
-- every process using the Redis. Redis away: this call goes by itself (the
-- core's turn then falls back, or fails under redis_required).
local function across_fleet(ctx, opts, digest, window, prep)
  local started = gettime()
  local function send()
    if prep then return M.send(ctx, opts, rest_of(opts, started, prep)) end
    return M.send(ctx, rest_of(opts, started))
  end
  local res, err, shared = fleet().coalesce(opts.rate_limit.redis, digest, window, opts.timeout or TIMEOUT, send,
    { connect_timeout = opts.connect_timeout, label = ctx.service.name .. "." .. ctx.call,
      secrets = { opts[ctx.service.secret] }, session = not ctx.nginx and ctx.session or nil })
  if type(err) == "string" then return send() end
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
  local sleep, budget = rawget(_G, "ngx").sleep, opts.timeout or TIMEOUT
  local deadline = gettime() + budget
  while outcomes[digest] == mark and gettime() < deadline do sleep(0.005) end
  local o = outcomes[digest]
  if o == mark then
    return nil, M.new_error{ kind = "timeout", attempts = 0, message = format(
      "coalesced call %s.%s: no outcome from the first caller within %g s", ctx.service.name, ctx.call, budget) }
  end
  if o and not o.pending then return o end
end

local function go(ctx, opts, digest, window, prep)
  if names_redis(opts) then return across_fleet(ctx, opts, digest, window, prep) end
  return M.send(ctx, opts, prep)
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
  local digest, bad, prep = identify(ctx, opts)
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
    res, err = go(ctx, opts, digest, window, prep)
  end
  keep(digest, now, window, res, err)
  return res, err
end

-- ------------------------------------------------------------ batches

-- The batch's items before sending: identical ones found (dup[i] = the
-- first of them), stored outcomes shared; `todo` the items to send.
local function plan(ctx, list, window, items)
  local todo, dup, digests, seen, preps = {}, {}, {}, {}, {}
  local now = gettime()
  for i = 1, #list do
    local digest, bad
    if window then digest, bad, preps[i] = identify(ctx, list[i]) end
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
  return todo, dup, digests, now, preps
end

-- The items to send in a batch with their fleet claims taken: an item
-- whose identical call another process runs waits for its outcome (theirs);
-- the others go now (mine: their outcome is stored for the fleet).
local function claims(ctx, list, todo, digests, window)
  local now_items, mine, theirs = {}, {}, {}
  for _, i in ipairs(todo) do
    local opts = list[i]
    local link = window and names_redis(opts) and link_of(ctx, opts)
    local state, token
    if link then state, token = fleet().claim(link, digests[i], window) end
    if state == "theirs" then
      theirs[#theirs + 1] = { i = i, link = link }
    else
      if state == "mine" then mine[i] = { link = link, token = token } end
      now_items[#now_items + 1] = i
    end
  end
  return now_items, mine, theirs
end

-- Sends the items `index` of list at once (up to concurrency), each with
-- what is left of its timeout; results into items.
local function send_items(ctx, list, index, concurrency, started, items, preps)
  if not next(index) then return end
  local send = {}
  for k, i in ipairs(index) do send[k] = rest_of(list[i], started, preps[i]) end
  local sent = send_batch(ctx, send, concurrency)
  for k, i in ipairs(index) do items[i] = sent[k] end
end

-- The waiters of a fleet batch: the outcome another process stored, or, when
-- its claim went without one (or Redis failed), the item goes by itself.
local function await_theirs(ctx, list, theirs, digests, concurrency, started, items, preps)
  local again = {}
  for _, w in ipairs(theirs) do
    local i = w.i
    local o = fleet().await(w.link, { digests[i] })[digests[i]]
    if o then
      local res, err = M.share(ctx, list[i], o.res, o.err)
      items[i] = { result = res, err = err }
    elseif gettime() - started < (list[i].timeout or TIMEOUT) then
      again[#again + 1] = i
    else
      items[i] = { err = M.new_error{ kind = "timeout", attempts = 0, message = format(
        "coalesced call %s.%s: no outcome from the first caller within %g s", ctx.service.name, ctx.call,
        list[i].timeout or TIMEOUT) } }
    end
  end
  send_items(ctx, list, again, concurrency, started, items, preps)
end

--- Several calls of one endpoint, concurrently (up to `concurrency`), with
-- identical ones sent once and shared when a coalesce window is given
-- (across the fleet when their rate limit names Redis: the claims first,
-- then every item this process runs at once, then the waiters).
-- @tparam table ctx the call's context
-- @tparam {table,...} list the core's options, one table per call
-- @tparam number concurrency
-- @tparam[opt] number window the coalesce window (seconds), or nil
-- @treturn {table,...} one `{ result = res, err = err }` per call, in order
function M.batch(ctx, list, concurrency, window)
  local items = {}
  local todo, dup, digests, started, preps = plan(ctx, list, window, items)
  local now_items, mine, theirs = claims(ctx, list, todo, digests, window)
  send_items(ctx, list, now_items, concurrency, started, items, preps)
  for i, m in pairs(mine) do
    fleet().settle(m.link, digests[i], m.token, window, items[i].result, items[i].err,
      { list[i][ctx.service.secret] })
  end
  await_theirs(ctx, list, theirs, digests, concurrency, started, items, preps)
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
