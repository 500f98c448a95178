--- cachectl.fleet: one vendor limit, and one outcome per identical call,
-- shared by every process and machine that uses the same Redis.
--
-- * `take` is one turn of the sliding window (at most n requests start in any
--   `per` seconds), run as one server-side script: atomic, and timed by the
--   Redis server's clock, so the machines' clocks do not matter.
-- * `coalesce` lets the first of several identical calls run and hands its
--   outcome to the others (a claim with `SET NX PX`, the outcome stored as
--   JSON under the claim).
--
-- Client libraries: Debian's lua-redis (redis-lua 2.x over LuaSocket,
-- blocking) in plain Lua and in nginx's worker threads; lua-resty-redis
-- (cosockets, non-blocking) on nginx's main side where the phase can yield.
-- Nothing here ever sends a credential to Redis: callers pass SHA-256 digests.
-- A password in the Redis URL is a secret: it appears in no message.
--
-- @module cachectl.fleet

local require, pcall, error, type, tostring, tonumber, pairs, setmetatable, rawget, loadfile, package =
  require, pcall, error, type, tostring, tonumber, pairs, setmetatable, rawget, loadfile, package
local format, char = string.format, string.char
local floor, min, random = math.floor, math.min, math.random
local tointeger = math.tointeger -- nil before Lua 5.3
local G = _G

local M = {}

local URL_FORM = "redis://[[user]:password@]host[:port][/db]"
local MISSING_PLAIN = "rate_limit.redis needs the Lua library redis-lua (Debian package lua-redis)"
local MISSING_RESTY = "rate_limit.redis inside nginx needs lua-resty-redis (Debian package lua-nginx-redis)"
local DEFAULT_CONNECT_TIMEOUT = 10
local POLL_FIRST, POLL_MAX = 0.02, 0.05 -- seconds between looks for a coalesced outcome
local GRACE_MS = 1000 -- how long an outcome stays when its claim expired during the run
local PENDING = "pending:" -- a claim's value until the outcome replaces it
local MAX_BUDGET = 1e9 -- seconds; "no budget" is this

-- ------------------------------------------------------------------ scripts

-- One turn of the sliding window (INTERFACES.md §4). KEYS[1]: the key;
-- ARGV: n, per (µs), budget (µs). The list holds the last n start times
-- (µs, server clock), newest first; starts never decrease, so the n-th is the
-- oldest. Returns { 1, wait, now, start } (reserved) or { 0, wait, now }.
local TURN = { src = [[
if redis.replicate_commands then redis.replicate_commands() end
local key, n = KEYS[1], tonumber(ARGV[1])
local per, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local start = now
local last = redis.call('LINDEX', key, 0)
if last then start = math.max(start, tonumber(last)) end
local nth = redis.call('LINDEX', key, n - 1)
if nth then start = math.max(start, tonumber(nth) + per) end
local wait = start - now
if wait > budget then return { 0, wait, now } end
redis.call('LPUSH', key, string.format('%.0f', start))
redis.call('LTRIM', key, 0, n - 1)
redis.call('PEXPIRE', key, math.ceil((wait + per) / 1000) + 1)
return { 1, wait, now, start }
]] }

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
      s = require("cachectl.core").scrub(s, secret)
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

local redis_lib, socket_lib, resty_lib, cjson -- loaded on first use; false: missing

-- Debian's lua-redis installs redis.lua for Lua 5.1-5.3 only; the same
-- file runs unchanged under 5.4, so it is loaded from there when `require`
-- does not find one of the running version's own (nor a preload).
local DEBIAN_REDIS = "/usr/share/lua/5.3/?.lua;/usr/share/lua/5.1/?.lua"

local function require_redis()
  local ok, lib = pcall(require, "redis")
  local search = package.searchpath
  if ok or not search or package.preload.redis then return ok, lib end
  local file = search("redis", DEBIAN_REDIS)
  local chunk = file and loadfile(file)
  if not chunk then return ok, lib end
  package.preload.redis = chunk
  return pcall(require, "redis")
end

local function load_plain()
  if redis_lib == nil then
    local ok_r, lib = require_redis()
    local ok_s, sock = pcall(require, "socket")
    redis_lib = ok_r and ok_s and type(lib) == "table" and type(lib.connect) == "function" and lib or false
    socket_lib = ok_s and sock or false
  end
  return redis_lib
end

local function load_resty()
  if resty_lib == nil then
    local ok, lib = pcall(require, "resty.redis")
    if not ok then ok, lib = pcall(require, "nginx.redis") end -- Debian's lua-nginx-redis
    resty_lib = ok and lib or false
  end
  return resty_lib
end

--- Whether Redis can be used from here, and through which library: the
-- one this context needs loads (lua-redis in plain Lua and in nginx's worker
-- threads, lua-resty-redis on nginx's main side).
-- @treturn string "redis-lua" or "lua-resty-redis"
-- @treturn[2] nil
-- @treturn[2] string the message naming the missing library
function M.available()
  if cosockets() then
    if load_resty() then return "lua-resty-redis" end
    return nil, MISSING_RESTY
  end
  if load_plain() then return "redis-lua" end
  return nil, MISSING_PLAIN
end

local function need_library(level)
  local ok, msg = M.available()
  if not ok then error(msg, level + 1) end
end

local function now()
  local ngx = cosockets()
  if ngx then
    ngx.update_time()
    return ngx.now()
  end
  load_plain()
  return socket_lib.gettime()
end

local function sleep(s)
  local ngx = cosockets()
  if ngx then return ngx.sleep(s) end
  socket_lib.sleep(s)
end

-- A connection, whichever the library: conn:call(cmd, ...) -> true, reply |
-- false, message, broken (broken: the connection is unusable, not just an
-- error reply from Redis).
local Plain = {}
Plain.__index = Plain

local function plain_connect(cfg, timeout)
  local sock = socket_lib.tcp()
  sock:settimeout(timeout)
  local ok, err = sock:connect(cfg.host, cfg.port)
  if not ok then
    sock:close()
    return nil, err
  end
  sock:setoption("tcp-nodelay", true)
  local okc, client = pcall(redis_lib.connect, { socket = sock })
  if not okc then
    sock:close()
    return nil, client
  end
  return setmetatable({ client = client, sock = sock }, Plain)
end

function Plain:call(cmd, ...)
  local ok, res = pcall(self.client[cmd], self.client, ...)
  if ok then return true, res end
  res = tostring(res)
  local reply = res:match("redis error: (.*)$")
  if reply then return false, reply, false end
  return false, (res:gsub("^.-%.lua:%d+: ", "")), true
end

function Plain:settimeout(t) self.sock:settimeout(t) end
function Plain:close() self.sock:close() end
function Plain.release() end -- stays open for the next call of this process

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
  local res, err = red[cmd](red, ...)
  if res == nil then return false, err, true end
  if res == false then return false, err, false end
  if res == self.ngx.null then res = nil end
  return true, res
end

function Resty:settimeout(t) self.red:set_timeout(t * 1000) end
function Resty:close() self.red:close() end
function Resty:release() self.red:set_keepalive(60000, 32) end

-- ------------------------------------------------------------- connections

local conns = {} -- plain Lua: one connection per URL per process

-- AUTH and SELECT on a new connection; true, or nil, message.
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

-- A logged-in connection to `url`: reused when this process has one.
local function open(url, cfg, timeout)
  local ngx = cosockets()
  local conn, err
  if ngx then
    conn, err = resty_connect(ngx, cfg, timeout, url)
  else
    conn = conns[url]
    if conn then
      conn:settimeout(timeout)
      conn.reused = true
      return conn
    end
    conn, err = plain_connect(cfg, timeout)
  end
  if not conn then return nil, err end
  if not conn.reused then
    local ok, lerr = login(conn, cfg)
    if not ok then
      conn:close()
      return nil, lerr
    end
  end
  if not ngx then conns[url] = conn end
  return conn
end

-- Runs fn(conn), which returns true, value or false, message, broken. A
-- broken connection is closed and forgotten; when it was a reused one (the
-- server may have restarted since), fn runs once more on a fresh one.
-- Returns true, value or false, message (naming the server, never the password).
local function with_redis(url, cfg, timeout, fn)
  local msg
  for _ = 1, 2 do
    local conn, err = open(url, cfg, timeout)
    if not conn then return false, cfg.where .. ": " .. redact(err, cfg) end
    local ok, value, broken = fn(conn)
    if ok then
      conn:release()
      return true, value
    end
    msg = cfg.where .. ": " .. redact(value, cfg)
    if not broken then
      conn:release()
      return false, msg
    end
    conn:close()
    if conns[url] == conn then conns[url] = nil end
    if not conn.reused then break end
  end
  return false, msg
end

-- EVALSHA of a script, loading it (again) when Redis does not know it.
-- Returns true, reply or false, message, broken.
local function eval(conn, script, ...)
  if script.sha then
    local ok, res, broken = conn:call("evalsha", script.sha, ...)
    if ok or broken or not tostring(res):find("^NOSCRIPT") then return ok, res, broken end
  end
  local ok, sha, broken = conn:call("script", "LOAD", script.src)
  if not ok then return false, sha, broken end
  script.sha = sha
  return conn:call("evalsha", sha, ...)
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

local function check_common(fname, url, connect_timeout)
  check(type(url) == "string", fname, "url must be a string (" .. URL_FORM .. ")")
  check(is_number(connect_timeout, 0, true) and connect_timeout ~= 0, fname,
    "connect_timeout must be a number of seconds > 0")
end

local function key_number(x)
  return format("%.15g", x)
end

local function us(seconds)
  return format("%.0f", floor(seconds * 1e6 + 0.5))
end

-- ---------------------------------------------------------------- the turn

--- One turn of the sliding window kept in Redis (INTERFACES.md §4): at most
-- `requests` starts in any window of `per` seconds, per key.
-- The key is `cachectl:rl:<service>:<digest>:<requests>:<per>`; it expires by
-- itself once its last start is `per` seconds old.
-- @tparam string url `redis://[[user]:password@]host[:port][/db]`
-- @tparam table key_parts `{ service = "omni", digest = <64 hex digits> }`:
-- the digest of the credential (`core.sha256(token)`), never the credential
-- @tparam integer requests n, >= 1
-- @tparam number per the window, seconds > 0
-- @tparam[opt] number budget seconds the caller can wait for its turn (default: no limit)
-- @tparam[opt] number connect_timeout seconds (default 10), also for each reply
-- @treturn number wait: seconds >= 0; the caller's start is reserved at now + wait
-- @treturn integer the reserved start on the Redis server's clock, in microseconds
-- @treturn[2] nil
-- @treturn[2] string "late": no turn within the budget, nothing reserved
-- @treturn[2] number the wait that turn would have needed, seconds
-- @treturn[3] nil
-- @treturn[3] string "unreachable" (or "invalid" for a malformed URL)
-- @treturn[3] string the message: names Redis, never the password
-- @raise on a wrong argument, or when the Redis library is missing
-- (`rate_limit.redis needs the Lua library redis-lua (Debian package lua-redis)`)
function M.take(url, key_parts, requests, per, budget, connect_timeout)
  check_common("take", url, connect_timeout)
  check(type(key_parts) == "table", "take", "key_parts must be a table { service = ..., digest = ... }")
  check(type(key_parts.service) == "string" and key_parts.service:find("^[%w_-]+$"), "take",
    "key_parts.service must be a name of letters, digits, '_' and '-'")
  check(is_digest(key_parts.digest), "take",
    "key_parts.digest must be a SHA-256 digest in hex (64 digits), never the credential itself")
  check(is_number(requests, 1) and requests == floor(requests), "take", "requests must be an integer >= 1")
  check(is_number(per, 0) and per > 0, "take", "per must be a number of seconds > 0")
  check(is_number(budget, 0, true), "take", "budget must be a number of seconds >= 0")
  local cfg, perr = config(url)
  if not cfg then return nil, "invalid", perr end
  need_library(2)
  local key = format("cachectl:rl:%s:%s:%s:%s", key_parts.service, key_parts.digest:lower(),
    key_number(requests), key_number(per))
  local per_s = per * 1e6 < 1 and 1e-6 or per
  local ok, reply = with_redis(url, cfg, connect_timeout or DEFAULT_CONNECT_TIMEOUT, function(conn)
    return eval(conn, TURN, 1, key, format("%.0f", requests), us(per_s), us(min(budget or MAX_BUDGET, MAX_BUDGET)))
  end)
  if not ok then return nil, "unreachable", reply end
  if type(reply) ~= "table" then return nil, "unreachable", cfg.where .. ": unexpected reply to the turn" end
  local wait = tonumber(reply[2]) / 1e6
  if tonumber(reply[1]) == 1 then return wait, tonumber(reply[4]) end
  return nil, "late", wait
end

-- --------------------------------------------------------------- outcomes

local function json()
  if cjson == nil then
    local lib = require "cjson.safe"
    cjson = lib.new and lib.new() or lib
  end
  return cjson
end

local error_mt

-- The core's error metatable (its __tostring), taken from an error the core
-- returns without sending anything; a plain one when the core is absent.
local function core_error_mt()
  if error_mt == nil then
    local ok, err = pcall(function()
      local _, e = require("cachectl.core").modelslab.clear_cache{ key = "" }
      return e
    end)
    error_mt = ok and type(err) == "table" and G.getmetatable(err) or {
      __tostring = function(e) return "cachectl: " .. tostring(e.kind) .. ": " .. tostring(e.message) end,
    }
  end
  return error_mt
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

-- res, err, true from a stored outcome, each marked coalesced = true.
local function decode_outcome(text, cfg)
  local t = json().decode(text)
  if type(t) ~= "table" then return nil, "unreachable", cfg.where .. ": unreadable coalesced outcome" end
  local res, err = integers(t.res), integers(t.err)
  if type(res) == "table" then res.coalesced = true end
  if type(err) == "table" then
    err.coalesced = true
    setmetatable(err, core_error_mt())
  end
  return res, err, true
end

-- ------------------------------------------------------------- coalescing

local function new_token()
  local addr = tostring({}):match("0x(%x+)") or ""
  return format("%s%.0f-%x-%s", PENDING, now() * 1e6, random(0, 0x3fffffff), addr)
end

local function redis_call(cmd, ...)
  local args = { n = select("#", ...), ... }
  return function(conn)
    return conn:call(cmd, (table.unpack or G.unpack)(args, 1, args.n))
  end
end

-- The winner: runs, stores the outcome under its claim, returns run's results.
local function run_and_store(url, cfg, ct, key, token, window, run, secrets)
  local ok, res, err = pcall(run)
  if not ok then
    with_redis(url, cfg, ct, function(conn) return eval(conn, RELEASE, 1, key, token) end)
    error(res, 0)
  end
  local text = encode_outcome(res, err, secrets)
  if text then
    with_redis(url, cfg, ct, function(conn)
      return eval(conn, STORE, 1, key, token, text, format("%d", min(GRACE_MS, floor(window * 1000) + 1)))
    end)
  else
    with_redis(url, cfg, ct, function(conn) return eval(conn, RELEASE, 1, key, token) end)
  end
  return res, err, false
end

-- A waiter: looks for the outcome until the budget is spent.
local function wait_outcome(url, cfg, ct, key, budget, label)
  local deadline, interval = now() + budget, POLL_FIRST
  while true do
    local ok, value = with_redis(url, cfg, ct, redis_call("get", key))
    if not ok then return nil, "unreachable", value end
    if type(value) == "string" and value:sub(1, 1) == "{" then return decode_outcome(value, cfg) end
    local left = deadline - now()
    if left <= 0 then break end
    sleep(min(interval, left))
    interval = min(interval * 1.5, POLL_MAX)
  end
  return nil, setmetatable({ kind = "timeout", attempts = 0,
    message = format("coalesced call %s: no outcome from the first caller within %g s", label, budget),
  }, core_error_mt())
end

--- Runs `run` once for every identical call that starts within `window`
-- seconds, across every process using this Redis: the first caller claims
-- `cachectl:co:<digest>` (SET NX PX), runs, and stores the outcome as JSON
-- under the claim for the rest of the window; the others wait for it.
-- @tparam string url `redis://[[user]:password@]host[:port][/db]`
-- @tparam string digest what makes calls identical (`core.identity(...)`), 64 hex digits
-- @tparam number window seconds > 0 (the `coalesce` option)
-- @tparam number budget seconds a waiter waits for the outcome (its own timeout)
-- @tparam function run `run() -> res, err` (err a string or an error table:
-- kind, message, status, code, retry_after, attempts, field)
-- @tparam[opt] table opts `{ connect_timeout = seconds, label = "omni reset_cache",
-- secrets = { token } }`: label names the call in the timeout message; every
-- secret (as given, percent-encoded or JSON-escaped) is replaced by `***` in
-- the outcome stored in Redis (a service may echo a credential); the
-- caller's own results are returned untouched
-- @treturn table|nil res: run's own, or the first caller's with `coalesced = true`
-- @treturn table|string|nil err: likewise (a shared error table gets `coalesced = true`);
-- a waiter that saw no outcome within `budget` gets a `timeout` error naming the call
-- @treturn boolean coalesced: true when the outcome came from another caller
-- @treturn[2] nil
-- @treturn[2] string "unreachable" (or "invalid" for a malformed URL); run was not called
-- @treturn[2] string the message: names Redis, never the password
-- @raise on a wrong argument, a missing Redis library, or what `run` raises
-- (the winner then drops its claim)
function M.coalesce(url, digest, window, budget, run, opts)
  opts = opts or {}
  check_common("coalesce", url, opts.connect_timeout)
  check(is_digest(digest), "coalesce", "digest must be a SHA-256 digest in hex (64 digits)")
  check(is_number(window, 0) and window > 0, "coalesce", "window must be a number of seconds > 0")
  check(is_number(budget, 0), "coalesce", "budget must be a number of seconds >= 0")
  check(type(run) == "function", "coalesce", "run must be a function")
  check(opts.secrets == nil or type(opts.secrets) == "table", "coalesce", "opts.secrets must be a list of strings")
  local cfg, perr = config(url)
  if not cfg then return nil, "invalid", perr end
  need_library(2)
  local key, token = "cachectl:co:" .. digest:lower(), new_token()
  local ct = opts.connect_timeout or DEFAULT_CONNECT_TIMEOUT
  local ok, claimed = with_redis(url, cfg, ct,
    redis_call("set", key, token, "NX", "PX", format("%d", floor(window * 1000) + 1)))
  if not ok then return nil, "unreachable", claimed end
  if claimed then return run_and_store(url, cfg, ct, key, token, window, run, opts.secrets) end
  return wait_outcome(url, cfg, ct, key, budget, opts.label or "(" .. key .. ")")
end

return M
