--- cachectl.fleet: one outcome per identical call, shared by every
-- process and machine that uses the same Redis (`coalesce`): the first
-- caller claims the call (`SET NX PX`), runs it and stores its outcome as
-- JSON under the claim; the others wait for it.
--
-- The fleet's rate limit is not here: the C core takes every request's turn
-- in Redis itself (src/redis.c), when the request starts.
--
-- Redis is reached through the C core's connection (hiredis) in plain Lua
-- and in nginx's worker threads (`session:redis`), and through
-- lua-resty-redis (cosockets, non-blocking) on nginx's main side, where the
-- phase can yield. Nothing here ever sends a credential to Redis: callers
-- pass SHA-256 digests. A password in the Redis URL is a secret: it appears
-- in no message.
--
-- @module cachectl.fleet

local require, pcall, error, type, tostring, rawget = require, pcall, error, type, tostring, rawget
local format = string.format
local floor, min, max, random = math.floor, math.min, math.max, math.random
local G = _G

local core = require "cachectl.core"

local M = {}

local MISSING_RESTY = "rate_limit.redis inside nginx needs lua-resty-redis (Debian package lua-nginx-redis)"
local POLL_FIRST, POLL_MAX = 0.02, 0.05 -- seconds between looks for a coalesced outcome
local GRACE_MS = 1000 -- how long an outcome stays when its claim expired during the run
local PENDING = "pending:" -- a claim's value until the outcome replaces it
local KEY = "cachectl:co:" -- then the call's digest

-- Stores a coalesced call's outcome under its claim. KEYS[1]: the claim;
-- ARGV: the claim's value, the outcome (JSON), a TTL (ms) for when the claim
-- expired meanwhile. Keeps the claim's own expiry; never overwrites a newer
-- caller's claim.
local STORE = [[
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl) return 1 end
end
if not v then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 2 end
return 0
]]

-- Drops a claim that is still ours (the run raised).
local RELEASE = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
]]

--- Reads a Redis URL as the core does (`core.redis_url`): nothing of the URL
-- is quoted in the message.
-- @function parse_url
-- @tparam string url `redis://[[user]:password@]host[:port][/db]`
-- @treturn table `{ host, port, db, user, password, ipv6, where }`, where
-- `where` ("Redis at host:port/db") names the server in messages
-- @treturn[2] nil
-- @treturn[2] string what is wrong
M.parse_url = core.redis_url

-- ------------------------------------------------------------ the backends

local yieldable = {
  rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}

-- nginx's `ngx` when cosockets can be used here (main side, a phase that
-- can yield), else nil (plain Lua, a worker thread's VM, init phases).
local function cosockets()
  local ngx = rawget(G, "ngx")
  if type(ngx) ~= "table" or type(ngx.socket) ~= "table" or type(ngx.socket.tcp) ~= "function"
    or type(ngx.get_phase) ~= "function" then
    return nil
  end
  local ok, phase = pcall(ngx.get_phase)
  if ok and yieldable[phase] then return ngx end
  return nil
end

local resty_lib, own_session -- made on first use; resty_lib false: missing

local function load_resty()
  if resty_lib == nil then
    local ok, lib = pcall(require, "resty.redis")
    if not ok then ok, lib = pcall(require, "nginx.redis") end -- Debian's lua-nginx-redis
    resty_lib = ok and lib or false
  end
  return resty_lib
end

--- Whether Redis can be used from here, and through which client: the C
-- core's (hiredis) in plain Lua and in nginx's worker threads,
-- lua-resty-redis on nginx's main side.
-- @treturn string "hiredis" or "lua-resty-redis"
-- @treturn[2] nil
-- @treturn[2] string the message naming the missing library
function M.available()
  if cosockets() then
    if load_resty() then return "lua-resty-redis" end
    return nil, MISSING_RESTY
  end
  return "hiredis"
end

local now = core.monotonic

-- ngx.sleep where the phase can yield: the worker goes on meanwhile.
local function sleep(s)
  local ngx = cosockets()
  if ngx then return ngx.sleep(s) end
  core.sleep(s)
end

-- One command through lua-resty-redis on a kept connection of the URL's
-- pool, logged in (AUTH, SELECT) when new; `command`'s returns.
local function resty_command(ngx, link, timeout, cmd, ...)
  local cfg = link.cfg
  local red, err = resty_lib:new()
  if not red then return false, err, true end
  red:set_timeout(timeout * 1000)
  local ok
  ok, err = red:connect(cfg.ipv6 and "[" .. cfg.host .. "]" or cfg.host, cfg.port,
    { pool = "cachectl:" .. ngx.md5(link.url) })
  if ok and (red:get_reused_times() or 0) == 0 then
    if cfg.user then ok, err = red:auth(cfg.user, cfg.password)
    elseif cfg.password then ok, err = red:auth(cfg.password) end
    if not ok then err = "login refused: " .. tostring(err)
    elseif cfg.db ~= 0 then
      ok, err = red:select(cfg.db)
      if not ok then err = "SELECT " .. cfg.db .. " refused: " .. tostring(err) end
    end
  end
  local res
  if ok then res, err = red[cmd](red, ...) end
  if res == nil then -- no connection, or it broke: not kept
    red:close()
    return false, err, true
  end
  red:set_keepalive(60000, 32)
  if res == false then return false, err end -- Redis's error reply
  if res == ngx.null then res = nil end
  return true, res
end

-- One command (lower case) on the link's Redis, within half of what is left
-- of the link's budget (the call must still have time to go by itself when
-- Redis does not answer). Returns true, reply, or false, a message naming
-- the server (never the password), and whether Redis could not be used at
-- all (not just an error reply).
local function command(link, cmd, ...)
  local left, ngx = link["until"] - now(), cosockets()
  if left <= 0 then return false, link.cfg.where .. ": no time left for Redis", true end
  if not ngx then
    if not link.session then
      own_session = own_session or core.session()
      link.session = own_session
    end
    -- the core's messages name the server, the password scrubbed
    local ok, v, msg = link.session:redis(link.url, left / 2, link.ct, cmd, ...)
    if ok then return true, v end
    return false, msg, v ~= "error"
  end
  if not load_resty() then error(MISSING_RESTY, 0) end
  local ok, v, broken = resty_command(ngx, link, min(left / 2, link.ct), cmd, ...)
  if ok then return true, v end
  -- the password masked however short (it may be)
  return false, link.cfg.where .. ": " .. core.scrub(tostring(v), link.cfg.password, true), broken
end

-- ------------------------------------------------------------- coalescing

--- The error of a waiter that saw no outcome within its budget.
-- @tparam string label names the call (e.g. "omni.reset_cache")
-- @tparam number budget seconds
-- @treturn table a `timeout` error, attempts 0
function M.no_outcome(label, budget)
  return core.error{ kind = "timeout", attempts = 0,
    message = format("coalesced call %s: no outcome from the first caller within %g s", label, budget) }
end

--- A link to the Redis of `url` for one call: what the functions below take.
-- @tparam string url `redis://[[user]:password@]host[:port][/db]`
-- @tparam number budget seconds every Redis step of the call must fit in
-- @tparam[opt] table opts `{ connect_timeout = seconds (default 10), session = core session }`
-- (the session whose connection is used in plain Lua; a module-wide one by default)
-- @treturn table the link
-- @treturn[2] nil
-- @treturn[2] string what is wrong with the URL
function M.link(url, budget, opts)
  opts = opts or {}
  local cfg, err = core.redis_url(url)
  if not cfg then return nil, err end
  return { url = url, cfg = cfg, ct = opts.connect_timeout or core.defaults.connect_timeout,
    session = opts.session, ["until"] = now() + budget }
end

--- Claims a coalesced call for its first caller.
-- @tparam table link from `link`
-- @tparam string digest what makes calls identical, 64 hex digits
-- @tparam number window seconds
-- @treturn string|nil "mine" (run it, then `settle`), "theirs" (`await` it),
-- or nil when Redis could not be used
-- @treturn string the claim's token ("mine"), or the message (nil)
function M.claim(link, digest, window)
  local token = format("%s%.0f-%x-%s", PENDING, now() * 1e6, random(0, 0x3fffffff),
    tostring({}):match("0x(%x+)") or "")
  local ok, claimed = command(link, "set", KEY .. digest:lower(), token, "NX", "PX",
    format("%d", floor(window * 1000) + 1))
  if not ok then return nil, claimed end
  if claimed then return "mine", token end
  return "theirs"
end

--- Stores the first caller's outcome under its claim for the rest of the
-- window; an outcome for which nothing was sent (`attempts == 0`), or one
-- that cannot be stored, releases the claim instead, so that the waiters go
-- on by themselves at once.
-- @tparam table link
-- @tparam string digest
-- @tparam string token from `claim`
-- @tparam number window seconds
-- @param res the outcome
-- @param err
-- @tparam[opt] {string,...} secrets masked in what is stored
-- @treturn boolean whether the outcome was stored
function M.settle(link, digest, token, window, res, err, secrets)
  local key = KEY .. digest:lower()
  if res ~= nil or (type(err) == "table" and (err.attempts or 0) > 0) then
    -- JSON that gives back every value exactly, every form of every secret
    -- masked, however short; nil when it cannot be stored
    local text = core.outcome_encode(res, err, secrets)
    local grace = format("%d", min(GRACE_MS, floor(window * 1000) + 1))
    if text and command(link, "eval", STORE, 1, key, token, text, grace) then
      return true
    end
  end
  -- scripts refused (an ACL without EVAL, a full Redis): a plain DEL still frees the waiters
  if not command(link, "eval", RELEASE, 1, key, token) then command(link, "del", key) end
  return false
end

--- Waits for the outcome of a claim held by another caller.
-- @tparam table link
-- @tparam string digest
-- @treturn table|boolean|nil `{ res = ..., err = ... }` when it came; `false`
-- when the claim went without one, or the key holds what is neither a claim
-- nor an outcome (its caller goes on by itself); nil when
-- none came before the link's budget ran out, or Redis failed
function M.await(link, digest)
  local key, interval = KEY .. digest:lower(), POLL_FIRST
  while true do
    local ok, value = command(link, "get", key)
    if not ok then return nil end
    if value == nil then return false end
    -- anything but a claim is the outcome, or none (garbage: no claim to wait for)
    if value:sub(1, #PENDING) ~= PENDING then return core.outcome_decode(value) or false end
    local budget = link["until"] - now()
    if budget <= 0 then return nil end
    sleep(min(interval, budget))
    interval = min(interval * 1.5, POLL_MAX)
  end
end

local function check(ok, msg)
  if not ok then error("cachectl.fleet.coalesce: " .. msg, 3) end
end

local function seconds(v, lo)
  return type(v) == "number" and v >= lo and v < 1 / 0
end

--- Runs `run` once for every identical call that starts within `window`
-- seconds, across every process using this Redis: the first caller claims
-- `cachectl:co:<digest>` (SET NX PX), runs, and stores the outcome as JSON
-- under the claim for the rest of the window; the others wait for it, and go
-- on by themselves as soon as the claim is gone without one.
-- @tparam string url `redis://[[user]:password@]host[:port][/db]`
-- @tparam string digest what makes calls identical (`core.identity(...)`), 64 hex digits
-- @tparam number window seconds > 0 (the `coalesce` option)
-- @tparam number budget seconds for the whole: Redis, waiting, and run
-- @tparam function run `run(left) -> res, err`, `left` the seconds left of the budget
-- @tparam[opt] table opts `{ connect_timeout = seconds, label = "omni reset_cache",
-- secrets = { token }, session = core session }`: label names the call in the timeout
-- message; every secret is masked in the outcome stored in Redis
-- @treturn table|nil res: run's own, or the first caller's with `coalesced = true`
-- @treturn table|nil err: likewise; a waiter that saw no outcome within `budget` gets a
-- `timeout` error naming the call
-- @treturn boolean coalesced: true when the outcome came from another caller
-- @treturn[2] nil
-- @treturn[2] string "unreachable" (or "invalid" for a malformed URL); run was not called
-- @treturn[2] string the message: names Redis, never the password
-- @raise on a wrong argument, or what `run` raises (the winner then drops its claim)
function M.coalesce(url, digest, window, budget, run, opts)
  opts = opts or {}
  check(type(url) == "string", "url must be a string (redis://[[user]:password@]host[:port][/db])")
  check(opts.connect_timeout == nil or seconds(opts.connect_timeout, 0) and opts.connect_timeout > 0,
    "connect_timeout must be a number of seconds > 0")
  check(type(digest) == "string" and #digest == 64 and digest:find("^%x+$"),
    "digest must be a SHA-256 digest in hex (64 digits)")
  check(seconds(window, 0) and window > 0, "window must be a number of seconds > 0")
  check(seconds(budget, 0), "budget must be a number of seconds >= 0")
  check(type(run) == "function", "run must be a function")
  check(opts.secrets == nil or type(opts.secrets) == "table", "opts.secrets must be a list of strings")
  local link, perr = M.link(url, budget, opts)
  if not link then return nil, "invalid", perr end
  local mine, token = M.claim(link, digest, window)
  if not mine then return nil, "unreachable", token end
  if mine == "theirs" then
    local o = M.await(link, digest)
    if o then return o.res, o.err, true end
    if o == nil and link["until"] <= now() then
      return nil, M.no_outcome(opts.label or "(" .. digest .. ")", budget), false
    end
    -- Redis failed while waiting (nil): this caller goes on by itself; the
    -- claim went without an outcome (false): it may become the first
    if o == false then mine, token = M.claim(link, digest, window) end
    if mine ~= "mine" then
      local res, err = run(max(link["until"] - now(), 0))
      return res, err, false
    end
  end
  local ok, res, err = pcall(run, max(link["until"] - now(), 0))
  if not ok then
    M.settle(link, digest, token, window, nil, nil)
    error(res, 0)
  end
  M.settle(link, digest, token, window, res, err, opts.secrets)
  return res, err, false
end

return M
