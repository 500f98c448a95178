--- cachectl: clear and reset remote caches and queues from Lua.
--
-- The Lua layer over `cachectl.core`: clients with defaults taken from the
-- environment, kept-alive connections, concurrent batches, coalescing and
-- the fleet's rate limit (cachectl.perform), Omni's models and cache
-- policies (read and checked by the core). Every fact about a service and its calls
-- comes from the core's rows (`core.services`): each client method is built
-- from a call's row; only `omni:models`, `omni:cache_policies`,
-- `omni:reset_caches` and `omni:find_model` are written by hand (and a
-- model name is resolved wherever a model UUID is taken: the lookup is part
-- of the call, within its timeout and guard). Options are checked by the
-- core.
--
--    local cachectl = require "cachectl"
--    local omni = cachectl.omni.new{ instance = "acme" }   -- token from $OMNI_API_KEY
--    local res, err = omni:reset_cache(model_id, "daily")
--
-- @module cachectl

local core = require "cachectl.core"
local perform = require "cachectl.perform"

local error, pcall, pairs, ipairs, next, type, select, tostring, setmetatable, getmetatable =
  error, pcall, pairs, ipairs, next, type, select, tostring, setmetatable, getmetatable
local rawget, _G = rawget, _G
local running, status = coroutine.running, coroutine.status
local getenv = os.getenv
local format = string.format
local concat = table.concat
local gettime = core.monotonic

-- Inside nginx, calls run in an nginx thread pool instead of blocking the
-- worker (see cachectl.openresty); plain Lua never loads that module.
local openresty = rawget(_G, "ngx") and require "cachectl.openresty" or nil

local M = {
  version = core.version,
  modelslab = core.modelslab,
  omni = core.omni,
}

-- The options this layer reads itself, and which calls take them besides
-- their row's own; and their types, checked here (the core reads only its
-- own options, once, when the call is made).
local LAYER = {
  coalesce = function(row) return row.name ~= "request" end,
  check_policy = function(row) return row.options.policy ~= nil end,
}
local LAYER_TYPE = { coalesce = "number", check_policy = "boolean" }

-- How a call names its host: naming one replaces the client's way.
local HOST = { base_url = true, instance = true, playground = true }

local POLICY_TTL = 60 -- seconds a model's policies (and a model found by name) are kept per client
local PAGE_SIZE = 100 -- records asked for per page of omni:models, unless page_size says
local TIMEOUT = core.defaults.timeout    -- for the deadline of reading a model file

-- The variable naming the instance of a service built from one (Omni's
-- {instance}.omniapp.co), read when neither instance nor base_url is given
-- and the base URL variable is unset.
local INSTANCE_ENV = { omni = "OMNI_INSTANCE" }

-- Client state lives here, not in the client table, so that no credential
-- can be reached by printing or walking a client.
local private = setmetatable({}, { __mode = "k" })

-- The methods of every kind of client; each service's class adds its calls.
local Client = {}
local classes = {}

local function copy(t, without)
  local out = {}
  for k, v in pairs(t) do
    if k ~= without then out[k] = v end
  end
  return out
end

-- The items 1..#t of a list.
local function copy_list(t)
  local out = {}
  for i = 1, #t do out[i] = t[i] end
  return out
end

local function nonempty_env(name)
  local v = name and getenv(name)
  if v ~= nil and v ~= "" then return v end
  return nil
end

-- A core function whose mistakes (raised: unknown options, wrong types) are
-- raised again without a position inside this file, of no use to the
-- caller: worded as the call by UUID words them.
local function bare(fn, ...)
  local ok, a, b = pcall(fn, ...)
  if not ok then error((tostring(a):gsub("^[^\n]-%.lua:%d+: ", "")), 0) end
  return a, b
end

local function check(...)
  bare(core.check_options, ...)
end

-- core.identity: the digest of a call, or nil and its `invalid` error.
local function identity(...)
  return bare(core.identity, ...)
end

local function new_client(svc, opts)
  local where = "cachectl." .. svc.name .. ".new"
  if opts ~= nil and type(opts) ~= "table" then
    error(format("bad argument #1 to '%s' (table expected, got %s)", where, type(opts)), 3)
  end
  opts = opts or {}
  check(svc.name, opts, nil, where)
  local defaults = copy(opts)
  -- fixed now: a change to the caller's tables afterwards changes no call
  if type(defaults.rate_limit) == "table" then defaults.rate_limit = copy(defaults.rate_limit) end
  if defaults[svc.secret] == nil then
    defaults[svc.secret] = nonempty_env(svc.env[svc.secret])
  end
  if defaults.base_url == nil and defaults.instance == nil then
    defaults.base_url = nonempty_env(svc.env.base_url)
    if defaults.base_url == nil and svc.host then defaults.instance = nonempty_env(INSTANCE_ENV[svc.name]) end
  end
  local self = setmetatable({}, classes[svc.name])
  -- plain[call]: the options of a call made without options of its own,
  -- built once; policies: a model's policies by request identity
  -- calls: the calls in progress per coroutine (weak: a coroutine abandoned
  -- inside a call and collected holds nothing)
  private[self] = { svc = svc, defaults = defaults, session = core.session(), plain = {}, ctx = {},
                    calls = setmetatable({}, { __mode = "k" }), policies = {},
                    redis = nonempty_env("CACHECTL_REDIS_URL") }
  return self
end

local function state(self)
  local st = private[self]
  if not st then error("cachectl: not a client", 3) end
  if st.closed then error("cachectl: client is closed", 3) end
  return st
end

-- A call's options apart: the core's (checked by the core for this call)
-- and this layer's (checked by the core as client options).
local function split(_, row, opts, where)
  local core_opts, own = opts, nil
  for k, v in pairs(opts) do
    local takes = LAYER[k]
    if takes and takes(row) then
      if not own then own, core_opts = {}, copy(opts) end
      own[k], core_opts[k] = v, nil
    end
  end
  for k, v in pairs(own or {}) do
    if type(v) ~= LAYER_TYPE[k] then
      error(format("%s: option '%s' must be a %s, got %s", where, k, LAYER_TYPE[k], type(v)), 4)
    elseif k == "coalesce" and v > 1e6 then
      error(format("%s: option 'coalesce' must be a number of seconds >= 0 and at most 1000000", where), 4)
    end
  end
  return core_opts, own or {}
end

-- $CACHECTL_REDIS_URL is the default of rate_limit.redis, where the call has
-- a rate limit: a table of its own, or the service's default.
local function redis_default(st, merged)
  local limit = merged.rate_limit
  if type(limit) == "table" then
    if limit.redis == nil and limit.shared_dict == nil then
      merged.rate_limit = copy(limit)
      merged.rate_limit.redis = st.redis
    end
  elseif (limit == nil or limit == true) and st.svc.rate_limit then
    merged.rate_limit = { redis = st.redis }
  end
end

-- Whether a call made with these options (and no positional argument) has
-- nothing of this layer to do: no coalescing, no policy check, no nginx:
-- then it goes straight to the session (the common case, kept cheap; the
-- core takes its rate-limit turns, Redis's included).
local function direct(_, layer)
  return openresty == nil and not layer.check_policy and (layer.coalesce == nil or layer.coalesce == 0)
end

-- The options for one call: the client's defaults that this call takes,
-- overridden by the call's own; and this layer's options (coalesce,
-- check_policy). Mistakes raise at the caller's caller. Without options of
-- its own a call gets the same tables every time (never changed: a call
-- with positional arguments copies them), and, when it goes straight to the
-- session, the session's call bound once (st.plain[call][3]): positional
-- calls and calls without arguments alike; these send copies of a request
-- read once (the client's options are fixed when it is made).
local function call_options(st, row, opts, where)
  if opts == nil then
    local plain = st.plain[row.name]
    if plain then return plain[1], plain[2] end
  elseif type(opts) ~= "table" then
    error(format("bad argument to '%s' (options table expected, got %s)", where, type(opts)), 4)
  end
  local own_opts, own = {}, {}
  if opts then own_opts, own = split(st, row, opts, where) end
  local merged, layer = {}, {}
  local own_host = opts and (opts.base_url ~= nil or opts.instance ~= nil)
  for k, v in pairs(st.defaults) do
    if row.options[k] and not (own_host and HOST[k]) then merged[k] = v end
  end
  for k, v in pairs(own_opts) do merged[k] = v end
  if st.redis then redis_default(st, merged) end
  for name, takes in pairs(LAYER) do
    if takes(row) then
      layer[name] = own[name]
      if layer[name] == nil then layer[name] = st.defaults[name] end
    end
  end
  if not opts then
    -- a call without arguments sends copies of its request, read once
    local go = direct(merged, layer)
    local kept = go and #row.args == 0 and core.prepare(st.svc.name, row.name, merged, true)
    st.plain[row.name] = { merged, layer, go and st.session:bind(st.svc.name, row.name, kept or nil) }
  end
  return merged, layer
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
    err.message = format("%s (give %s= or set %s)", err.message, st.svc.secret, st.svc.env[st.svc.secret])
  end
  return err
end

-- How a call of this client goes out (cachectl.perform).
local function context(st, call)
  local ctx = st.ctx[call]
  if not ctx then
    ctx = { service = st.svc, call = call, session = st.session, pool = st.defaults.thread_pool }
    st.ctx[call] = ctx
  end
  ctx.nginx = openresty ~= nil and openresty.active()
  return ctx
end

local function one(st, call, opts, window)
  local res, err = perform.one(context(st, call), opts, window)
  return res, hint(st, err)
end

-- The one way this layer words its own errors (names and ids in a message
-- come from a server): core.error puts the message on one line and masks
-- the call's secret, as in the core's own errors.
local function lua_error(st, opts, fields)
  local secret = opts and opts[st.svc.secret]
  if secret == nil then secret = st.defaults[st.svc.secret] end
  return core.error(fields, type(secret) == "string" and secret or nil)
end

-- A call's options with its attempts counted (`sent[1]`): on_event sees
-- every event first here, then the caller's on_event.
local function counted(opts)
  local out, sent, user = copy(opts), { 0 }, opts.on_event
  out.on_event = function(ev)
    if ev.type == "attempt" then sent[1] = sent[1] + 1 end
    if user then return user(ev) end
  end
  return out, sent
end

-- The key of the main thread in st.calls where coroutine.running() gives
-- nil there (Lua 5.1).
local MAIN = {}

-- Whether a call of the client is in progress: one that runs, or waits in a
-- coroutine that yielded inside it (from on_event). A coroutine abandoned
-- there no longer counts once it is dead or collected (st.calls is weak).
local function busy(st)
  for co, n in pairs(st.calls) do
    if n > 0 and (co == MAIN or status(co) ~= "dead") then return true end
  end
  return false
end

-- Runs fn(...) as a call of the client: `close()` refuses while it runs and
-- `__close` waits for its end. The calls in progress are counted per
-- coroutine (also when one raises), so that one abandoned in the middle of
-- a call cannot keep the client from closing for good.
local function within(st, fn, ...)
  local co, calls = running() or MAIN, st.calls
  calls[co] = (calls[co] or 0) + 1
  local ok, res, err = pcall(fn, ...)
  local n = (calls[co] or 1) - 1
  if n > 0 then calls[co] = n else calls[co] = nil end
  if st.close_pending and not busy(st) then
    st.close_pending, st.closed = nil, true
    getmetatable(st.session).__close(st.session)    -- the session defers it while its own call runs
  end
  if not ok then error(res, 0) end
  return res, err
end

-- ------------------------------------------------------------ policies

-- The model file in a model_yaml answer: the file named, or the one file a
-- file_name that is a regular expression matched; nil when there is none.
local function model_file(res, file_name)
  local files = type(res.files) == "table" and res.files or {}
  local text = files[file_name]
  if text == nil and file_name:find("[%^%$%*%+%?%(%)%[%]{}|\\]") then
    local first = next(files)
    if first ~= nil and next(files, first) == nil then text = files[first] end
  end
  if type(text) == "string" then return text end
end

-- A model's policies, read from its model file within the call's timeout
-- (started: when the call began): the list, or nil, err; and the number of
-- requests sent.
local function read_policies(st, yopts, window, started)
  local opts, sent = counted(yopts)
  local res, err = one(st, "model_yaml", opts, window)
  if not res then return nil, err, sent[1] end
  local text = model_file(res, yopts.file_name)
  if not text then
    return nil, lua_error(st, yopts, { kind = "decode", attempts = sent[1],
      message = format("the answer holds no file '%s' for model %s", yopts.file_name, yopts.model_id) }), sent[1]
  end
  local list, why, reason = core.model_policies(text, nil, started + (yopts.timeout or TIMEOUT))
  if not list then
    return nil, lua_error(st, yopts, { kind = reason == "timeout" and "timeout" or "decode", attempts = sent[1],
      message = format("model %s: %s", yopts.model_id, why) }), sent[1]
  end
  return list, nil, sent[1]
end

-- The options to read the model file of a reset: the reset's own, for the
-- model_yaml call.
local function yaml_options(st, opts)
  local takes = st.svc.calls.model_yaml.options
  local yopts = {}
  for k, v in pairs(opts) do
    if takes[k] then yopts[k] = v end
  end
  yopts.file_name, yopts.fully_resolved = "model.yaml", true
  return yopts
end

-- The policies of the model a reset names, kept per model (and host and
-- credential) for POLICY_TTL seconds: the list, or nil, err; and the number
-- of requests sent for it (0 when kept).
local function model_policies(st, opts, started)
  local yopts = yaml_options(st, opts)
  local key, bad = identity(st.svc.name, "model_yaml", yopts)
  if not key then return nil, hint(st, bad), 0 end
  local now = gettime()
  local kept = st.policies[key]
  if kept and kept.expires > now then return kept.list, nil, 0 end
  local list, err, sent = read_policies(st, yopts, nil, started)
  if not list then return nil, err, sent end
  st.policies[key] = { expires = now + POLICY_TTL, list = list }
  return list, nil, sent
end

-- nil when the model declares `name`, else the `invalid` error refusing it
-- (attempts: the requests sent to read the policies).
local function refusal(st, opts, name, known, sent)
  local ok, message = core.policy_check(name, known, opts.model_id)
  if ok then return nil end
  return lua_error(st, opts, { kind = "invalid", field = "policy", attempts = sent, message = message })
end

-- ------------------------------------------------------------ methods

-- The options of a call whose timeout began at `started` (the policy
-- guard's read came first): what is left of it; nil when nothing is (no
-- request starts after the deadline).
local function time_left(opts, started)
  local left = (opts.timeout or TIMEOUT) - (gettime() - started)
  if left <= 0 then return nil end
  local out = copy(opts)
  out.timeout = left
  return out
end

-- The `timeout` of a call whose time ran out before its request went out
-- (`sent` requests were sent for it before: the guard's read, a lookup).
local function no_time_left(st, opts, what, sent)
  return lua_error(st, opts, { kind = "timeout", attempts = sent,
    message = format("no time left for the request after %s (timeout %g s)", what, opts.timeout or TIMEOUT) })
end

-- The items of a reset batch (the policies named), sent; with check_policy,
-- every item's options are checked first (a mistake raises, a bad value is
-- the item's error: bad input sends nothing, not the read either), then the
-- policies are read (when any item is left), then the names the model does
-- not declare refused.
local function reset_batch(st, names, base, model, layer, concurrency, window)
  local results, todo, sent = {}, {}, 0
  for i = 1, #names do
    local item = copy(base)
    item.model_id, item.policy = model, names[i]
    local invalid = layer.check_policy and select(2, identity(st.svc.name, "reset_cache", item))
    if invalid then results[i] = { policy = names[i], err = hint(st, invalid) } else todo[#todo + 1] = { i, item } end
  end
  if layer.check_policy and #todo > 0 then
    local started = gettime()
    local known, err
    known, err, sent = model_policies(st, todo[1][2], started)
    local left = {}
    for _, t in ipairs(todo) do
      local refused = not known and err or refusal(st, t[2], names[t[1]], known, sent)
      local rest = not refused and time_left(t[2], started)
      if not refused and not rest then refused = no_time_left(st, t[2], "reading the model's policies", sent) end
      if refused then
        results[t[1]] = { policy = names[t[1]], err = refused }
      else
        left[#left + 1] = { t[1], rest }
      end
    end
    todo = left
  end
  local list = {}
  for k, t in ipairs(todo) do list[k] = t[2] end
  local items = perform.batch(context(st, "reset_cache"), list, concurrency, window)
  for k, t in ipairs(todo) do
    local err = items[k].err
    -- the item's requests and the read of the model file made for it
    if err and sent > 0 then err.attempts = (err.attempts or 0) + sent end
    results[t[1]] = { policy = names[t[1]], result = items[k].result, err = hint(st, err) }
  end
  return results
end

-- Runs one call of a row-built method: this layer's options, then the
-- call. With check_policy, a reset is a batch of one (reset_batch).
local function run(st, row, opts, layer)
  local window, bad = perform.window(layer.coalesce)
  if bad then return nil, bad end
  if layer.check_policy and opts.policy ~= nil then
    local item = reset_batch(st, { opts.policy }, opts, opts.model_id, layer, 1, window)[1]
    return item.result, item.err
  end
  return one(st, row.name, opts, window)
end

-- The client method of a call's row: positional arguments (the row's
-- `args`), then an options table.
local function method(svc, row)
  local args, nargs = row.args, #row.args
  local where = svc.name .. ":" .. row.name
  local call = row.name
  return function(self, ...)
    local st = private[self]
    if not st or st.closed then st = state(self) end
    local last = (select(nargs + 1, ...))
    local plain, opts, layer = last == nil and st.plain[call]
    if plain then opts, layer = plain[1], plain[2] else opts, layer = call_options(st, row, last, where) end
    if nargs > 0 then
      -- the call's own table: the client's cached one is never changed
      if last == nil then opts = copy(opts) end
      for i = 1, nargs do
        opts[args[i]] = arg_or_default(st, (select(i, ...)), args[i])
      end
    end
    local bound = last == nil and st.plain[call][3]
    if bound then
      local res, err = bound(opts)
      if err then return nil, hint(st, err) end
      return res
    end
    return within(st, run, st, row, opts, layer)
  end
end

-- The client methods built from rows are documented in methods.luadoc;
-- those below are written by hand.

-- Whether a decoded JSON value is a list (an empty object reads as one).
local function is_list(t)
  if type(t) ~= "table" then return false end
  local n = #t
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then return false end
  end
  return true
end

-- The records of one page added to `out`: one per id (compared in lower
-- case: a UUID in either case is one model), up to `limit`; a record
-- without a string id, or with the id of an earlier one, is skipped with a
-- `skipped` event. Returns how many were added.
local function add_records(st, opts, records, page, out, ids, limit)
  local added = 0
  for i = 1, #records do
    if #out >= limit then break end
    local r = records[i]
    local id = type(r) == "table" and r.id or nil
    local key = type(id) == "string" and id ~= "" and id:lower() or nil
    local why = not key and "no_id" or ids[key] and "duplicate" or nil
    if why and opts.on_event then
      opts.on_event{ type = "skipped", service = st.svc.name, call = "list_models", reason = why,
        name = type(r) == "table" and type(r.name) == "string" and r.name or nil,
        message = format("page %d, record %d: %s", page, i,
          why == "no_id" and "no id (a non-empty string)" or "the id of an earlier record") }
    elseif not why then
      ids[key] = true
      out[#out + 1] = r
      added = added + 1
    end
  end
  return added
end

-- The error of a page that failed, for the whole list: `before` requests
-- were sent for the earlier pages. A cursor the core refuses to send (over
-- 64 KiB) came from the server: `decode`, not the caller's `invalid`.
local function page_error(st, opts, err, page, before)
  if page > 0 and err.kind == "invalid" then
    return lua_error(st, opts, { kind = "decode", attempts = before, message = format(
      "page %d of the model list gives a next cursor that cannot be sent (%s)", page, tostring(err.message)) })
  end
  err.attempts = before + (err.attempts or 0)
  return err
end

-- Every page of the list, within `limit` records and the call's timeout
-- (from `started`: each page gets what is left); paging ends on a page that
-- adds no record (empty, or only records skipped) and on a cursor that
-- comes back (A -> B -> A).
local function list_pages(st, base, limit, window, started)
  local opts, sent = counted(base)
  if opts.page_size == nil then opts.page_size = PAGE_SIZE end
  local budget = opts.timeout == nil and TIMEOUT or opts.timeout
  -- a timeout that is no number of seconds > 0 is the core's to refuse
  local timed = type(budget) == "number" and budget > 0
  local out, ids, seen, page = {}, {}, {}, 0
  if opts.cursor ~= nil then seen[opts.cursor] = true end
  while true do
    local popts = copy(opts)
    if timed then
      local left = budget - (gettime() - started)
      if left <= 0 then
        return nil, lua_error(st, opts, { kind = "timeout", attempts = sent[1], message = format(
          "the model list took longer than the call's timeout (%g s): %d pages read", budget, page) })
      end
      popts.timeout = left
    end
    local before = sent[1]
    local res, err = one(st, "list_models", popts, window)
    if not res then return nil, page_error(st, opts, err, page, before) end
    page = page + 1
    if not is_list(res.records) then
      local what = res.records == nil and "no records" or "records that are not a list"
      return nil, lua_error(st, opts, { kind = "decode", attempts = sent[1],
        message = format("page %d of the model list holds %s", page, what) })
    end
    local added = add_records(st, base, res.records, page, out, ids, limit)
    local info = type(res.pageInfo) == "table" and res.pageInfo or {}
    local cursor = info.nextCursor
    if added == 0 or #out >= limit or info.hasNextPage ~= true or type(cursor) ~= "string" or cursor == ""
      or seen[cursor] then
      return out
    end
    seen[cursor], opts.cursor = true, cursor
  end
end

--- Lists Omni models, following every page (`pageInfo.nextCursor`) up to
-- `limit` records, asking for pages of 100 unless `page_size` says
-- otherwise; paging stops early when a page adds no record (empty, or
-- only records skipped) or a cursor comes back that was already seen (a
-- server bug must not loop), and the call's `timeout` covers every page.
-- One record per id (compared in lower case): a record without a string
-- id, or with the id of an earlier one, is skipped with a `skipped` event.
-- `attempts` of an error counts every page sent.
-- @tparam[opt] table opts `name`, `kind` (modelKind), `include_deleted`,
-- `page_size`, `limit` (default 1000), and the common options
-- @treturn {table,...}|nil the records as decoded, in order:
-- `{ id = UUID, name = "Sales", modelKind = "SHARED", ... }`
-- @treturn[2] table err (`decode` when a page's `records` is not a list, or
-- its next cursor cannot be sent; `timeout` when the pages outlast the call's
-- timeout)
-- @usage local models, err = omni:models{ name = "Sales" }
-- @function omni:models
local function models(self, opts)
  local st = state(self)
  local started = gettime()
  local limit = 1000
  if type(opts) == "table" and opts.limit ~= nil then
    limit = opts.limit
    if type(limit) ~= "number" then
      error(format("omni:models: option 'limit' must be a number, got %s", type(limit)), 2)
    end
    opts = copy(opts, "limit")
  end
  local base, layer = call_options(st, st.svc.calls.list_models, opts, "omni:models")
  if not (limit >= 1 and limit % 1 == 0 and limit < 1 / 0) then
    return nil, core.error{ kind = "invalid", field = "limit", attempts = 0,
      message = "limit must be a whole number >= 1" }
  end
  local window, bad = perform.window(layer.coalesce)
  if bad then return nil, bad end
  return within(st, list_pages, st, base, limit, window, started)
end

--- The cache policies an Omni model declares in its model file (read fully
-- resolved, so an extended model's policies count), read with libyaml's parser
-- within limits (docs/lua.md: nesting depth, events, nodes with aliases and
-- merge keys expanded, keys) and the call's timeout.
-- @tparam string model_id the model's UUID (nil: the client's `model_id`)
-- @tparam[opt] table opts the options of `model_yaml` (`file_name` defaults to
-- "model.yaml", `fully_resolved` to true in the combined `mode`, Omni's
-- default, the only one that resolves) and the common options
-- @treturn table|nil `{ { name = "daily", max_cache_age = "24 hours",
-- filter_suggestions_must_obey_policy = true }, ..., default = "daily" }` in
-- the file's order; `default` from `default_cache_policy` (or nil); an empty
-- list when the file declares none; attributes are plain values
-- @treturn[2] table err: `decode` when the file is not YAML, passes a limit
-- or has a refused shape (`cache_policies` not a mapping, a name that is not
-- a string, an undeclared `default_cache_policy`, no such file); `timeout`
-- when reading it outlasts the call's timeout
-- @usage local list, err = omni:cache_policies(model_id)
-- @function omni:cache_policies
local function cache_policies(self, model_id, opts)
  local st = state(self)
  local started = gettime()
  local base, layer = call_options(st, st.svc.calls.model_yaml, opts, "omni:cache_policies")
  local yopts = copy(base)
  yopts.model_id = arg_or_default(st, model_id, "model_id")
  if yopts.file_name == nil then yopts.file_name = "model.yaml" end
  -- Omni resolves the extends chain only in the combined mode (its default)
  if yopts.fully_resolved == nil and (yopts.mode == nil or yopts.mode == "combined") then
    yopts.fully_resolved = true
  end
  local window, bad = perform.window(layer.coalesce)
  if bad then return nil, bad end
  local list, err = within(st, read_policies, st, yopts, window, started)
  return list, err
end

-- The concurrency of a batch (the call's, the client's, else 8), and the
-- call's options without it.
local function concurrency_of(st, opts)
  local concurrency = st.defaults.concurrency or 8
  if type(opts) == "table" and opts.concurrency ~= nil then
    concurrency = opts.concurrency
    opts = copy(opts, "concurrency")
  end
  -- any whole number >= 1 (more than the items: all at once); NaN and
  -- infinities are no numbers of calls
  if type(concurrency) ~= "number" or not (concurrency >= 1 and concurrency < 1 / 0 and concurrency % 1 == 0) then
    error("omni:reset_caches: option 'concurrency' must be a whole number >= 1", 3)
  end
  return concurrency, opts
end

-- Every item's outcome the same: a failure before anything was sent.
local function all_failed(names, err)
  local results = {}
  for i = 1, #names do results[i] = { policy = names[i], err = err } end
  return results
end

--- Resets several cache policies of an Omni model, concurrently.
-- @tparam string model_id the model's UUID (nil: the client's `model_id`)
-- @tparam {string,...} names the policy names
-- @tparam[opt] table opts per-call options plus `concurrency` (default: the
-- client's, else 8), `check_policy`, `coalesce`
-- @treturn {table,...} one `{ policy = name, result = res, err = err }` per
-- policy, in input order; identical ones are sent once
-- @usage local results = omni:reset_caches(model_id, { "daily", "hourly" }, { concurrency = 8 })
-- @function omni:reset_caches
local function reset_caches(self, model_id, names, opts)
  local st = state(self)
  if type(names) ~= "table" then
    error(format("bad argument #2 to 'omni:reset_caches' (table expected, got %s)", type(names)), 2)
  end
  local concurrency
  concurrency, opts = concurrency_of(st, opts)
  local base, layer = call_options(st, st.svc.calls.reset_cache, opts, "omni:reset_caches")
  local model = arg_or_default(st, model_id, "model_id")
  names = copy_list(names)                 -- the list as it was when the call started
  local window, bad = perform.window(layer.coalesce)
  if bad then return all_failed(names, bad) end
  return (within(st, reset_batch, st, names, base, model, layer, concurrency, window))
end

-- ------------------------------------------------------------ models by name

local NIL_UUID = "00000000-0000-0000-0000-000000000000"

local is_uuid = core.is_uuid     -- the core's check: one place says what a model id is

-- A model record as a candidate: its id (a UUID) and kind (a word), never
-- other text of the server's, which a message would carry to a terminal.
local function candidate(r)
  local kind = r.modelKind
  return { id = r.id:lower(), name = r.name, modelKind = type(kind) == "string" and kind:find("^[%w_]+$") and kind
    or nil }
end

local function id_list(list)
  local out = {}
  for i = 1, #list do
    out[i] = list[i].id .. (list[i].modelKind and " (" .. list[i].modelKind .. ")" or "")
  end
  return concat(out, ", ")
end

-- The one record of `records` named exactly `name` (duplicates of one id
-- count once), or nil and the `invalid` (none, several) or `decode` (a
-- match without a UUID id) error, `sent` requests sent for the list.
local function pick(st, opts, records, name, skipped, sent)
  local found, seen, unusable, others = {}, {}, skipped, {}
  for _, r in ipairs(records) do
    if type(r) == "table" and r.name == name then
      if not is_uuid(r.id) then
        unusable = unusable + 1
      elseif not seen[r.id:lower()] then
        seen[r.id:lower()] = true
        found[#found + 1] = candidate(r)
      end
    elseif type(r) == "table" and is_uuid(r.id) and #others < 10 then
      others[#others + 1] = candidate(r)
    end
  end
  -- a record with an id that is no UUID is a model too: beside another, the
  -- name is ambiguous (a record without an id, skipped by models(), is not)
  local odd = unusable - skipped
  if #found == 1 and odd == 0 then return found[1] end
  if #found > 0 then
    return nil, lua_error(st, opts, { kind = "invalid", field = "model", candidates = found, attempts = sent,
      message = format("%d models are named %q: %s%s; give one of their ids", #found + odd, name,
        id_list(found), odd > 0 and format(" and %d with an id that is not a UUID", odd) or "") })
  end
  if unusable > 0 then
    return nil, lua_error(st, opts, { kind = "decode", field = "model", candidates = {}, attempts = sent,
      message = format("the model list gives the model named %q no usable id (not a UUID)", name) })
  end
  return nil, lua_error(st, opts, { kind = "invalid", field = "model", candidates = others, attempts = sent,
    message = format("no model is named %q", name) })
end

-- The lookup of a model by name, inside the client's call guard: the model
-- kept under `key`, or the one of `models{ name = name }` (lopts: its
-- options); nil, err; and the requests sent (0 when the model was kept).
local function search(self, st, name, lopts, key)
  local now = gettime()
  local kept = st.names[key]
  if kept and kept.expires > now then return copy(kept.model), nil, 0 end
  -- the records models() skipped (no string id) but named `name` count as
  -- matches without a usable id
  local skipped, sent, theirs = 0, 0, lopts.on_event or st.defaults.on_event
  lopts.on_event = function(ev)
    if ev.type == "attempt" then sent = sent + 1 end
    if ev.type == "skipped" and ev.reason == "no_id" and ev.name == name then skipped = skipped + 1 end
    if theirs then return theirs(ev) end
  end
  local records, err = models(self, lopts)
  if not records then return nil, err, err.attempts or sent end
  local model, why = pick(st, lopts, records, name, skipped, sent)
  if not model then return nil, why, sent end
  st.names[key] = { expires = now + POLICY_TTL, model = model }
  return copy(model), nil, sent
end

-- The model list's refusal of a name as the refusal of the model it names.
local function name_refused(st, bad)
  if bad.field == "name" then bad.field, bad.message = "model", "model " .. bad.message end
  return hint(st, bad)
end

--- Finds the one Omni model named exactly `name`, with `omni:models{ name =
-- name }`; a model found is kept per client (and host and credential) for
-- 60 seconds, like a model's policies.
-- @tparam string name the model's name, exactly
-- @tparam[opt] table opts the options of `models` (`kind`, `include_deleted`,
-- and the common options)
-- @treturn table|nil `{ id = UUID (lower case), name = name, modelKind = "SHARED" }`
-- @treturn[2] table err: `kind = "invalid"`, `field = "model"` when no model
-- or several have that name (`err.candidates` lists them, `{ id, name,
-- modelKind }`, and the message gives their ids); `decode` when the one match
-- has no UUID id; or the error of the model list
-- @usage local model, err = omni:find_model("Sales")
-- @function omni:find_model
local function find_model(self, name, opts)
  local st = state(self)
  if type(name) ~= "string" then
    error(format("bad argument #1 to 'omni:find_model' (string expected, got %s)", type(name)), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(format("bad argument #2 to 'omni:find_model' (table expected, got %s)", type(opts)), 2)
  end
  local lopts = copy(opts or {})
  lopts.name = name
  local key, bad = identity(st.svc.name, "list_models",
    (call_options(st, st.svc.calls.list_models, copy(lopts, "limit"), "omni:find_model")))
  if not key then return nil, name_refused(st, bad) end
  st.names = st.names or {}
  local model, err = within(st, search, self, st, name, lopts, key)
  return model, err
end

-- The options of a lookup for a call: the call's own that the model list
-- takes, and the call's whole timeout (the lookup's pages share it).
local function lookup_options(st, opts, timeout)
  local takes, out = st.svc.calls.list_models.options, {}
  for k, v in pairs(type(opts) == "table" and opts or {}) do
    if takes[k] and k ~= "name" then out[k] = v end
  end
  out.timeout = timeout
  return out
end

-- The error a call of `row` with these options would get before sending
-- anything (with a stand-in model), or nil.
local function refused(st, row, merged)
  merged.model_id = NIL_UUID
  local ok, bad = identity(st.svc.name, row.name, merged)
  if not ok then return hint(st, bad) end
end

-- What a call's options table holds when the call starts: a copy (its
-- rate_limit too), so that nothing done to the caller's table while the
-- call runs (an on_event, during the lookup) changes the call.
local function snapshot(opts)
  if type(opts) ~= "table" then return opts end
  local out = copy(opts)
  if type(out.rate_limit) == "table" then out.rate_limit = copy(out.rate_limit) end
  return out
end

-- The requests a lookup sent, added to what an error of the call counts
-- (once per error table: a batch's items may share one).
local function count_lookup(err, sent, counted_already)
  if err and sent > 0 and not counted_already[err] then
    counted_already[err] = true
    err.attempts = (err.attempts or 0) + sent
  end
  return err
end

-- The call failing with err: nil, err; for a batch, each item's outcome
-- (an item refused before the lookup keeps its own error).
local function failed(names, pre, err)
  if not names then return nil, err end
  local results = {}
  for i = 1, #names do results[i] = { policy = names[i], err = pre[i] or err } end
  return results
end

-- A call by model name once every option was checked (c: what by_name
-- made of it), inside the client's call guard: the lookup, then the call
-- with what is left of the timeout; `attempts` counts the lookup's requests.
local function named(self, st, c)
  local found, err, sent = search(self, st, c.model, c.lopts, c.key)
  local left = found and c.timeout - (gettime() - c.started)
  if found and left <= 0 then
    err = no_time_left(st, c.merged, format("looking up the model named %q", c.model), sent)
  end
  if not found or left <= 0 then return failed(c.names, c.pre, err) end
  local o, counted_already = copy(c.opts or {}), {}
  o.timeout = left
  if not c.names then
    local res
    if c.shape == "opts" then res, err = c.fn(self, found.id, o) else res, err = c.fn(self, found.id, c.arg, o) end
    if res ~= nil then return res end
    return nil, count_lookup(err, sent, counted_already)
  end
  local good, at = {}, {}
  for i = 1, #c.names do
    if not c.pre[i] then good[#good + 1], at[#at + 1] = c.names[i], i end
  end
  local out, results = c.fn(self, found.id, good, o), failed(c.names, c.pre, nil)
  for k, i in ipairs(at) do
    results[i] = out[k]
    count_lookup(out[k].err, sent, counted_already)
  end
  return results
end

-- A method that takes a model (UUID or name) first, made to resolve a name
-- before it runs. `shape`: how its other arguments go: "policy" (policy,
-- opts), "batch" (names, opts) or "opts" (opts). The whole call runs on a
-- copy of its options (and names) taken when it starts, inside the client's
-- call guard, within one timeout, and `attempts` counts the lookup's
-- requests too. Every option is checked first, with a stand-in model: a bad
-- value sends nothing, not the lookup either; in a batch (`reset_caches`)
-- each item is, and the lookup goes out only when one of them would be sent.
local function by_name(fn, row, where, shape)
  return function(self, model, ...)
    local st = state(self)
    if model == nil then model = st.defaults.model_id end
    local arg, opts = ...
    if shape == "opts" then arg, opts = nil, arg end
    -- not a name, options that are not a table, names that are not a list
    -- (or an empty one): the method itself raises, or returns
    if type(model) ~= "string" or model == "" or is_uuid(model) or (opts ~= nil and type(opts) ~= "table")
        or (shape == "batch" and (type(arg) ~= "table" or #arg == 0)) then
      return fn(self, model, ...)
    end
    local started = gettime()
    opts = snapshot(opts)
    local names = shape == "batch" and copy_list(arg) or nil
    local checked = names and select(2, concurrency_of(st, opts)) or opts   -- a mistake raises, nothing sent
    local merged, layer = call_options(st, row, checked, where)
    merged = copy(merged)
    local _, bad = perform.window(layer.coalesce)
    local pre, any = {}, false
    for i = 1, names and #names or 1 do
      if names then merged.policy = names[i] elseif arg ~= nil then merged.policy = arg end
      pre[i] = bad or refused(st, row, merged)
      any = any or not pre[i]
    end
    if not any then return failed(names, pre, pre[1]) end
    local timeout = merged.timeout or TIMEOUT
    local lopts = lookup_options(st, checked, timeout)
    lopts.name = model
    local key
    key, bad = identity(st.svc.name, "list_models",
      (call_options(st, st.svc.calls.list_models, copy(lopts), where)))
    if not key then return failed(names, pre, name_refused(st, bad)) end
    st.names = st.names or {}
    return within(st, named, self, st, { fn = fn, shape = shape, model = model, arg = arg, opts = opts,
      names = names, pre = pre, merged = merged, lopts = lopts, key = key, timeout = timeout, started = started })
  end
end

--- Closes the client's connections. Closing twice does nothing; any other
-- use of a closed client raises "client is closed". From inside one of the
-- client's own calls (its `on_event`) it raises and changes nothing: the
-- client stays usable.
-- @function client:close
function Client:close()
  local st = private[self]
  if not st or st.closed then return end
  if busy(st) then error("cachectl: cannot close a client while one of its calls runs", 2) end
  st.session:close()          -- raises, changing nothing, inside the session's own call
  st.closed = true
end

-- A to-be-closed client (`local c <close> = ...`) closed inside one of its
-- calls: closed when that call ends.
function Client.__close(self)
  local st = private[self]
  if not st or st.closed then return end
  if busy(st) then
    st.close_pending = true
  else
    st.closed = true
    getmetatable(st.session).__close(st.session)    -- the session defers it while its own call runs
  end
end

-- The client's base URL as the service row builds it, without user info,
-- and with the credential masked (a base URL or an instance may hold it).
local function base_of(st)
  local d, svc = st.defaults, st.svc
  local base = d.base_url
  if not base and d.instance then
    base = (d.playground and svc.playground_host or svc.host or ""):gsub("{instance}", d.instance)
  end
  if base then return core.scrub((base:gsub("//[^/@]*@", "//")), d[svc.secret]) end
  return svc.default_base or "no instance set"
end

function Client.__tostring(self)
  local st = private[self]
  return format("cachectl.%s client (%s)%s", st.svc.name, base_of(st), st.closed and ", closed" or "")
end

--- Creates a client of a service: `cachectl.modelslab.new(opts)`,
-- `cachectl.omni.new(opts)`. The options are the defaults of every call:
-- every option of the service's calls, plus `concurrency`, `thread_pool`,
-- `coalesce`, `check_policy` (Omni), `on_event`; an unknown name raises.
-- The credential defaults to `$MODELSLAB_API_KEY` / `$OMNI_API_KEY`,
-- `base_url` to `$MODELSLAB_BASE_URL` / `$OMNI_BASE_URL` (unless `instance`
-- is given), `rate_limit.redis` to `$CACHECTL_REDIS_URL` where the client has a
-- rate limit.
-- @tparam[opt] table opts
-- @treturn table the client
-- @usage local ml = cachectl.modelslab.new{ key = KEY }
-- @usage local omni = cachectl.omni.new{ instance = "acme", check_policy = true }
-- @function new
for name, svc in pairs(core.services) do
  local class = {}
  for call, row in pairs(svc.calls) do class[call] = method(svc, row) end
  for k, v in pairs(Client) do class[k] = v end
  class.__index = class
  classes[name] = class
  M[name] = M[name] or core[name]
  M[name].new = function(opts) return new_client(svc, opts) end
end

classes.omni.models = models
classes.omni.cache_policies = cache_policies
classes.omni.reset_caches = reset_caches

-- A model name wherever a model UUID is taken (find_model resolves it).
do
  local omni, calls = classes.omni, core.services.omni.calls
  omni.find_model = find_model
  omni.reset_cache = by_name(omni.reset_cache, calls.reset_cache, "omni:reset_cache", "policy")
  omni.reset_caches = by_name(omni.reset_caches, calls.reset_cache, "omni:reset_caches", "batch")
  omni.model_yaml = by_name(omni.model_yaml, calls.model_yaml, "omni:model_yaml", "opts")
  omni.cache_policies = by_name(omni.cache_policies, calls.model_yaml, "omni:cache_policies", "opts")
end

return M
