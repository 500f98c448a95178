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

-- A batch (M.batch; one call is a batch of one) is a table `b`: ctx, list
-- (the options of each item), concurrency, window, started; and per item
-- i: items[i] its outcome `{ result, err }`, ids[i] its identity, reqs[i]
-- its prepared request, keep[i] (its outcome kept for the window), dup[i]
-- (the identical item it shares), alone[i] (Redis failed: no claim).

-- Item i's identity (what makes two calls the same request: b.ids[i]) and
-- what to send (b.reqs[i]): its request prepared once outside nginx, else
-- the table itself. Returns the err of a bad value.
local function identify(b, i)
  local ctx = b.ctx
  -- through pcall: a mistake the core raises names no line of this file
  -- (the core points at its caller), as when the call goes uncoalesced
  local fine, id, bad = pcall(ctx.nginx and core.identity or core.prepare, ctx.service.name, ctx.call, b.list[i])
  if not fine then error(id, 0) end
  if ctx.nginx or not id then
    b.ids[i] = id                 -- inside nginx the table goes as it is
  else
    b.ids[i], b.reqs[i] = id:identity(), id
  end
  return bad
end

-- Item i as it goes: its prepared request, else a copy of its options,
-- with what is left of its timeout.
local function rest_of(b, i)
  local opts, req = b.list[i], b.reqs[i]
  local left = max((opts.timeout or TIMEOUT) - (gettime() - b.started), 0.001)
  if req then return req:timeout(left) end
  local out = {}
  for k, v in pairs(opts) do out[k] = v end
  out.timeout = left
  return out
end

-- Sends the items `index` of the batch at once (up to its concurrency);
-- results into b.items.
local function send_items(b, index)
  if not index[1] then return end
  local ctx, out = b.ctx, {}
  for k, i in ipairs(index) do out[k] = rest_of(b, i) end
  local sent = ctx.nginx
    and require("cachectl.openresty").batch(ctx.service.name, ctx.call, out, b.concurrency, ctx.pool)
    or ctx.session:batch(ctx.service.name, ctx.call, out, b.concurrency)
  for k, i in ipairs(index) do b.items[i] = sent[k] end
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

-- An outcome handed to another caller, as a batch item: a copy marked
-- `coalesced = true`, and a `coalesced` event.
local function shared(ctx, opts, res, err)
  res, err = deep_copy(res), deep_copy(err)
  if res then res.coalesced = true end
  if err then err.coalesced = true end
  if opts.on_event then opts.on_event{ type = "coalesced", service = ctx.service.name, call = ctx.call } end
  if res then return { result = res } end
  return { err = err }
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
-- its request runs): item i, a later one, waits within what is left of its
-- timeout for the first's outcome (mark: the first's mark); none kept (the
-- first sent nothing, or raised) -> nil: it goes itself; none in time ->
-- nil, a timeout error.
--
-- A first caller killed meanwhile (ngx.thread.kill of its light thread, or
-- of the batch's) never ends its call: its mark holds the first caller's
-- coroutine, and once nginx says that one is dead the mark is dropped and
-- the waiters go by themselves.
local function await(b, i, mark)
  local digest, budget = b.ids[i], b.list[i].timeout or TIMEOUT
  local sleep, deadline = rawget(_G, "ngx").sleep, b.started + budget
  while outcomes[digest] == mark and gettime() < deadline do
    if mark.co and coroutine.status(mark.co) == "dead" then
      outcomes[digest] = nil
      break
    end
    sleep(0.005)
  end
  local o = outcomes[digest]
  if o == mark then return nil, fleet.no_outcome(b.ctx.service.name .. "." .. b.ctx.call, budget) end
  if o and not o.pending then return o end
end

-- Item i's claim when its rate limit names Redis: "mine" or "theirs", its
-- link and token; nil when there is no Redis or it cannot be used (the
-- item goes by itself; the core's turn then falls back, or fails under
-- redis_required). Within what is left of the item's timeout.
local function claim(b, i)
  local opts, ctx = b.list[i], b.ctx
  local url = type(opts.rate_limit) == "table" and opts.rate_limit.redis
  local link = url and fleet.link(url, (opts.timeout or TIMEOUT) - (gettime() - b.started),
    { connect_timeout = opts.connect_timeout, session = not ctx.nginx and ctx.session or nil })
  if not link then return nil end
  local state, token = fleet.claim(link, b.ids[i], b.window)
  return state, link, token
end

-- What a round does with each item of `todo`: kept outcomes shared,
-- identical items found (b.dup[i] = the first of them), one in flight
-- elsewhere in the worker awaited (ours; outside nginx none can be: the
-- item sends its own), the fleet's claims taken (mine); theirs wait for
-- another process's outcome, now goes at once. The second round (`wait`
-- false: the items whose first caller left no outcome) waits for nobody,
-- and claims again unless Redis failed (b.alone).
local function plan(b, r, todo, wait)
  local seen = {}
  for _, i in ipairs(todo) do
    local opts, bad = b.list[i], nil
    if b.window and wait then bad = identify(b, i) end
    local digest = b.ids[i]
    local o = digest and lookup(digest, b.started)
    if bad then
      b.items[i] = { err = bad }
    elseif o and not o.pending then
      b.items[i] = shared(b.ctx, opts, o.res, o.err)
    elseif digest and seen[digest] then
      b.dup[i] = seen[digest]
    elseif o and b.ctx.nginx and wait then
      seen[digest] = i
      r.ours[#r.ours + 1] = { i = i, mark = o }
    else
      if digest then seen[digest], b.keep[i] = i, true end
      local state, link, token
      if digest and not b.alone[i] then state, link, token = claim(b, i) end
      if state == "theirs" and wait then
        r.theirs[#r.theirs + 1] = { i = i, link = link }
      else
        if state == "mine" then r.mine[i] = { link = link, token = token } end
        r.now[#r.now + 1] = i
      end
    end
  end
end

-- Keeps the outcomes of the items just sent (those not kept go on being
-- kept at the batch's end: the ones shared from another process).
local function keep_sent(b, sent)
  for _, i in ipairs(sent) do
    if b.keep[i] then
      keep(b.ids[i], b.started, b.window, b.items[i].result, b.items[i].err)
      b.keep[i] = nil
    end
  end
end

-- Runs the round's items that go now, all at once, marked as in flight
-- (inside nginx an identical call of the worker waits for them); keeps
-- their outcomes at once in place of the marks (the batch may still wait
-- for other items: a waiter of the worker must not find the mark gone and
-- no outcome); then stores them for the fleet, or releases the claims when
-- the round raised (in `plan` too: on_event raising on a shared outcome, a
-- mistake in a later item), so that the waiters go at once.
local function run(b, r, ok, why)
  local marks = {}
  if ok then
    for _, i in ipairs(r.now) do
      local d = b.ids[i]
      if d then
        marks[d] = { pending = true, expires = b.started + b.window, co = coroutine.running() }
        outcomes[d] = marks[d]
      end
    end
    ok, why = pcall(send_items, b, r.now)
    for d, m in pairs(marks) do
      if outcomes[d] == m then outcomes[d] = nil end
    end
    if ok then keep_sent(b, r.now) end
  end
  for i, m in pairs(r.mine) do
    local it = ok and b.items[i] or {}
    fleet.settle(m.link, b.ids[i], m.token, b.window, it.result, it.err, { b.list[i][b.ctx.service.secret] })
  end
  if not ok then error(why, 0) end
end

-- The round's waiters: the outcome another process stored, or a call in
-- flight in the worker kept, shared; the items left without one are
-- returned, to go by themselves (alone when Redis failed meanwhile).
local function await_all(b, r)
  local again, ctx = {}, b.ctx
  for _, w in ipairs(r.theirs) do
    local i = w.i
    local budget = b.list[i].timeout or TIMEOUT
    local o = fleet.await(w.link, b.ids[i])
    if o then
      b.items[i] = shared(ctx, b.list[i], o.res, o.err)
    elseif gettime() - b.started < budget then
      again[#again + 1], b.alone[i] = i, o == nil
    else
      b.items[i] = { err = fleet.no_outcome(ctx.service.name .. "." .. ctx.call, budget) }
    end
  end
  for _, w in ipairs(r.ours) do
    local o, late = await(b, w.i, w.mark)
    if late then
      b.items[w.i] = { err = late }
    elseif o then
      b.items[w.i] = shared(ctx, b.list[w.i], o.res, o.err)
    else
      again[#again + 1] = w.i
    end
  end
  return again
end

--- Several calls of one endpoint, concurrently (up to `concurrency`), with
-- identical ones sent once and shared when a coalesce window is given
-- (across the fleet when their rate limit names Redis: the claims first,
-- then every item this process runs at once, then the waiters; an item
-- whose first caller left no outcome claims again and goes).
-- @tparam table ctx the call's context
-- @tparam {table,...} list the core's options, one table per call
-- @tparam number concurrency
-- @tparam[opt] number window the coalesce window (seconds), or nil
-- @treturn {table,...} one `{ result = res, err = err }` per call, in order
function M.batch(ctx, list, concurrency, window)
  local b = { ctx = ctx, list = list, concurrency = concurrency, window = window, started = gettime(),
    items = {}, reqs = {}, ids = {}, keep = {}, dup = {}, alone = {} }
  local todo, wait = {}, true
  for i = 1, #list do todo[i] = i end
  while todo[1] do
    local r = { now = {}, mine = {}, theirs = {}, ours = {} }
    run(b, r, pcall(plan, b, r, todo, wait))
    todo, wait = await_all(b, r), false
  end
  local items = b.items
  for i in pairs(b.keep) do keep(b.ids[i], b.started, window, items[i].result, items[i].err) end
  for i = 1, #list do
    local first = b.dup[i]
    if first then items[i] = shared(ctx, list[i], items[first].result, items[first].err) end
  end
  return items
end

--- One call, coalesced with identical ones within `window` seconds when a
-- window is given (a batch of one), else sent.
-- @tparam table ctx the call's context
-- @tparam table opts the core's options
-- @tparam[opt] number window the coalesce window (seconds), or nil
-- @treturn table|nil res (a shared one has `coalesced = true`)
-- @treturn[2] table err
function M.one(ctx, opts, window)
  if window then
    local item = M.batch(ctx, { opts }, 1, window)[1]
    return item.result, item.err
  end
  if ctx.nginx then return require("cachectl.openresty").call(ctx.service.name, ctx.call, opts, ctx.pool) end
  return ctx.session:call(ctx.service.name, ctx.call, opts)
end

return M
