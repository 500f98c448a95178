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
local fleet = require "cachectl.fleet"

local pcall, require, error, type, pairs, ipairs, setmetatable, getmetatable, rawget, coroutine, _G =
  pcall, require, error, type, pairs, ipairs, setmetatable, getmetatable, rawget, coroutine, _G
local max = math.max
local gettime = core.monotonic
local TIMEOUT = core.defaults.timeout

local M = {}

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return setmetatable(out, getmetatable(v))
end

-- ------------------------------------------------------------ the wire

-- Sends one call: `req` is its options table or its request prepared once
-- (core.prepare; never inside nginx, where the table goes to a pool
-- thread's VM and is parsed there).
local function send(ctx, req)
  if ctx.nginx then return require("cachectl.openresty").call(ctx.service.name, ctx.call, req, ctx.pool) end
  return ctx.session:call(ctx.service.name, ctx.call, req)
end

local function send_batch(ctx, reqs, concurrency)
  if ctx.nginx then
    return require("cachectl.openresty").batch(ctx.service.name, ctx.call, reqs, concurrency, ctx.pool)
  end
  return ctx.session:batch(ctx.service.name, ctx.call, reqs, concurrency)
end

-- The call's identity (what makes two calls the same request) and what to
-- send: its request prepared once outside nginx, else the table itself.
-- nil, err for a bad value.
local function identify(ctx, opts)
  -- through pcall: a mistake the core raises names no line of this file
  -- (the core points at its caller), as when the call goes uncoalesced
  local fine, id, bad = pcall(ctx.nginx and core.identity or core.prepare, ctx.service.name, ctx.call, opts)
  if not fine then error(id, 0) end
  if ctx.nginx then return id, bad, opts end   -- both: nil, err for a bad value
  if not id then return nil, bad end
  return id:identity(), nil, id
end

-- `req` (opts, or its prepared request) with what is left of the timeout
-- of opts, `started` seconds ago.
local function rest_of(opts, req, started)
  local left = max((opts.timeout or TIMEOUT) - (gettime() - started), 0.001)
  if req and req ~= opts then return req:timeout(left) end
  local out = {}
  for k, v in pairs(opts) do out[k] = v end
  out.timeout = left
  return out
end

-- ------------------------------------------------------------ coalescing

-- Outcomes of coalesced calls in this process: identity digest ->
-- { expires, res, err }, or a mark { pending = true } while the first of
-- identical calls runs. Swept of expired entries now and then.
local outcomes, stored = {}, 0

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
  if stored % 64 == 0 then
    local now = gettime()
    for k, o in pairs(outcomes) do
      if o.expires <= now then outcomes[k] = nil end
    end
  end
  outcomes[digest] = { expires = started + window, res = deep_copy(res), err = deep_copy(err) }
end

-- An outcome handed to another caller: a copy marked `coalesced = true`,
-- and a `coalesced` event.
local function share(ctx, opts, res, err)
  res, err = deep_copy(res), deep_copy(err)
  if res then res.coalesced = true end
  if err then err.coalesced = true end
  if opts.on_event then opts.on_event{ type = "coalesced", service = ctx.service.name, call = ctx.call } end
  if res then return res end
  return nil, err
end

-- share(), as a batch item's outcome.
local function shared_item(ctx, opts, res, err)
  local r, e = share(ctx, opts, res, err)
  return { result = r, err = e }
end

-- The Redis of the call's rate limit, when it names one.
local function redis_of(opts)
  return type(opts.rate_limit) == "table" and opts.rate_limit.redis or nil
end

-- What fleet.link and fleet.coalesce take besides the URL.
local function fleet_opts(ctx, opts)
  return { connect_timeout = opts.connect_timeout, label = ctx.service.name .. "." .. ctx.call,
    secrets = { opts[ctx.service.secret] }, session = not ctx.nginx and ctx.session or nil }
end

-- The first of identical calls: through fleet.coalesce (one outcome per
-- identical call across every process using the Redis) when the rate limit
-- names Redis, else sent. Redis away: this call goes by itself (the core's
-- turn then falls back, or fails under redis_required).
local function run(ctx, opts, req, digest, window)
  local url = redis_of(opts)
  if not url then return send(ctx, req) end
  local started = gettime()
  local function go() return send(ctx, rest_of(opts, req, started)) end
  local res, err, shared = fleet.coalesce(url, digest, window, opts.timeout or TIMEOUT, go, fleet_opts(ctx, opts))
  if type(err) == "string" then return go() end
  if shared then return share(ctx, opts, res, err) end
  return res, err
end

--- Validates a coalesce window: nil or 0 is off.
-- @tparam number|nil window seconds
-- @treturn number|nil the window when on
-- @treturn[2] table err an `invalid` error (field "coalesce") for a negative or not finite number
function M.window(window)
  if window == nil or window == 0 then return nil end
  if not (window > 0 and window < 1 / 0) then
    return nil, core.error{ kind = "invalid", field = "coalesce", attempts = 0,
      message = "coalesce must be a number of seconds >= 0" }
  end
  return window
end

-- Inside nginx, identical calls of one worker overlap (each yields while
-- its request runs): a later one waits, up to its timeout, for the first's
-- outcome; none kept (the first sent nothing, or raised) -> nil: it goes
-- itself; none within the timeout -> nil, a timeout error.
--
-- A first caller killed meanwhile (ngx.thread.kill of its light thread, or
-- of the batch's) never ends its call: its mark holds the first caller's
-- coroutine, and once nginx says that one is dead the mark is dropped and
-- the waiters go by themselves.
local function new_mark(expires)
  return { pending = true, expires = expires, co = coroutine.running() }
end

local function await(ctx, opts, digest, mark)
  local sleep, budget = rawget(_G, "ngx").sleep, opts.timeout or TIMEOUT
  local deadline = gettime() + budget
  while outcomes[digest] == mark and gettime() < deadline do
    if mark.co and coroutine.status(mark.co) == "dead" then
      outcomes[digest] = nil
      break
    end
    sleep(0.005)
  end
  local o = outcomes[digest]
  if o == mark then return nil, fleet.no_outcome(ctx.service.name .. "." .. ctx.call, budget) end
  if o and not o.pending then return o end
end

--- One call, coalesced with identical ones within `window` seconds when
-- a window is given.
-- @tparam table ctx the call's context
-- @tparam table opts the core's options
-- @tparam[opt] number window the coalesce window (seconds), or nil
-- @treturn table|nil res (a shared one has `coalesced = true`)
-- @treturn[2] table err
function M.one(ctx, opts, window)
  if not window then return send(ctx, opts) end
  local digest, bad, req = identify(ctx, opts)
  if not digest then return nil, bad end
  local now = gettime()
  local o = lookup(digest, now)
  if o and o.pending then
    local late
    if ctx.nginx then o, late = await(ctx, opts, digest, o) else o = nil end
    if late then return nil, late end
  end
  if o then return share(ctx, opts, o.res, o.err) end
  -- marked as in flight for the others (inside nginx they overlap); the
  -- mark goes whatever happens
  local mark = new_mark(now + window)
  outcomes[digest] = mark
  local ok, res, err = pcall(run, ctx, opts, req, digest, window)
  if outcomes[digest] == mark then outcomes[digest] = nil end
  if not ok then error(res, 0) end
  keep(digest, now, window, res, err)
  return res, err
end

-- ------------------------------------------------------------ batches

-- Sends the items `index` of list at once (up to concurrency), each with
-- what is left of its timeout; results into items.
local function send_items(ctx, list, reqs, index, concurrency, started, items)
  if not index[1] then return end
  local out = {}
  for k, i in ipairs(index) do out[k] = rest_of(list[i], reqs[i], started) end
  local sent = send_batch(ctx, out, concurrency)
  for k, i in ipairs(index) do items[i] = sent[k] end
end

-- A batch item's claim when its rate limit names Redis: "mine" or
-- "theirs", its link and token; nil when there is no Redis or it cannot be
-- used (the item goes now).
local function claim(ctx, opts, digest, window)
  local url = redis_of(opts)
  local link = url and fleet.link(url, opts.timeout or TIMEOUT, fleet_opts(ctx, opts))
  if not link then return nil end
  local state, token = fleet.claim(link, digest, window)
  return state, link, token
end

-- The waiters of a batch: the outcome another process stored; the items
-- whose claim went without one (or whose Redis failed) are returned, to go
-- by themselves.
local function await_theirs(ctx, list, theirs, digests, started, items)
  local again = {}
  for _, w in ipairs(theirs) do
    local i, budget = w.i, list[w.i].timeout or TIMEOUT
    local o = fleet.await(w.link, { digests[i] })[digests[i]]
    if o then
      items[i] = shared_item(ctx, list[i], o.res, o.err)
    elseif gettime() - started < budget then
      again[#again + 1] = i
    else
      items[i] = { err = fleet.no_outcome(ctx.service.name .. "." .. ctx.call, budget) }
    end
  end
  return again
end

-- The items whose identical call was in flight elsewhere in the worker:
-- its outcome shared, or (none kept: it sent nothing, or raised) added to
-- again, to go by themselves.
local function await_ours(ctx, list, ours, items, again, started)
  for _, w in ipairs(ours) do
    -- within what is left of the item's timeout
    local o, late = await(ctx, rest_of(list[w.i], nil, started), w.digest, w.mark)
    if late then
      items[w.i] = { err = late }
    elseif o then
      items[w.i] = shared_item(ctx, list[w.i], o.res, o.err)
    else
      again[#again + 1] = w.i
    end
  end
  return again
end

-- Marks the items this process sends now as in flight (inside nginx an
-- identical call of the worker waits for them, as for M.one's); returns
-- the marks, for `unmark`.
local function mark(b, window, started)
  local marks = {}
  for _, i in ipairs(b.now_items) do
    local d = b.digests[i]
    if d then
      marks[d] = new_mark(started + window)
      outcomes[d] = marks[d]
    end
  end
  return marks
end

local function unmark(marks)
  for d, m in pairs(marks) do
    if outcomes[d] == m then outcomes[d] = nil end
  end
end

-- Stores the outcomes of the batch's claims for the fleet (ok), or
-- releases them (the batch raised: no outcome, the waiters go at once).
local function settle_mine(ctx, list, mine, digests, window, items, ok)
  for i, m in pairs(mine) do
    local it = ok and items[i] or {}
    fleet.settle(m.link, digests[i], m.token, window, it.result, it.err, { list[i][ctx.service.secret] })
  end
end

-- What a batch does with each item: identical items found (dup[i] = the
-- first of them), kept outcomes shared, one in flight elsewhere in the
-- worker awaited (ours; outside nginx none can be: the item sends its own),
-- the fleet's claims taken (mine); theirs wait for another process's
-- outcome, now_items go at once.
local function plan(ctx, list, window, started, b)
  local seen = {}
  for i = 1, #list do
    local opts, digest, bad = list[i]
    if window then digest, bad, b.reqs[i] = identify(ctx, opts) end
    local o = digest and lookup(digest, started)
    if bad then
      b.items[i] = { err = bad }
    elseif o and not o.pending then
      b.items[i] = shared_item(ctx, opts, o.res, o.err)
    elseif digest and seen[digest] then
      b.dup[i] = seen[digest]
    elseif o and ctx.nginx then
      seen[digest] = i
      b.ours[#b.ours + 1] = { i = i, digest = digest, mark = o }
    else
      b.digests[i] = digest
      if digest then seen[digest] = i end
      local state, link, token
      if digest then state, link, token = claim(ctx, opts, digest, window) end
      if state == "theirs" then
        b.theirs[#b.theirs + 1] = { i = i, link = link }
      else
        if state == "mine" then b.mine[i] = { link = link, token = token } end
        b.now_items[#b.now_items + 1] = i
      end
    end
  end
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
  local b = { items = {}, reqs = {}, digests = {}, dup = {}, now_items = {}, mine = {}, theirs = {}, ours = {} }
  local items, digests, started = b.items, b.digests, gettime()
  -- the claims taken so far are released when planning raises (on_event
  -- raising on a shared outcome, a mistake in a later item)
  local ok, why = pcall(plan, ctx, list, window, started, b)
  if not ok then
    settle_mine(ctx, list, b.mine, digests, window, items, false)
    error(why, 0)
  end
  -- every item this process runs, at once; their outcomes stored for the
  -- fleet, or the claims released when the batch raises
  local marks = mark(b, window, started)
  ok, why = pcall(send_items, ctx, list, b.reqs, b.now_items, concurrency, started, items)
  unmark(marks)
  settle_mine(ctx, list, b.mine, digests, window, items, ok)
  if not ok then error(why, 0) end
  local again = await_theirs(ctx, list, b.theirs, digests, started, items)
  send_items(ctx, list, b.reqs, await_ours(ctx, list, b.ours, items, again, started), concurrency, started, items)
  for i, d in pairs(digests) do keep(d, started, window, items[i].result, items[i].err) end
  for i = 1, #list do
    local first = b.dup[i]
    if first then items[i] = shared_item(ctx, list[i], items[first].result, items[first].err) end
  end
  return items
end

return M
