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

local require, pcall, error, type, tostring, tonumber, pairs, setmetatable, rawget, select =
  require, pcall, error, type, tostring, tonumber, pairs, setmetatable, rawget, select
local format, char = string.format, string.char
local floor, min, random = math.floor, math.min, math.random
local tointeger = math.tointeger -- nil before Lua 5.3
local G = _G

local core = require "cachectl.core"

local M = {}

local URL_FORM = "redis://[[user]:password@]host[:port][/db]"
local MISSING_RESTY = "rate_limit.redis inside nginx needs lua-resty-redis (Debian package lua-nginx-redis)"
local DEFAULT_CONNECT_TIMEOUT = core.defaults.connect_timeout
local POLL_FIRST, POLL_MAX = 0.02, 0.05 -- seconds between looks for a coalesced outcome
local GRACE_MS = 1000 -- how long an outcome stays when its claim expired during the run
local PENDING = "pending:" -- a claim's value until the outcome replaces it

-- ------------------------------------------------------------------ scripts

-- Stores a coalesced call's outcome under its claim. KEYS[1]: the claim;
-- ARGV: the claim's value, the outcome (JSON), a TTL (ms) for when the claim
-- expired meanwhile. Keeps the claim's own expiry; never overwrites a newer
-- caller's claim.
local STORE = { src = [[
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl) return 1 end
end
if not v then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 2 end
return 0
]] }

-- Drops a claim that is still ours (the run raised).
local RELEASE = { src = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
]] }

-- ----------------------------------------------------------------- the URL

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function bad_url(what)
  return nil, format("invalid Redis URL (%s): %s", URL_FORM, what)
end

-- host[:port][/db], after the userinfo.
local function parse_hostpart(cfg, rest)
  local host, tail = rest:match("^%[([%x:.]+)%](.*)$")
  if host then
    cfg.ipv6 = true
  else
    host, tail = rest:match("^([%w.-]+)(.*)$")
  end
  if not host then return bad_url("no host name or address") end
  cfg.host = host
  local port = tail:match("^:(%d+)")
  if port then
    cfg.port = tonumber(port)
    if cfg.port < 1 or cfg.port > 65535 then return bad_url("the port must be 1 to 65535") end
    tail = tail:sub(#port + 2)
  end
  local db = tail:match("^/(%d*)$")
  if tail ~= "" and not db then
    return bad_url("after the host only :port and /db may follow")
  end
  if db and db ~= "" then cfg.db = tonumber(db) end
  return cfg
end

--- Reads a Redis URL. Nothing from the URL is quoted in the message.
-- @tparam string url `redis://[[user]:password@]host[:port][/db]`
-- (user and password percent-decoded; port 6379 and db 0 by default)
-- @treturn table `{ host, port, db, user, password, ipv6, where }`, where
-- `where` ("Redis at host:port/db") names the server in messages
-- @treturn[2] nil
-- @treturn[2] string what is wrong
function M.parse_url(url)
  if type(url) ~= "string" then return bad_url("not a string") end
  local rest = url:match("^redis://(.*)$")
  if not rest then return bad_url("it must start with redis://") end
  local cfg = { port = 6379, db = 0 }
  local at = rest:find("@[^@]*$")
  if at then
    local user, password = rest:sub(1, at - 1):match("^([^:]*):(.*)$")
    if not user then return bad_url("the part before '@' must be [user]:password") end
    if password == "" then return bad_url("the password before '@' is empty") end
    cfg.user = user ~= "" and unescape(user) or nil
    cfg.password = unescape(password)
    rest = rest:sub(at + 1)
  end
  local ok, err = parse_hostpart(cfg, rest)
  if not ok then return nil, err end
  local host = cfg.ipv6 and "[" .. cfg.host .. "]" or cfg.host
  cfg.where = format("Redis at %s:%d%s", host, cfg.port, cfg.db ~= 0 and "/" .. cfg.db or "")
  return cfg
end

local parsed, n_parsed = {}, 0 -- url -> cfg, for the URLs this process uses

-- M.parse_url, remembered (a turn should not parse its URL every time).
local function config(url)
  local cfg = parsed[url]
  if cfg then return cfg end
  local err
  cfg, err = M.parse_url(url)
  if not cfg then return nil, err end
  if n_parsed >= 64 then parsed, n_parsed = {}, 0 end
  parsed[url], n_parsed = cfg, n_parsed + 1
  return cfg
end

-- `s` with every secret of `secrets` masked by the core's one scrubber (as
-- given, percent-encoded, JSON-escaped, any 8 of its characters in a row).
-- The core leaves secrets under 4 bytes alone (they would match ordinary
-- words); a Redis password that short is still masked as given.
local function scrub_string(s, secrets)
  for _, secret in pairs(secrets) do
    if #secret >= 4 then
      s = core.scrub(s, secret)
    elseif secret ~= "" then
      local i, j = s:find(secret, 1, true)
      while i do
        s = s:sub(1, i - 1) .. "***" .. s:sub(j + 1)
        i, j = s:find(secret, i + 3, true)
      end
    end
  end
  return s
end

-- A message from a library or a server, without the URL's password.
local function redact(s, cfg)
  s = tostring(s)
  if not cfg.password then return s end
  return scrub_string(s, { cfg.password })
end

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

local resty_lib, cjson -- loaded on first use; false: missing

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

local function now()
  local ngx = cosockets()
  if ngx then
    ngx.update_time()
    return ngx.now()
  end
  return core.monotonic()
end

local function sleep(s)
  local ngx = cosockets()
  if ngx then return ngx.sleep(s) end
  core.sleep(s)
end

-- A connection, whichever the client: conn:call(cmd, ...) -> true, reply |
-- false, message, broken (broken: the connection is unusable, not just an
-- error reply from Redis). Each call must be answered by conn.until.

-- Plain Lua and worker threads: the C core's connection of a session.
local Core = {}
Core.__index = Core

local own_session -- this module's session, when the caller gives none

-- Redis gets at most half of what is left, so that the call still has time
-- to go by itself when Redis does not answer.
function Core:call(cmd, ...)
  local left = self["until"] - now()
  if left <= 0 then return false, self.cfg.where .. ": no time left for Redis", true end
  local ok, v, msg = self.session:redis(self.url, left / 2, self.ct, cmd, ...)
  if ok then return true, v end
  return false, msg, v ~= "error"
end

function Core.release() end -- the session keeps it

local Resty = {}
Resty.__index = Resty

local function resty_connect(ngx, cfg, timeout, url)
  local red, err = resty_lib:new()
  if not red then return nil, err end
  red:set_timeout(timeout * 1000)
  local host = cfg.ipv6 and "[" .. cfg.host .. "]" or cfg.host
  local ok, cerr = red:connect(host, cfg.port, { pool = "cachectl:" .. ngx.md5(url) })
  if not ok then return nil, cerr end
  return setmetatable({ red = red, ngx = ngx, reused = (red:get_reused_times() or 0) > 0 }, Resty)
end

function Resty:call(cmd, ...)
  local red = self.red
  local left = self["until"] - now()
  if left <= 0 then return false, "no time left for Redis", true end
  red:set_timeout(min(left / 2, self.ct) * 1000)
  local res, err = red[cmd:lower()](red, ...)
  if res == nil then return false, err, true end
  if res == false then return false, err, false end
  if res == self.ngx.null then res = nil end
  return true, res
end

function Resty:close() self.red:close() end
function Resty:release() self.red:set_keepalive(60000, 32) end

-- ------------------------------------------------------------- connections

-- AUTH and SELECT on a new cosocket connection; true, or nil, message.
local function login(conn, cfg)
  if cfg.password then
    local ok, err
    if cfg.user then
      ok, err = conn:call("auth", cfg.user, cfg.password)
    else
      ok, err = conn:call("auth", cfg.password)
    end
    if not ok then return nil, "login refused: " .. tostring(err) end
  end
  if cfg.db ~= 0 then
    local ok, err = conn:call("select", cfg.db)
    if not ok then return nil, "SELECT " .. cfg.db .. " refused: " .. tostring(err) end
  end
  return true
end

-- A connection to `link.url` that must answer by link.until.
local function open(link)
  local ngx = cosockets()
  if not ngx then
    if not link.session then
      own_session = own_session or core.session()
      link.session = own_session
    end
    return setmetatable({ session = link.session, url = link.url, cfg = link.cfg, ct = link.ct,
      ["until"] = link["until"] }, Core)
  end
  if not load_resty() then error(MISSING_RESTY, 0) end
  local conn, err = resty_connect(ngx, link.cfg, min(link.ct, math.max(link["until"] - now(), 0.001)), link.url)
  if not conn then return nil, err end
  conn.ct, conn["until"] = link.ct, link["until"]
  if not conn.reused then
    local ok, lerr = login(conn, link.cfg)
    if not ok then
      conn:close()
      return nil, lerr
    end
  end
  return conn
end

-- Runs fn(conn), which returns true, value or false, message, broken.
-- Returns true, value or false, message (naming the server, never the
-- password), unreachable (true: Redis could not be used at all).
local function with_redis(link, fn)
  local conn, err = open(link)
  local cfg = link.cfg
  if not conn then return false, cfg.where .. ": " .. redact(err, cfg), true end
  local ok, value, broken = fn(conn)
  if ok then
    conn:release()
    return true, value
  end
  if broken and conn.close then conn:close() else conn:release() end
  local msg = redact(value, cfg)
  if not msg:find(cfg.where, 1, true) then msg = cfg.where .. ": " .. msg end
  return false, msg, broken
end

-- EVALSHA of a script, loading it (again) when Redis does not know it.
-- Returns true, reply or false, message, broken.
local function eval(conn, script, ...)
  if script.sha then
    local ok, res, broken = conn:call("evalsha", script.sha, ...)
    if ok or broken or not tostring(res):find("NOSCRIPT", 1, true) then return ok, res, broken end
  end
  local ok, sha, broken = conn:call("script", "LOAD", script.src)
  if not ok then return false, sha, broken end
  script.sha = sha
  return conn:call("evalsha", sha, ...)
end

local function redis_call(cmd, ...)
  local args = { n = select("#", ...), ... }
  return function(conn)
    return conn:call(cmd, (table.unpack or G.unpack)(args, 1, args.n))
  end
end

-- ------------------------------------------------------------------ checks

local function check(ok, fname, msg)
  if not ok then error("cachectl.fleet." .. fname .. ": " .. msg, 3) end
end

local function is_digest(d)
  return type(d) == "string" and #d == 64 and d:find("^%x+$") ~= nil
end

local function is_number(v, lo, allow_nil)
  if v == nil then return allow_nil end
  return type(v) == "number" and v >= lo and v < 1 / 0
end

-- --------------------------------------------------------------- outcomes

local function json()
  if cjson == nil then
    local lib = require "cjson.safe"
    cjson = lib.new and lib.new() or lib
  end
  return cjson
end

-- Integral numbers back to integers (JSON decoding gives floats in 5.3+).
local function integers(v)
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = integers(x) end
  elseif type(v) == "number" and tointeger then
    return tointeger(v) or v
  end
  return v
end

-- A copy of `v` with every secret form scrubbed from its strings (keys too).
local function scrubbed(v, secrets)
  if type(v) == "string" then return scrub_string(v, secrets) end
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[scrubbed(k, secrets)] = scrubbed(x, secrets) end
  return t
end

-- The outcome as JSON, with the caller's secrets scrubbed out.
local function encode_outcome(res, err, secrets)
  if secrets then res, err = scrubbed(res, secrets), scrubbed(err, secrets) end
  return json().encode({ res = res, err = err })
end

-- res, err from a stored outcome, each marked coalesced = true; nil when
-- the text is not one.
local function decode_outcome(text)
  local t = json().decode(text)
  if type(t) ~= "table" then return nil end
  local res, err = integers(t.res), integers(t.err)
  if type(res) == "table" then res.coalesced = true end
  if type(err) == "table" then
    err.coalesced = true
    setmetatable(err, core.error_mt)     -- as stored: the first caller's error
  end
  return { res = res, err = err }
end

-- ------------------------------------------------------------- coalescing

local function new_token()
  local addr = tostring({}):match("0x(%x+)") or ""
  return format("%s%.0f-%x-%s", PENDING, now() * 1e6, random(0, 0x3fffffff), addr)
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
  local cfg, err = config(url)
  if not cfg then return nil, err end
  return { url = url, cfg = cfg, ct = opts.connect_timeout or DEFAULT_CONNECT_TIMEOUT,
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
  local key, token = "cachectl:co:" .. digest:lower(), new_token()
  local ttl = format("%d", floor(window * 1000) + 1)
  local ok, claimed = with_redis(link, redis_call("set", key, token, "NX", "PX", ttl))
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
function M.settle(link, digest, token, window, res, err, secrets)
  local key = "cachectl:co:" .. digest:lower()
  local sent = res ~= nil or (type(err) == "table" and (err.attempts or 0) > 0)
  local text = sent and encode_outcome(res, err, secrets)
  if text and with_redis(link, function(conn)
    return eval(conn, STORE, 1, key, token, text, format("%d", min(GRACE_MS, floor(window * 1000) + 1)))
  end) then
    return true
  end
  if with_redis(link, function(conn) return eval(conn, RELEASE, 1, key, token) end) then return false end
  -- scripts refused (an ACL without EVAL, a full Redis): a plain DEL still frees the waiters
  with_redis(link, redis_call("del", key))
  return false
end

--- Waits for the outcomes of claims held by others.
-- @tparam table link
-- @tparam {string,...} digests
-- @treturn table digest -> { res = ..., err = ... } for the outcomes that came, or
-- `false` for a claim that went without one (its caller goes on by itself);
-- missing: none before the link's budget ran out, or Redis failed
function M.await(link, digests)
  local found, left, interval = {}, #digests, POLL_FIRST
  while left > 0 do
    for _, d in pairs(digests) do
      if found[d] == nil then
        local ok, value = with_redis(link, redis_call("get", "cachectl:co:" .. d:lower()))
        if not ok then return found end
        if value == nil then
          found[d], left = false, left - 1
        elseif type(value) == "string" and value:sub(1, 1) == "{" then
          found[d], left = decode_outcome(value) or false, left - 1
        end
      end
    end
    local budget = link["until"] - now()
    if left == 0 or budget <= 0 then break end
    sleep(min(interval, budget))
    interval = min(interval * 1.5, POLL_MAX)
  end
  return found
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
  check(type(url) == "string", "coalesce", "url must be a string (" .. URL_FORM .. ")")
  check(is_number(opts.connect_timeout, 0, true) and opts.connect_timeout ~= 0, "coalesce",
    "connect_timeout must be a number of seconds > 0")
  check(is_digest(digest), "coalesce", "digest must be a SHA-256 digest in hex (64 digits)")
  check(is_number(window, 0) and window > 0, "coalesce", "window must be a number of seconds > 0")
  check(is_number(budget, 0), "coalesce", "budget must be a number of seconds >= 0")
  check(type(run) == "function", "coalesce", "run must be a function")
  check(opts.secrets == nil or type(opts.secrets) == "table", "coalesce", "opts.secrets must be a list of strings")
  local link, perr = M.link(url, budget, opts)
  if not link then return nil, "invalid", perr end
  local mine, token = M.claim(link, digest, window)
  if not mine then return nil, "unreachable", token end
  if mine == "theirs" then
    local o = M.await(link, { digest })[digest]
    if o then return o.res, o.err, true end
    if o == nil then
      local left = link["until"] - now()
      if left > 0 then
        -- Redis failed while waiting: this caller goes on by itself
        local res, err = run(left)
        return res, err, false
      end
      return nil, core.error({ kind = "timeout", attempts = 0,
        message = format("coalesced call %s: no outcome from the first caller within %g s",
          opts.label or "(" .. digest .. ")", budget) }), false
    end
    mine, token = M.claim(link, digest, window) -- the claim went without an outcome
    if mine ~= "mine" then
      local res, err = run(math.max(link["until"] - now(), 0))
      return res, err, false
    end
  end
  local ok, res, err = pcall(run, math.max(link["until"] - now(), 0))
  if not ok then
    M.settle(link, digest, token, window, nil, nil)
    error(res, 0)
  end
  M.settle(link, digest, token, window, res, err, opts.secrets)
  return res, err, false
end

return M
