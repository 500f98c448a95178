-- An adversary's pass over the fleet's promises (contract v3: "Rate limits",
-- "Fleet", "Events", "Secrets", "Fine points"; docs/fleet.md; the rate-limit
-- parts of docs/nginx.md), against real redis-servers started here (free
-- loopback ports, no persistence, stopped by their pids), a fake Redis (a
-- LuaSocket child that answers the turn script with what a test says:
-- garbage, half replies, a huge array header, a slow relay of a real Redis,
-- an AUTH error echoing the password) and the mock vendor.
--
-- Each test states the contract line it checks. Tests under "defect:" failed
-- when written (each is one reported defect, reproduction included); tests
-- under "held:" passed and guard what held. Nothing here edits the library.
-- Tags: #redis (a redis-server), #slow (real time), #nginx, #fork.
local io, os, table = io, os, table
local assert, ipairs, pcall, require, tonumber, tostring =
  assert, ipairs, pcall, require, tonumber, tostring

local helpers = require "support.helpers"
local lua_child = require "support.lua_child"
local nginx_server = require "support.nginx_server"
local socket = require "socket"
local cjson = require "cjson"
local mock = require "cachectl.mock"
local core = require "cachectl.core"
local cachectl = require "cachectl"
local fleet = require "cachectl.fleet"

local UUID = helpers.UUID
local uid = helpers.uid
local sh_quote = helpers.sh_quote
local LUA = lua_child.interpreter()
local SOURCE = debug.getinfo(1, "S").source
local SPEC_DIR = lua_child.spec_dir(SOURCE)
local ROOT = nginx_server.root_dir(SOURCE)

-- Arrivals at the mock are stamped a little after the client started them.
local SLACK = 0.05

local function now() return core.monotonic and core.monotonic() or socket.gettime() end

local function tmpdir()
  local p = assert(io.popen("mktemp -d /tmp/cachectl-adv.XXXXXX"))
  local dir = p:read("*l")
  p:close()
  return dir
end

local function alive(pid)
  local stat = helpers.read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end

local function wait_port(port)
  for _ = 1, 250 do
    local c = socket.tcp()
    c:settimeout(0.2)
    if c:connect("127.0.0.1", port) then
      c:send("PING\r\n")
      local line = c:receive("*l")
      c:close()
      if line then return true end
    else
      c:close()
    end
    socket.sleep(0.02)
  end
  return false
end

-- ---- a real redis-server, with extra arguments --------------------------------

local Redis = {}
Redis.__index = Redis

local function launch(self)
  local cmd = ("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --dir %s %s"
    .. " >/dev/null 2>&1 & echo $!"):format(self.port, sh_quote(self.dir), self.extra or "")
  local p = assert(io.popen(cmd))
  self.pid = tonumber(p:read("*l"))
  p:close()
  assert(wait_port(self.port), "redis-server did not start")
end

local function start_redis(extra, port)
  local self = setmetatable({ port = port or helpers.free_port(), dir = tmpdir(), extra = extra }, Redis)
  self.url = "redis://127.0.0.1:" .. self.port
  launch(self)
  return self
end

function Redis:cli(args)
  local p = assert(io.popen("redis-cli -p " .. self.port .. " " .. args .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

function Redis:signal(sig) helpers.succeeds("kill -" .. sig .. " " .. self.pid) end

function Redis:stop(keep)
  if self.pid and alive(self.pid) then
    helpers.succeeds("kill -CONT " .. self.pid .. " 2>/dev/null; kill " .. self.pid)
    for _ = 1, 250 do
      if not alive(self.pid) then break end
      socket.sleep(0.02)
    end
  end
  self.pid = nil
  if not keep then helpers.succeeds("rm -rf " .. sh_quote(self.dir)) end
end

function Redis:restart()
  self:stop(true)
  launch(self)
end

function Redis:connections()
  return tonumber(self:cli("info stats"):match("total_connections_received:(%d+)"))
end

-- ---- a fake Redis ------------------------------------------------------------------

-- Answers AUTH, SELECT, PING; the turn script (EVALSHA/EVAL) as MODE says;
-- in mode "proxy" relays every command to the real Redis at port ARG and
-- holds the answers to turns for DELAY seconds (ARG = "port:delay").
local FAKE_REDIS = [==[
local socket = require "socket"
local port, mode, arg1 = tonumber(arg[1]), arg[2], arg[3]
local srv = assert(socket.bind("127.0.0.1", port))
srv:settimeout(0)
local clients, backend = {}, nil
local function read_cmd(c)
  c:settimeout(5)
  local line = c:receive("*l")
  if not line then return nil end
  local n = tonumber(line:match("^%*(%d+)"))
  if not n then return { line } end
  local args = {}
  for i = 1, n do
    local l = c:receive("*l")
    if not l then return nil end
    args[i] = c:receive(tonumber(l:match("^%$(%d+)")))
    c:receive(2)
  end
  return args
end
local function raw(b)
  local l = assert(b:receive("*l"))
  local t = l:sub(1, 1)
  if t == "$" then
    local n = tonumber(l:sub(2))
    if n < 0 then return l .. "\r\n" end
    return l .. "\r\n" .. b:receive(n + 2)
  elseif t == "*" then
    local n, out = tonumber(l:sub(2)), { l .. "\r\n" }
    for _ = 1, math.max(n, 0) do out[#out + 1] = raw(b) end
    return table.concat(out)
  end
  return l .. "\r\n"
end
local function turns(k, elem)
  local parts = { "*" .. (k + 1) .. "\r\n" }
  for i = 1, k do parts[i + 1] = elem end
  parts[k + 2] = ":0\r\n" -- the server's clock, last
  return table.concat(parts)
end
while true do
  local ready = { srv }
  for c in pairs(clients) do ready[#ready + 1] = c end
  for _, s in ipairs((socket.select(ready, nil, 1))) do
    if s == srv then
      local c = srv:accept()
      if c then clients[c] = true end
    else
      local cmd = read_cmd(s)
      if not cmd then
        clients[s] = nil
        s:close()
      else
        local name = (cmd[1] or ""):upper()
        if mode == "proxy" then
          local bport, delay = arg1:match("^(%d+):([%d.]+)$")
          backend = backend or assert(socket.connect("127.0.0.1", tonumber(bport)))
          local parts = { "*" .. #cmd .. "\r\n" }
          for _, a in ipairs(cmd) do parts[#parts + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n" end
          backend:send(table.concat(parts))
          local rep = raw(backend)
          if name == "EVALSHA" or name == "EVAL" then socket.sleep(tonumber(delay)) end
          s:send(rep)
        elseif name == "AUTH" then
          if mode == "echo_auth" then s:send("-WRONGPASS invalid password '" .. cmd[#cmd] .. "'\r\n")
          else s:send("+OK\r\n") end
        elseif name == "SELECT" then
          s:send("+OK\r\n")
        elseif name == "EVALSHA" or name == "EVAL" then
          local k = math.floor((#cmd - 6) / 2) -- a budget and a not-before wait per turn
          if mode == "strings" then s:send(turns(k, "$3\r\nabc\r\n"))
          elseif mode == "bigwait" then s:send(turns(k, ":" .. arg1 .. "\r\n"))
          elseif mode == "stall_partial" then s:send("*" .. k .. "\r\n:")
          elseif mode == "close_mid" then s:send("*" .. k .. "\r\n:1") s:close() clients[s] = nil
          elseif mode == "huge_array" then s:send("*" .. arg1 .. "\r\n")
          else s:send(turns(k, ":0\r\n")) end
        elseif name == "PING" then
          s:send("+PONG\r\n")
        else
          s:send("$-1\r\n")
        end
      end
    end
  end
end
]==]

local fake_file

local function start_fake(mode, a)
  if not fake_file then
    fake_file = os.tmpname() .. ".lua"
    helpers.write_file(fake_file, FAKE_REDIS)
  end
  local port = helpers.free_port()
  local p = assert(io.popen(("%s %s %d %s %s >/dev/null 2>&1 & echo $!"):format("lua5.4", sh_quote(fake_file), port,
    mode, a or "")))
  local pid = tonumber(p:read("*l"))
  p:close()
  assert(wait_port(port), "the fake Redis did not start")
  return { port = port, pid = pid, url = "redis://127.0.0.1:" .. port,
           stop = function() helpers.succeeds("kill " .. pid .. " 2>/dev/null") end }
end

-- ---- windows and calls ---------------------------------------------------------

-- The most of `times` inside any half-open window of `w` seconds.
local function busiest(times, w)
  local t = {}
  for i, v in ipairs(times) do t[i] = v end
  table.sort(t)
  local best, j = 0, 1
  for i = 1, #t do
    while t[i] - t[j] >= w do j = j + 1 end
    if i - j + 1 > best then best = i - j + 1 end
  end
  return best
end

local function arrivals(m, token)
  local out = {}
  for _, r in ipairs(m:requests()) do
    if r.headers.authorization == "Bearer " .. token then out[#out + 1] = r.at end
  end
  return out
end

-- One reset through session `s`: res, err, seconds, events ({type, message, wait}).
local function reset(s, m, o)
  local events = {}
  local opts = { token = o.token, base_url = m.url .. "/api", model_id = UUID, policy = o.policy or "daily",
    timeout = o.timeout or 2, retries = o.retries or 0, connect_timeout = o.connect_timeout,
    rate_limit = o.rate_limit,
    on_event = function(ev)
      events[#events + 1] = { type = ev.type, message = ev.message, wait = ev.wait }
      if o.on_event then o.on_event(ev) end
    end }
  local t0 = now()
  local res, err = s:call("omni", "reset_cache", opts)
  return res, err, now() - t0, events
end

local function of_type(events, t)
  local out = {}
  for _, e in ipairs(events) do if e.type == t then out[#out + 1] = e end end
  return out
end

-- Runs `code` in a fresh interpreter with this process's paths; `env` is
-- prepended to the command (e.g. "LD_PRELOAD=..."). Returns output, ok, status.
local function run_child(code, env, cpath)
  local file = os.tmpname() .. ".lua"
  helpers.write_file(file, ("package.path = %q\npackage.cpath = %q\n"):format(package.path,
    (cpath and cpath .. ";" or "") .. package.cpath) .. code)
  local p = assert(io.popen("env " .. (env or "") .. " " .. LUA .. " " .. sh_quote(file) .. " 2>&1"))
  local out = p:read("*a")
  local ok, _, status = p:close()
  os.remove(file)
  return out, (ok == true or ok == 0), status
end

-- ==================================================================================

describe("fleet adversary #redis", function()
  local m, r

  setup(function()
    m = mock.start()
    r = start_redis()
  end)
  teardown(function()
    if r then r:stop() end
    if m then m:stop() end
    if fake_file then os.remove(fake_file) end
  end)

  -- ---------------------------------------------------------------- defects

  describe("defect:", function()
    -- Fleet: "a Redis that is slow, frozen or failing never holds a call";
    -- Redis unreachable -> fallback. A healthy Redis must not be taken for a
    -- failed one. The engine polls at most 8 Redis descriptors (MAX_REDIS_FDS),
    -- and a kept idle connection always wants to read, so with 8 newer kept
    -- connections an older URL's answer is never read: the turn times out
    -- (half the call's timeout) and falls back, "no answer within 1s".
    it("a session that has used more than 8 Redis URLs still gets its turns from a healthy Redis", function()
      local s = core.session()
      local tok = uid("tok-nine-urls")
      for db = 0, 9 do
        local res = reset(s, m, { token = tok, timeout = 2,
          rate_limit = { requests = 100, per = 1, redis = r.url .. "/" .. db } })
        assert.truthy(res)
      end
      local res, _, took, events = reset(s, m, { token = tok, timeout = 2,
        rate_limit = { requests = 100, per = 1, redis = r.url .. "/0" } })
      s:close()
      assert.truthy(res)
      assert.same({}, of_type(events, "redis_fallback"))
      assert.is_true(took < 0.5, ("the turn took %.3fs on a healthy Redis"):format(took))
    end)

    -- Rate limits: at most n start in any window; Fleet: "the script refused
    -- ... falls back". A turn answer whose elements are not integers (a
    -- broken proxy, a Redis-compatible server, garbage) is read as "start
    -- now" (v = 0): no fallback, and no window at all — 3 starts under
    -- "1 per 10 s".
    it("a turn answer of strings is not a grant: the window holds (fallback)", function()
      local f = start_fake("strings")
      local tok = uid("tok-strings")
      local s = core.session()
      local fell = 0
      for _ = 1, 3 do
        local _, _, _, events = reset(s, m, { token = tok, timeout = 1,
          rate_limit = { requests = 1, per = 10, redis = f.url } })
        fell = fell + #of_type(events, "redis_fallback")
      end
      s:close()
      f.stop()
      assert.is_true(#arrivals(m, tok) <= 1, #arrivals(m, tok) .. " requests started under 1 per 10 s")
      assert.is_true(fell > 0, "no redis_fallback event for a malformed answer")
    end)

    -- Fleet: "the call's timeout covers ... taking turns; a Redis that is slow
    -- ... never holds a call past its timeout". The client accepts a reserved
    -- start however far it lies past its own deadline, and sleeps until it.
    it("a granted start past the deadline (a lying Redis) ends the call by its timeout", function()
      local f = start_fake("bigwait", "3000000") -- "wait 3 s", to a call with 1 s
      local s = core.session()
      local tok = uid("tok-bigwait")
      local res, err, took = reset(s, m, { token = tok, timeout = 1,
        rate_limit = { requests = 1, per = 10, redis = f.url } })
      s:close()
      f.stop()
      assert.is_nil(res)
      assert.is_true(took < 1.2, ("held %.3fs with timeout = 1 (%s)"):format(took, tostring(err)))
    end)

    -- The same with a real Redis: its answer to the turn script takes 0.7 s
    -- to come back (a slow link; within the half of the timeout Redis gets).
    -- The script reserved a start 1.5 s after it ran — within the 2 s budget
    -- it was sent — but the client converts it to "1.5 s from when the
    -- answer arrived": it waits until 2.2 s, then ends with `timeout`. The
    -- wait event says 1.5 s with 1.3 s left. Expected: rate_limited at once
    -- (or the call ended by 2 s).
    it("a slow answer from a real Redis never carries the call past its timeout", function()
      local f = start_fake("proxy", r.port .. ":0.7")
      local s = core.session()
      local tok = uid("tok-slow-answer")
      local limit = { requests = 1, per = 1.5 }
      limit.redis = r.url
      assert.truthy(reset(s, m, { token = tok, timeout = 5, rate_limit = limit }))
      local slow = { requests = 1, per = 1.5, redis = f.url }
      local res, err, took, events = reset(s, m, { token = tok, timeout = 2, rate_limit = slow })
      s:close()
      f.stop()
      assert.is_nil(res)
      for _, e in ipairs(of_type(events, "wait")) do
        assert.is_true(e.wait <= 2 - 0.7 + 0.05, ("a wait event of %.3fs with %.3fs left"):format(e.wait, 1.3))
      end
      assert.is_true(took < 2.1, ("held %.3fs with timeout = 2 (%s)"):format(took, tostring(err)))
    end)

    -- Secrets: "A Redis URL's password is a secret too" (no message, event,
    -- tostring). Redis quotes a command's arguments in some of its errors: a
    -- real redis-server 7 whose AUTH is renamed answers
    -- "ERR unknown command 'AUTH', with args beginning with: 'fleet' '<password>'",
    -- and the core puts that text, unscrubbed, into err.message and the
    -- redis_fallback event.
    it("Redis's own error text never carries the URL's password (a real redis-server)", function()
      local red = start_redis("--rename-command AUTH ''")
      local pw = helpers.secret("Redis-pw")
      local url = "redis://fleet:" .. pw .. "@127.0.0.1:" .. red.port
      local s = core.session()
      local _, err = reset(s, m, { token = uid("tok-echo"), timeout = 1,
        rate_limit = { requests = 5, per = 1, redis = url, redis_required = true } })
      socket.sleep(1.05)
      local _, _, _, events = reset(s, m, { token = uid("tok-echo"), timeout = 1,
        rate_limit = { requests = 5, per = 1, redis = url } })
      s:close()
      red:stop()
      assert.is_nil(helpers.find_secret(tostring(err), pw), tostring(err))
      assert.is_nil(helpers.find_secret(events, pw), cjson.encode(events))
    end)

    it("Redis's own error text never carries the URL's password (a server echoing AUTH)", function()
      local f = start_fake("echo_auth")
      local pw = helpers.secret("Redis-pw")
      local url = "redis://:" .. pw .. "@127.0.0.1:" .. f.port
      local s = core.session()
      local ok, kind, msg = s:redis(url, 1, 1, "PING")
      local _, err = reset(s, m, { token = uid("tok-echo2"), timeout = 1,
        rate_limit = { requests = 5, per = 1, redis = url, redis_required = true } })
      s:close()
      f.stop()
      assert.is_false(ok)
      assert.truthy(kind)
      assert.is_nil(helpers.find_secret(msg, pw), msg)
      assert.is_nil(helpers.find_secret(tostring(err), pw), tostring(err))
    end)

    -- Secrets: no password "in any message ... in any encoding". A password
    -- of 2 bytes masked in place shows through Redis's fixed words: "ab" in
    -- "WRONGPASS invalid username-password pair or user is disabled." gave
    -- "... user is dis***led" (core.scrub) and "dis**led" (the C side).
    it("a short password is not told by the words around it in Redis's refusal", function()
      local red = start_redis("--requirepass " .. helpers.secret("the-real-pw"))
      local url = "redis://:ab@127.0.0.1:" .. red.port
      local s = core.session()
      local ok, _, msg = s:redis(url, 1, 1, "PING")
      local _, err = reset(s, m, { token = uid("tok-short"), timeout = 1,
        rate_limit = { requests = 5, per = 1, redis = url, redis_required = true } })
      s:close()
      red:stop()
      assert.is_false(ok)
      for _, text in ipairs{ msg, tostring(err) } do
        assert.is_nil(text:find("ab", 1, true), text)
        assert.is_nil(text:find("dis%*") or text:find("%*led"), text)
        assert.truthy(text:find("left out", 1, true), text)
      end
    end)

    -- Fleet: "one process never exceeds n per window across a fallback";
    -- Rate limits: at most n start in any window. The process window learns
    -- of the starts granted by Redis, but Redis never learns of those made
    -- in the fallback, and a Redis turn never looks at the process window:
    -- a process that fell back, then finds Redis again (1 s later), gets n
    -- more at once — 6 starts in 1.2 s under 3 per 3 s, from one process.
    it("one process: at most n per window across a fallback and Redis's return", function()
      local port = helpers.free_port()
      local url = "redis://127.0.0.1:" .. port
      local tok = uid("tok-back")
      local s = core.session()
      local limit = { requests = 3, per = 3, redis = url }
      for _ = 1, 3 do reset(s, m, { token = tok, timeout = 0.5, rate_limit = limit }) end
      local back = start_redis(nil, port)
      socket.sleep(1.2) -- past the second a failed Redis is left alone
      for _ = 1, 3 do reset(s, m, { token = tok, timeout = 0.5, rate_limit = limit }) end
      s:close()
      back:stop()
      local t = arrivals(m, tok)
      assert.is_true(busiest(t, 3 - SLACK) <= 3, busiest(t, 3 - SLACK) .. " starts in one 3 s window (limit 3)")
    end)

    -- The same root: "a Redis restart costs no failed call" — and the empty
    -- Redis then grants n more to a process that has just made n.
    it("one process: at most n per window across a Redis restart", function()
      local red = start_redis()
      local tok = uid("tok-restart")
      local s = core.session()
      local limit = { requests = 3, per = 3, redis = red.url }
      for _ = 1, 3 do assert.truthy(reset(s, m, { token = tok, timeout = 0.5, rate_limit = limit })) end
      red:restart()
      for _ = 1, 3 do reset(s, m, { token = tok, timeout = 0.5, rate_limit = limit }) end
      s:close()
      red:stop()
      local t = arrivals(m, tok)
      assert.is_true(busiest(t, 3 - SLACK) <= 3, busiest(t, 3 - SLACK) .. " starts in one 3 s window (limit 3)")
    end)

    -- Fine points: "Fork: a session used in a process other than the one
    -- that opened it never reuses the inherited connections". The Redis
    -- connection is reused: the child's turns go out on the parent's socket.
    describe("fork #fork", function()
      local cpath, remove_helper
      setup(function() cpath, remove_helper = lua_child.fork_helper(SPEC_DIR) end)
      teardown(function() if remove_helper then remove_helper() end end)

      local function script(body)
        return ([[
local fork = require "fork_helper"
local core = require "cachectl.core"
local BASE, UUID, URL, PORT, TOKEN = %q, %q, %q, %d, %q
local s = core.session()
local function call(policy)
  local fb
  local res, err = s:call("omni", "reset_cache", { token = TOKEN, base_url = BASE, model_id = UUID, policy = policy,
    timeout = 3, rate_limit = { requests = 1000, per = 1, redis = URL },
    on_event = function(ev) if ev.type == "redis_fallback" then fb = ev.message end end })
  return res ~= nil and fb == nil, fb or (err and tostring(err))
end
local function connections()
  local p = io.popen("redis-cli -p " .. PORT .. " info stats")
  local n = tonumber(p:read("*a"):match("total_connections_received:(%%d+)"))
  p:close()
  return n
end
assert(call("before-fork"))
]]):format(m.url .. "/api", UUID, r.url, r.port, uid("tok-fork")) .. body
      end

      it("the child opens a Redis connection of its own", function()
        local out = run_child(script([[
local before = connections()
local pid = fork.fork()
if pid == 0 then
  assert(call("child"))
  local after = connections()
  -- each redis-cli run is one connection: the child's own makes it 2
  print("CHILD-OPENED " .. (after - before - 1))
  fork._exit(0)
end
fork.wait(pid)
]]), nil, cpath)
        assert.equal("1", out:match("CHILD%-OPENED (%-?%d+)"), out)
      end)

      it("parent and child taking turns at once: every turn is answered, nothing aborts", function()
        local out, ok, status = run_child(script([[
local pid = fork.fork()
local who = pid == 0 and "child" or "parent"
local bad = 0
for i = 1, 20 do
  local good, why = call(who .. "-" .. i)
  if not good then bad = bad + 1 end
end
print(who .. " BAD " .. bad)
if pid == 0 then fork._exit(0) end
print("CHILD-STATUS " .. tostring(fork.wait(pid)))
]]), nil, cpath)
        assert.is_true(ok, "the script died (status " .. tostring(status) .. "):\n" .. out)
        assert.equal("0", out:match("parent BAD (%d+)"), out)
        assert.equal("0", out:match("child BAD (%d+)"), out)
      end)
    end)

    -- Fleet: "Redis unreachable -> fallback"; a healthy Redis is not a
    -- failed one. An on_event that raises while another item's turn is in
    -- flight: the run drops the connection (right), and the dropped ask is
    -- booked as a Redis failure, so the next calls within a second fall
    -- back ("connection lost") although Redis is fine, and their starts
    -- are not counted in the fleet's window.
    it("an on_event error with a turn in flight leaves a healthy Redis usable for the next call", function()
      local f = start_fake("proxy", r.port .. ":0.3")
      local tok = uid("tok-raise")
      local s = core.session()
      local function item(policy, url, raise)
        return { token = tok, base_url = m.url .. "/api", model_id = UUID, policy = policy, timeout = 3,
          rate_limit = { requests = 1, per = 1, redis = url },
          on_event = function(ev) if raise and ev.type == "wait" then error("handler says no") end end }
      end
      local ok = pcall(s.batch, s, "omni", "reset_cache", { item("a", r.url, true), item("b", r.url, true),
        item("c", f.url) }, 3)
      assert.is_false(ok)
      local _, _, _, events = reset(s, m, { token = uid("tok-raise-next"), timeout = 3,
        rate_limit = { requests = 100, per = 1, redis = f.url } })
      s:close()
      f.stop()
      assert.same({}, of_type(events, "redis_fallback"))
    end)

    -- Fleet: "a Redis that is slow, frozen or failing never holds a call
    -- past its timeout". An answer header announcing 10^8 elements: hiredis
    -- allocates the array, the turn times out at half the timeout, and
    -- freeing the reader walks 10^8 slots: the call ends ~1.4 s after it
    -- began with timeout = 0.5 (4.3 s with 4*10^8), no attempt made.
    it("an answer announcing a huge array never holds the call past its timeout", function()
      local f = start_fake("huge_array", "100000000")
      local s = core.session()
      local res, err, took = reset(s, m, { token = uid("tok-huge"), timeout = 0.5,
        rate_limit = { requests = 5, per = 1, redis = f.url } })
      s:close()
      f.stop()
      assert.is_true(took < 0.7, ("held %.3fs with timeout = 0.5 (%s)"):format(took, tostring(res or err)))
    end)

    -- Fleet: "The call's timeout covers everything the call does:
    -- connecting to Redis". hiredis resolves a host name with a blocking
    -- getaddrinfo: a resolver that takes 3 s (simulated by an LD_PRELOAD
    -- shim, no network trick) holds a call with timeout = 1 for 3 s, and the
    -- fallback then says "no answer within 0.499s".
    it("a slow resolver for the Redis host never holds the call past its timeout", function()
      local dir = tmpdir()
      helpers.write_file(dir .. "/slowdns.c", [[
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    static int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    if (!real)
        real = (int (*)(const char *, const char *, const struct addrinfo *, struct addrinfo **))
            dlsym(RTLD_NEXT, "getaddrinfo");
    if (node && strcmp(node, "slow-dns.test") == 0) { sleep(3); node = "127.0.0.1"; }
    return real(node, service, hints, res);
}
]])
      assert(helpers.succeeds("env -u LD_PRELOAD cc -shared -fPIC -o " .. sh_quote(dir .. "/slowdns.so") .. " "
        .. sh_quote(dir .. "/slowdns.c") .. " -ldl"))
      local out = run_child(([[
local core = require "cachectl.core"
local s = core.session()
local t0 = core.monotonic()
local res, err = s:call("omni", "reset_cache", { token = "tok-dns", base_url = %q, model_id = %q, policy = "d",
  timeout = 1, connect_timeout = 0.5, rate_limit = { requests = 100, per = 1, redis = "redis://slow-dns.test:%d" } })
print(("TOOK %%.3f"):format(core.monotonic() - t0), res and "ok" or tostring(err))
]]):format(m.url .. "/api", UUID, r.port),
        -- after what is preloaded already (ASan's runtime must come first)
        "LD_PRELOAD=" .. sh_quote(((os.getenv("LD_PRELOAD") or "") .. " " .. dir .. "/slowdns.so"):gsub("^ ", "")))
      helpers.succeeds("rm -rf " .. sh_quote(dir))
      local took = tonumber(out:match("TOOK ([%d.]+)"))
      assert.truthy(took, out)
      assert.is_true(took < 1.2, out)
    end)

    -- Fine points: "Ctrl-C: when the standalone interpreter gets SIGINT
    -- while a call waits, the call ends promptly". With `coalesce` and a
    -- frozen Redis, the claim (session:redis) waits min(connect_timeout,
    -- half the timeout) = 10 s in poll(), retried on EINTR: "interrupted!"
    -- comes after 10 s, not at once.
    it("Ctrl-C during a coalescing claim on a frozen Redis ends the call promptly", function()
      local red = start_redis()
      red:signal("STOP")
      local out = run_child(([[
local cachectl = require "cachectl"
local core = require "cachectl.core"
local me = io.open("/proc/self/stat"):read("l"):match("^(%%d+)")
local omni = cachectl.omni.new{ token = "tok-int-co", base_url = %q, coalesce = 10, timeout = 20,
  rate_limit = { requests = 5, per = 1, redis = %q } }
os.execute(("(sleep 0.5; kill -INT %%s) &"):format(me))
local t0 = core.monotonic()
local ok, e = pcall(omni.reset_cache, omni, %q, "daily")
print(("TOOK %%.3f"):format(core.monotonic() - t0), tostring(e))
]]):format(m.url .. "/api", red.url, UUID))
      red:stop()
      local took = tonumber(out:match("TOOK ([%d.]+)"))
      assert.truthy(took, out)
      assert.truthy(out:find("interrupted!", 1, true), out)
      assert.is_true(took < 1.5, out)
    end)

    -- Fleet: "When Redis cannot answer — refused, ... — the call falls back";
    -- AUTH and SELECT refused fail the connection. Once the turn script is
    -- cached in Redis, a URL naming a database the server lacks (/16 on 16
    -- databases) gets its turn granted in database 0 — the refused SELECT's
    -- error and the turn's answer arrive together and the turn is taken —
    -- with no redis_fallback event: the misconfiguration is silent, and
    -- whether a call falls back depends on the script cache.
    it("a refused SELECT is a failure even when the turn script is cached", function()
      local pw = "pw-" .. uid("x")
      local red = start_redis("--requirepass " .. pw)
      local s0 = core.session()
      local tok = uid("tok-select")
      assert.truthy(reset(s0, m, { token = tok, rate_limit = { requests = 100, per = 1,
        redis = "redis://:" .. pw .. "@127.0.0.1:" .. red.port .. "/0" } }))
      s0:close()
      local s = core.session()
      local _, _, _, events = reset(s, m, { token = tok, rate_limit = { requests = 100, per = 1,
        redis = "redis://:" .. pw .. "@127.0.0.1:" .. red.port .. "/16" } })
      s:close()
      red:stop()
      assert.equal(1, #of_type(events, "redis_fallback"))
    end)
  end)

  -- ------------------------------------------------------------------ held

  describe("held:", function()
    it("Ctrl-C during a turn on a frozen Redis ends the call promptly", function()
      local red = start_redis()
      red:signal("STOP")
      local out = run_child(([[
local core = require "cachectl.core"
local me = io.open("/proc/self/stat"):read("l"):match("^(%%d+)")
local s = core.session()
os.execute(("(sleep 0.5; kill -INT %%s) &"):format(me))
local t0 = core.monotonic()
local ok, e = pcall(s.call, s, "omni", "reset_cache", { token = "tok-int", base_url = %q, model_id = %q,
  policy = "daily", timeout = 20, rate_limit = { requests = 5, per = 1, redis = %q } })
print(("TOOK %%.3f"):format(core.monotonic() - t0), tostring(e))
]]):format(m.url .. "/api", UUID, red.url))
      red:stop()
      assert.truthy(out:find("interrupted!", 1, true), out)
      assert.is_true(tonumber(out:match("TOOK ([%d.]+)")) < 1.5, out)
    end)

    it("the process window remembers the starts granted by Redis (another session falls back)", function()
      local red = start_redis()
      local tok = uid("tok-fwd")
      local limit = { requests = 3, per = 3, redis = red.url }
      local s1, s2 = core.session(), core.session()
      for _ = 1, 3 do assert.truthy(reset(s1, m, { token = tok, timeout = 1, rate_limit = limit })) end
      red:signal("STOP")
      local res, err, _, events = reset(s2, m, { token = tok, timeout = 1, rate_limit = limit })
      red:stop()
      local res2, err2 = reset(s1, m, { token = tok, timeout = 1, rate_limit = limit })
      s1:close()
      s2:close()
      assert.is_nil(res)
      assert.equal("rate_limited", err.kind)
      assert.equal(1, #of_type(events, "redis_fallback"))
      assert.is_nil(res2)
      assert.equal("rate_limited", err2.kind)
      assert.equal(3, #arrivals(m, tok))
    end)

    for _, case in ipairs{ { "stall_partial" }, { "close_mid" }, { "huge_array", "4294967295" } } do
      it("a turn answer cut short (" .. case[1] .. ") falls back within half the timeout, the window kept", function()
        local f = start_fake(case[1], case[2])
        local tok = uid("tok-" .. case[1])
        local s = core.session()
        local fell = 0
        for _ = 1, 3 do
          local _, _, took, events = reset(s, m, { token = tok, timeout = 1,
            rate_limit = { requests = 1, per = 10, redis = f.url } })
          fell = fell + #of_type(events, "redis_fallback")
          assert.is_true(took < 1.1, ("%.3fs"):format(took))
        end
        s:close()
        f.stop()
        assert.equal(1, #arrivals(m, tok))
        assert.is_true(fell >= 1)
      end)
    end

    it("4 processes, batches with 503 retries: at most n in any window #slow", function()
      local tok = uid("tok-4p")
      local fault = m:fault{ method = "POST", path = "/cache_reset/4p-*", fault = "503", times = 10 }
      local child = [[
package.path = %q; package.cpath = %q
local core = require "cachectl.core"
local items = {}
for i = 1, 6 do items[i] = { token = %q, base_url = %q, model_id = %q, policy = "4p-%d-" .. i,
  timeout = 15, retries = 2, rate_limit = { requests = 5, per = 1, redis = %q } } end
local out = core.session():batch("omni", "reset_cache", items, %d)
]]
      local cmds, files = {}, {}
      for p = 1, 4 do
        files[p] = os.tmpname() .. ".lua"
        helpers.write_file(files[p], child:format(package.path, package.cpath, tok, m.url .. "/api", UUID, p, r.url, p))
        cmds[p] = LUA .. " " .. sh_quote(files[p]) .. " &"
      end
      assert(helpers.succeeds("{ " .. table.concat(cmds, " ") .. " wait; }"))
      for _, f in ipairs(files) do os.remove(f) end
      local t = arrivals(m, tok)
      assert.is_true(#t >= 24)
      assert.is_true(busiest(t, 1 - SLACK) <= 5, busiest(t, 1 - SLACK) .. " in one window (limit 5)")
      assert.truthy(fault)
    end)

    it("SCRIPT FLUSH in the middle of a batch: the window holds, nothing falls back #slow", function()
      local tok = uid("tok-flush")
      local fell = 0
      local items = {}
      for i = 1, 15 do
        items[i] = { token = tok, base_url = m.url .. "/api", model_id = UUID, policy = "f" .. i,
          timeout = 10, retries = 0,
          rate_limit = { requests = 5, per = 1, redis = r.url },
          on_event = function(ev) if ev.type == "redis_fallback" then fell = fell + 1 end end }
      end
      helpers.succeeds(("(sleep 0.5; redis-cli -p %d SCRIPT FLUSH >/dev/null) &"):format(r.port))
      local s = core.session()
      s:batch("omni", "reset_cache", items, 5)
      s:close()
      local t = arrivals(m, tok)
      assert.equal(15, #t)
      assert.equal(0, fell)
      assert.is_true(busiest(t, 1 - SLACK) <= 5)
    end)

    it("descriptors stay put across Redis failures of every kind", function()
      local fakes = { start_fake("close_mid"), start_fake("stall_partial"), start_fake("strings") }
      local urls = { "redis://127.0.0.1:" .. helpers.free_port(), "redis://:pw@127.0.0.1:" .. fakes[1].port }
      for _, f in ipairs(fakes) do urls[#urls + 1] = f.url end
      local function fds()
        local n = 0
        local me = io.open("/proc/self/stat"):read("l"):match("^(%d+)")
        for _ in io.popen("ls /proc/" .. me .. "/fd"):lines() do n = n + 1 end
        return n
      end
      local function round()
        for _, url in ipairs(urls) do
          local s = core.session()
          reset(s, m, { token = uid("tok-fd"), timeout = 0.2, rate_limit = { requests = 1000, per = 1, redis = url } })
          s:redis(url, 0.1, 0.1, "GET", "x")
          s:close()
        end
      end
      round()
      collectgarbage()
      local before = fds()
      round()
      round()
      collectgarbage()
      for _, f in ipairs(fakes) do f.stop() end
      assert.equal(before, fds())
    end)

    it("keys and stored outcomes hold no form of the token", function()
      local tok = "tok/Secret+Value=" .. uid("x")
      local function pct(s, lower)
        return (s:gsub("[^%w%-%._~]", function(c) return ((lower and "%%%02x" or "%%%02X"):format(c:byte())) end))
      end
      local fault = m:fault{ method = "POST", path = "/cache_reset/echo-secret", status = 401,
        body = { message = "bad token " .. tok .. " / " .. pct(tok) .. " / " .. pct(tok, true),
                 detail = (tok:gsub("/", "\\/")) } }
      local omni = cachectl.omni.new{ token = tok, base_url = m.url .. "/api", coalesce = 10,
        rate_limit = { requests = 5, per = 1, redis = r.url } }
      local res = omni:reset_cache(UUID, "echo-secret")
      omni:close()
      assert.is_nil(res)
      assert.truthy(fault)
      local dump = {}
      for key in r:cli("--scan --pattern '*'"):gmatch("[^\n]+") do
        dump[#dump + 1] = key .. " = " .. r:cli("--no-raw get " .. sh_quote(key))
          .. r:cli("--no-raw lrange " .. sh_quote(key) .. " 0 -1")
      end
      local all = table.concat(dump, "\n")
      for _, form in ipairs{ tok, pct(tok), pct(tok, true), (tok:gsub("/", "\\/")) } do
        assert.is_nil(all:find(form, 1, true), form .. " in Redis:\n" .. all)
      end
      assert.truthy(all:find("cachectl:co:", 1, true), all)
    end)

    it("odd Redis URLs: %-escaped passwords, IPv6, db 15 work; no message or tostring shows a password", function()
      local secret = "p@ss:w/rd%x"
      local red = start_redis("--bind '127.0.0.1 ::1' --requirepass 'p@ss:w/rd%x'")
      local enc = secret:gsub("[^%w]", function(c) return ("%%%02X"):format(c:byte()) end)
      local tok = uid("tok-urls")
      for _, url in ipairs{ "redis://:" .. enc .. "@[::1]:" .. red.port,
        "redis://:" .. enc .. "@127.0.0.1:" .. red.port .. "/15",
        "redis://default:" .. enc:lower() .. "@localhost:" .. red.port } do
        local s = core.session()
        local res, err, _, events = reset(s, m, { token = tok, timeout = 1,
          rate_limit = { requests = 100, per = 1, redis = url } })
        s:close()
        assert.truthy(res, tostring(err))
        assert.same({}, of_type(events, "redis_fallback"))
      end
      for _, url in ipairs{ "redis://:" .. secret .. "@127.0.0.1:" .. red.port, "redis://pass-Word1@127.0.0.1",
        "redis://:pass-Word1@h/x", "redis://user:pass-Word1@h:0", "redis://:wrong-Passw0rd@127.0.0.1:" .. red.port } do
        local s = core.session()
        local _, err, _, events = reset(s, m, { token = tok, timeout = 1,
          rate_limit = { requests = 100, per = 1, redis = url, redis_required = true } })
        s:close()
        local _, perr = fleet.parse_url(url)
        local client = cachectl.omni.new{ token = "tok", base_url = m.url .. "/api",
          rate_limit = { requests = 1, per = 1, redis = url } }
        for _, pw in ipairs{ secret, enc, "pass-Word1", "wrong-Passw0rd" } do
          assert.is_nil(helpers.find_secret({ tostring(err), events, tostring(perr), tostring(client) }, pw))
        end
        client:close()
      end
      red:stop()
    end)

    it("coalescing with a frozen Redis: the call falls back and sends within its timeout", function()
      local red = start_redis()
      red:signal("STOP")
      local events = {}
      local omni = cachectl.omni.new{ token = uid("tok-cf"), base_url = m.url .. "/api", coalesce = 5, timeout = 2,
        rate_limit = { requests = 5, per = 1, redis = red.url },
        on_event = function(ev) events[#events + 1] = ev.type end }
      local t0 = now()
      local res, err = omni:reset_cache(UUID, "frozen-coalesce")
      local took = now() - t0
      omni:close()
      red:stop()
      assert.truthy(res, tostring(err))
      assert.is_true(took < 2)
      assert.same({ "redis_fallback", "attempt" }, events)
    end)
  end)
end)

-- Rate limits: "inside nginx, with rate_limit.shared_dict, ... with
-- rate_limit.redis" and Fleet: "falls back to the process's own window (the
-- core's in-process sliding window, or the nginx shared dict where one is
-- given) ... The process's own window counts the starts it made through
-- Redis, so one process never exceeds n per window across a fallback."
-- With a shared dict as the fallback, the starts granted by Redis are noted
-- in the worker's process window, not in the dict: one nginx worker makes
-- 3 calls through Redis, Redis freezes, and 3 more go out at once — 6 in
-- one window under 3 per 5 s. (Without shared_dict the same holds: 3.)
describe("fleet adversary in nginx #nginx #redis", function()
  local m, r, n

  setup(function()
    nginx_server.prepare(ROOT)
    m = mock.start()
    r = start_redis()
    local hooks = [[
local cachectl = require "cachectl"
local cjson = require "cjson"
local M = {}
function M.call()
  local args = ngx.req.get_uri_args()
  local evs = {}
  local omni = cachectl.omni.new{ token = args.token, base_url = os.getenv("ADV_MOCK_URL") .. "/api",
    timeout = 2, retries = 0,
    rate_limit = { requests = 3, per = 5, redis = os.getenv("ADV_REDIS_URL"),
                   shared_dict = args.dict == "1" and "cachectl_limits" or nil },
    on_event = function(ev) evs[#evs + 1] = ev.type end }
  local res, err = omni:reset_cache("]] .. UUID .. [[", args.policy)
  omni:close()
  ngx.say(cjson.encode{ ok = res ~= nil, kind = err and err.kind, events = evs })
end
return M
]]
    n = nginx_server.start{
      conf = function(dir, port)
        local head = nginx_server.conf_head(dir, ROOT,
          { env = { "ADV_MOCK_URL", "ADV_REDIS_URL" }, threads = 4, connections = 64 })
        return head .. ([[
    lua_shared_dict cachectl_limits 1m;
    server {
        listen 127.0.0.1:%d;
        location = /ping { content_by_lua_block { ngx.say("pong") } }
        location = /call { content_by_lua_block { require("adv_hooks").call() } }
    }
}
]]):format(port)
      end,
      files = { ["adv_hooks.lua"] = hooks },
      env = { ADV_MOCK_URL = m.url, ADV_REDIS_URL = r.url },
    }
  end)
  teardown(function()
    if n then n:stop() end
    if r then r:stop() end
    if m then m:stop() end
  end)

  local function run(dict)
    local tok = uid("tok-ngx")
    for i = 1, 3 do
      local res = nginx_server.request(n.port, "GET", "/call?dict=" .. dict .. "&token=" .. tok .. "&policy=r" .. i)
      assert.is_true(cjson.decode(res.body).ok)
    end
    r:signal("STOP")
    for i = 1, 3 do
      nginx_server.request(n.port, "GET", "/call?dict=" .. dict .. "&token=" .. tok .. "&policy=f" .. i)
    end
    r:signal("CONT")
    socket.sleep(1.1)
    return arrivals(m, tok)
  end

  it("held: without shared_dict, one worker never exceeds n per window across a fallback", function()
    local t = run("0")
    assert.is_true(busiest(t, 5 - SLACK) <= 3, busiest(t, 5 - SLACK) .. " in one 5 s window (limit 3)")
  end)

  it("defect: with shared_dict as the fallback, one worker never exceeds n per window across a fallback", function()
    local t = run("1")
    assert.is_true(busiest(t, 5 - SLACK) <= 3, busiest(t, 5 - SLACK) .. " in one 5 s window (limit 3)")
  end)
end)
