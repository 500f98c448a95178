-- cachectl.fleet against a real redis-server (started here on a free
-- loopback port, no persistence, stopped by its pid): the sliding window
-- kept in Redis, from one process and from several at once; keys; the
-- script cache; an unreachable Redis; AUTH and SELECT; coalescing across
-- processes.
local io, os, string, table = io, os, string, table
local assert, error, ipairs, pcall, rawget, require, select, tonumber, tostring, type =
  assert, error, ipairs, pcall, rawget, require, select, tonumber, tostring, type
local G = _G

local helpers = require "support.helpers"
local redis_server = require "support.redis_server"
local cjson = require "cjson"
local socket = require "socket"

redis_server.need_redis_lua()
local fleet = require "cachectl.fleet"

-- The interpreter running this spec, for the child processes.
local LUA = type(rawget(G, "jit")) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")

-- The SHA-256 of `s` in hex, from sha256sum: what the core's sha256 gives
-- (checked below); the module takes digests as given.
local function sha256sum(s)
  local p = assert(io.popen("printf %s " .. helpers.sh_quote(s) .. " | sha256sum"))
  local out = p:read("*a")
  p:close()
  return assert(out:match("^(%x+)"))
end

local has_core, core = pcall(require, "cachectl.core")
local sha256 = has_core and core.sha256 or sha256sum

local function tmpname()
  local name = os.tmpname()
  os.remove(name)
  return name
end

-- Runs each of `scripts` (Lua source, given this process's paths) in its own
-- process, all at once; waits for all; returns their stdout texts in order.
local function run_processes(scripts)
  local cmds, outs, files = {}, {}, {}
  for i, code in ipairs(scripts) do
    files[i], outs[i] = tmpname() .. ".lua", tmpname()
    helpers.write_file(files[i], redis_server.prelude() .. code)
    cmds[i] = LUA .. " " .. helpers.sh_quote(files[i]) .. " > " .. helpers.sh_quote(outs[i]) .. " 2>&1 &"
  end
  assert(helpers.succeeds("{ " .. table.concat(cmds, " ") .. " wait; }"))
  local texts = {}
  for i = 1, #scripts do
    texts[i] = helpers.read_file(outs[i]) or ""
    os.remove(files[i])
    os.remove(outs[i])
  end
  return texts
end

-- nil when no half-open window of `per_us` microseconds holds more than `n`
-- of `times` (microseconds); else a description of the first one that does.
local function window_violation(times, n, per_us)
  local t = {}
  for i, v in ipairs(times) do t[i] = v end
  table.sort(t)
  for i = 1, #t - n do
    if t[i + n] - t[i] < per_us then
      return string.format("%d starts within %d us from %.0f", n + 1, t[i + n] - t[i], t[i])
    end
  end
  return nil
end

local function parts(digest) return { service = "omni", digest = digest } end

describe("fleet", function()
  local srv, url

  setup(function()
    srv = redis_server.start()
    url = srv:url()
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  it("takes the core's digests (core.sha256 is sha256sum's)", function()
    assert.is_true(has_core, "cachectl.core does not load")
    local secret = helpers.secret()
    assert.equal(sha256sum(secret), core.sha256(secret))
    assert.is_number(fleet.take(url, parts(core.sha256(secret)), 5, 60, 10))
  end)

  describe("parse_url", function()
    it("reads host, port, db, user and password (percent-decoded)", function()
      local cfg = assert(fleet.parse_url("redis://fleet:p%40ss%3Aw@10.0.0.5:6380/3"))
      assert.same({ "10.0.0.5", 6380, 3, "fleet", "p@ss:w" }, { cfg.host, cfg.port, cfg.db, cfg.user, cfg.password })
      assert.equal("Redis at 10.0.0.5:6380/3", cfg.where)
      cfg = assert(fleet.parse_url("redis://:pw@[::1]"))
      assert.same({ "::1", 6379, 0, nil, "pw" }, { cfg.host, cfg.port, cfg.db, cfg.user, cfg.password })
      assert.equal("Redis at [::1]:6379", cfg.where)
      cfg = assert(fleet.parse_url("redis://cache.internal/"))
      assert.same({ "cache.internal", 6379, 0 }, { cfg.host, cfg.port, cfg.db })
    end)

    it("refuses malformed URLs, quoting nothing of them", function()
      local secret = helpers.secret("REDISPW")
      for _, bad in ipairs{
        "http://:" .. secret .. "@h", "redis://" .. secret .. "@h", "redis://:@h",
        "redis://:" .. secret .. "@h:0", "redis://:" .. secret .. "@h:99999", "redis://:" .. secret .. "@h/x",
        "redis://:" .. secret .. "@", "redis://h:" .. secret, "redis://:" .. secret .. "@h?db=1",
      } do
        local cfg, msg = fleet.parse_url(bad)
        assert.is_nil(cfg, bad)
        assert.matches("invalid Redis URL", msg)
        assert.is_nil(msg:find(secret, 1, true), msg)
        local wait, kind, tmsg = fleet.take(bad, parts(sha256("k")), 5, 1)
        assert.same({ nil, "invalid", msg }, { wait, kind, tmsg })
      end
    end)
  end)

  describe("take", function()
    it("reserves n starts at once, then each at the n-th previous start + per", function()
      local d = sha256(helpers.secret())
      local waits, ats = {}, {}
      for i = 1, 7 do
        waits[i], ats[i] = fleet.take(url, parts(d), 3, 60, 1000)
        assert.is_number(waits[i])
      end
      assert.same({ 0, 0, 0 }, { waits[1], waits[2], waits[3] })
      for i = 4, 7 do
        assert.equal(ats[i - 3] + 60e6, ats[i])
        assert.is_true(waits[i] > 0)
      end
      assert.is_nil(window_violation(ats, 3, 60e6))
    end)

    it("ends late, reserving nothing, when the turn is past the budget", function()
      local d = sha256(helpers.secret())
      local ats = {}
      for i = 1, 2 do ats[i] = select(2, fleet.take(url, parts(d), 2, 60, 0)) end
      local wait, kind, need = fleet.take(url, parts(d), 2, 60, 0)
      assert.is_nil(wait)
      assert.equal("late", kind)
      assert.is_true(need > 0 and need <= 60)
      -- nothing was reserved: the next turn is still the first start + per
      local _, at = fleet.take(url, parts(d), 2, 60, 100)
      assert.equal(ats[1] + 60e6, at)
    end)

    it("holds the window over many turns (windows from the reserved times)", function()
      local d = sha256(helpers.secret())
      local ats = {}
      for i = 1, 23 do
        local wait, at = fleet.take(url, parts(d), 4, 0.25, 100)
        assert.is_number(wait)
        ats[i] = at
      end
      assert.is_nil(window_violation(ats, 4, 250000))
      assert.is_true(ats[23] - ats[1] >= 5 * 250000)
    end)

    it("the window check finds a window with too many starts", function()
      assert.is_nil(window_violation({ 0, 10, 20, 1000, 1010 }, 3, 1000))
      assert.is_string(window_violation({ 0, 10, 20, 999, 1010 }, 3, 1000))
      assert.is_string(window_violation({ 5, 0, 3, 1 }, 3, 1000))
    end)

    it("keeps separate windows per service, credential and limit", function()
      local d1, d2 = sha256(helpers.secret()), sha256(helpers.secret())
      assert.equal(0, fleet.take(url, parts(d1), 1, 60, 100))
      assert.equal(0, fleet.take(url, parts(d2), 1, 60, 100))
      assert.equal(0, fleet.take(url, { service = "modelslab", digest = d1 }, 1, 60, 100))
      assert.equal(0, fleet.take(url, parts(d1), 2, 60, 100))
      assert.is_true(fleet.take(url, parts(d1), 1, 60, 100) > 0)
    end)

    it("holds the window for several processes sharing one credential", function()
      local d = sha256(helpers.secret())
      local start_at = socket.gettime() + 1
      local code = string.format([[
        local fleet, socket = require "cachectl.fleet", require "socket"
        while socket.gettime() < %f do socket.sleep(0.005) end
        for _ = 1, 8 do
          local wait, at = fleet.take(%q, { service = "omni", digest = %q }, 5, 0.5, 30, 2)
          if not wait then print("ERR " .. tostring(at)) break end
          print(string.format("%%.0f", at))
          socket.sleep(wait)
        end
      ]], start_at, url, d)
      local outs = run_processes{ code, code, code, code }
      local all, owner = {}, {}
      for p, out in ipairs(outs) do
        local lines = 0
        for line in out:gmatch("[^\n]+") do
          local at = tonumber(line)
          assert(at, "process " .. p .. ": " .. line)
          all[#all + 1], owner[at] = at, p
          lines = lines + 1
        end
        assert.equal(8, lines)
      end
      assert.equal(32, #all)
      assert.is_nil(window_violation(all, 5, 500000))
      -- the processes really ran at the same time: their turns interleave
      table.sort(all)
      local switches = 0
      for i = 2, #all do
        if owner[all[i]] ~= owner[all[i - 1]] then switches = switches + 1 end
      end
      assert.is_true(switches > 3, "turns did not interleave")
    end)

    it("loads the script again after SCRIPT FLUSH (NOSCRIPT)", function()
      local d = sha256(helpers.secret())
      assert.equal(0, fleet.take(url, parts(d), 5, 60, 100))
      local admin = srv:client()
      admin:script("FLUSH")
      assert.equal(0, fleet.take(url, parts(d), 5, 60, 100))
      assert.equal(2, admin:llen("cachectl:rl:omni:" .. d .. ":5:60"))
      admin:quit()
    end)

    it("reconnects after Redis restarted under a kept connection", function()
      local d = sha256(helpers.secret())
      assert.equal(0, fleet.take(url, parts(d), 5, 60, 100))
      srv:restart()
      assert.equal(0, fleet.take(url, parts(d), 5, 60, 100))
      srv:stop(true)
      local wait, kind, msg = fleet.take(url, parts(d), 5, 60, 100, 1)
      assert.same({ nil, "unreachable" }, { wait, kind })
      assert.matches("Redis at 127.0.0.1:" .. srv.port, msg, 1, true)
      srv:restart()
      assert.equal(0, fleet.take(url, parts(d), 5, 60, 100))
    end)

    it("refuses wrong arguments, naming them, before connecting", function()
      local d = sha256("x")
      local secret = helpers.secret()
      local cases = {
        { "key_parts.digest", function() fleet.take(url, parts(secret), 5, 1) end },
        { "key_parts.service", function() fleet.take(url, { service = "a:b", digest = d }, 5, 1) end },
        { "key_parts", function() fleet.take(url, nil, 5, 1) end },
        { "requests", function() fleet.take(url, parts(d), 0, 1) end },
        { "requests", function() fleet.take(url, parts(d), 1.5, 1) end },
        { "per", function() fleet.take(url, parts(d), 5, 0) end },
        { "budget", function() fleet.take(url, parts(d), 5, 1, -1) end },
        { "connect_timeout", function() fleet.take(url, parts(d), 5, 1, 1, 0) end },
        { "url", function() fleet.take(nil, parts(d), 5, 1) end },
      }
      for _, case in ipairs(cases) do
        local ok, err = pcall(case[2])
        assert.is_false(ok)
        assert.matches("cachectl.fleet.take: " .. case[1], err, 1, true)
        assert.is_nil(err:find(secret, 1, true))
      end
    end)
  end)

  describe("keys", function()
    it("start with cachectl:, hold no credential, and expire", function()
      local secret = helpers.secret()
      local d = sha256(secret)
      fleet.take(url, parts(d), 3, 2, 100)
      fleet.coalesce(url, sha256(secret .. "call"), 30, 1, function() return { ok = true } end)
      local admin = srv:client()
      local keys = admin:keys("*")
      assert.is_true(#keys >= 2)
      for _, key in ipairs(keys) do
        assert.matches("^cachectl:", key)
        assert.is_nil(key:find(secret, 1, true), key)
        assert.is_true(admin:pttl(key) > 0, key)
      end
      assert.is_truthy(admin:exists("cachectl:rl:omni:" .. d .. ":3:2"))
      admin:quit()
    end)
  end)

  describe("unreachable Redis", function()
    it("gives unreachable, a message naming Redis and no password, and never runs", function()
      local password = helpers.secret("REDISPW")
      local dead = "redis://fleet:" .. password .. "@127.0.0.1:" .. helpers.free_port() .. "/2"
      local wait, kind, msg = fleet.take(dead, parts(sha256("k")), 5, 1, 10, 1)
      assert.same({ nil, "unreachable" }, { wait, kind })
      assert.matches("^Redis at 127%.0%.0%.1:%d+/2: ", msg)
      assert.is_nil(msg:find(password, 1, true))
      local ran = false
      local res, ckind, cmsg = fleet.coalesce(dead, sha256("c"), 5, 1, function() ran = true end,
        { connect_timeout = 1 })
      assert.same({ nil, "unreachable", false }, { res, ckind, ran })
      assert.is_nil(cmsg:find(password, 1, true))
      assert.matches("Redis at", cmsg, 1, true)
    end)
  end)

  describe("AUTH and SELECT", function()
    local auth_srv, password

    setup(function()
      password = helpers.secret("REDISPW")
      auth_srv = redis_server.start{ password = password }
    end)

    teardown(function()
      if auth_srv then auth_srv:stop() end
    end)

    it("logs in with the password, as the default user or a named one", function()
      local d = sha256(helpers.secret())
      assert.equal(0, fleet.take(auth_srv:url{ password = true }, parts(d), 5, 60, 100))
      assert.equal(0, fleet.take(auth_srv:url{ password = true, user = "default" }, parts(d), 5, 60, 100))
      local admin = auth_srv:client()
      local user_pw = helpers.secret("USERPW")
      require("redis").command("ACL")(admin, "SETUSER", "fleet", "on", ">" .. user_pw, "~cachectl:*", "+@all")
      assert.equal(0, fleet.take(auth_srv:url{ password = user_pw, user = "fleet" }, parts(d), 5, 60, 100))
      assert.equal(3, admin:llen("cachectl:rl:omni:" .. d .. ":5:60"))
      for _, key in ipairs(admin:keys("*")) do
        assert.is_nil(key:find(password, 1, true))
        assert.is_nil(key:find(user_pw, 1, true))
      end
      admin:quit()
    end)

    it("reports a wrong or missing password without quoting any", function()
      local d = sha256(helpers.secret())
      local wrong = helpers.secret("WRONGPW")
      for _, u in ipairs{ auth_srv:url{ password = wrong }, auth_srv:url{ password = wrong, user = "fleet" },
                          auth_srv:url() } do
        local wait, kind, msg = fleet.take(u, parts(d), 5, 60, 100)
        assert.same({ nil, "unreachable" }, { wait, kind })
        assert.matches("Redis at 127.0.0.1:" .. auth_srv.port, msg, 1, true)
        assert.is_nil(msg:find(wrong, 1, true))
        assert.is_nil(msg:find(password, 1, true))
        assert.is_nil(msg:find(password:gsub("-", "%%2D"), 1, true))
      end
    end)

    it("uses the database the URL names", function()
      local d = sha256(helpers.secret())
      assert.equal(0, fleet.take(auth_srv:url{ password = true, db = 3 }, parts(d), 5, 60, 100))
      local key = "cachectl:rl:omni:" .. d .. ":5:60"
      local db3, db0 = auth_srv:client(3), auth_srv:client()
      assert.equal(1, db3:llen(key))
      assert.equal(0, db0:llen(key))
      db3:quit()
      db0:quit()
    end)
  end)

  describe("coalesce", function()
    it("runs the first call, shares its outcome within the window, then runs again", function()
      local d = sha256(helpers.secret())
      local runs = 0
      local function run()
        runs = runs + 1
        return { success = true, n = runs, cache_reset = { policy_name = "daily" } }
      end
      local res, err, co = fleet.coalesce(url, d, 0.3, 5, run)
      assert.same({ success = true, n = 1, cache_reset = { policy_name = "daily" } }, res)
      assert.same({ nil, false }, { err, co })
      local res2, err2, co2 = fleet.coalesce(url, d, 0.3, 5, run)
      assert.same({ success = true, n = 1, cache_reset = { policy_name = "daily" }, coalesced = true }, res2)
      assert.same({ nil, true, 1 }, { err2, co2, runs })
      local admin = srv:client()
      helpers.eventually(function() return admin:exists("cachectl:co:" .. d) == false end, 200)
      admin:quit()
      local res3, _, co3 = fleet.coalesce(url, d, 0.3, 5, run)
      assert.same({ 2, false, 2 }, { res3.n, co3, runs })
    end)

    -- n processes start together on fleet.coalesce of one digest; the run()
    -- function appends "ran" to a file, sleeps `hold` seconds and returns
    -- `outcome` (Lua source). Returns the processes' printed
    -- { res, err, co, text = tostring(err) }, after checking run() ran once.
    local function coalesce_in_processes(n, hold, outcome)
      local marker = tmpname()
      local code = string.format([[
        local fleet, socket, cjson = require "cachectl.fleet", require "socket", require "cjson"
        while socket.gettime() < %f do socket.sleep(0.005) end
        local res, err, co = fleet.coalesce(%q, %q, 30, 20, function()
          local f = assert(io.open(%q, "a"))
          f:write("ran\n")
          f:close()
          socket.sleep(%s)
          return %s
        end)
        print(cjson.encode{ res = res, err = err, co = co, text = err and tostring(err) })
      ]], socket.gettime() + 1, url, sha256(helpers.secret()), marker, hold, outcome)
      local scripts = {}
      for i = 1, n do scripts[i] = code end
      local outs = run_processes(scripts)
      assert.equal("ran\n", helpers.read_file(marker))
      os.remove(marker)
      return outs
    end

    it("shares the outcome with four other processes: run() runs once", function()
      local outs = coalesce_in_processes(5, 0.3,
        [[{ success = true, cache_reset = { policy_name = "daily", id = 7 } }]])
      local shared = 0
      for _, out in ipairs(outs) do
        local r = cjson.decode(out)
        assert.same({ success = true, cache_reset = { policy_name = "daily", id = 7 }, coalesced = r.co or nil },
          r.res)
        if r.co then shared = shared + 1 end
      end
      assert.equal(4, shared)
    end)

    it("shares an error outcome too, with its fields and coalesced = true", function()
      local outs = coalesce_in_processes(3, 0.2, [[nil, { kind = "http", status = 503,
        message = "Service Unavailable", code = "E503", retry_after = 2.5, attempts = 3 }]])
      local shared = 0
      for _, out in ipairs(outs) do
        local r = cjson.decode(out)
        assert.is_nil(r.res)
        assert.same({ kind = "http", status = 503, message = "Service Unavailable", code = "E503",
                      retry_after = 2.5, attempts = 3, coalesced = r.co or nil }, r.err)
        if r.co then
          shared = shared + 1
          assert.matches("Service Unavailable", r.text, 1, true)
        end
      end
      assert.equal(2, shared)
    end)

    it("stores no secret the caller names, in any form, and returns its own results untouched", function()
      local d = sha256(helpers.secret())
      local token = helpers.secret("TOKEN") .. "/+x"
      local pct = token:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end)
      local escaped = token:gsub("/", "\\/")
      local body = { echo = token, url = "https://h/?t=" .. pct, raw = escaped, list = { token .. "!" },
                     [token] = "as a key" }
      local res = fleet.coalesce(url, d, 30, 1, function()
        return body, nil
      end, { secrets = { token } })
      assert.equal(body, res)
      assert.equal(token, res.echo)
      local admin = srv:client()
      local stored = admin:get("cachectl:co:" .. d)
      admin:quit()
      for _, form in ipairs{ token, pct, pct:lower(), escaped, cjson.encode(token):sub(2, -2) } do
        assert.is_nil(stored:find(form, 1, true), form)
      end
      local shared, _, co = fleet.coalesce(url, d, 30, 1, function() error("must not run") end)
      assert.is_true(co)
      assert.same({ echo = "***", url = "https://h/?t=***", raw = "***", list = { "***!" },
                    ["***"] = "as a key", coalesced = true }, shared)
    end)

    it("a waiter whose first caller never stores ends with timeout naming the call", function()
      local d = sha256(helpers.secret())
      local admin = srv:client()
      admin:set("cachectl:co:" .. d, "pending:someone-else", "PX", 30000)
      admin:quit()
      local ran = false
      local res, err, co = fleet.coalesce(url, d, 30, 0.2, function() ran = true end,
        { label = "omni reset_cache" })
      assert.is_nil(res)
      assert.same({ "timeout", false, nil }, { err.kind, ran, co })
      assert.matches("coalesced call omni reset_cache", err.message, 1, true)
      assert.matches("coalesced call omni reset_cache", tostring(err), 1, true)
    end)

    it("drops its claim when run raises, and the error propagates", function()
      local d = sha256(helpers.secret())
      local ok, err = pcall(fleet.coalesce, url, d, 30, 1, function() error({ boom = true }) end)
      assert.is_false(ok)
      assert.same({ boom = true }, err)
      local admin = srv:client()
      assert.is_false(admin:exists("cachectl:co:" .. d))
      admin:quit()
      local res, _, co = fleet.coalesce(url, d, 30, 1, function() return { again = true } end)
      assert.same({ { again = true }, false }, { res, co })
    end)
  end)

  describe("inside nginx (2 workers, LuaJIT)", function()
    local root, dir, port, pid, proc

    local HOOKS = [[
local fleet = require "cachectl.fleet"
local cjson = require "cjson.safe"
local M = {}
local URL = os.getenv("CACHECTL_REDIS_URL")

local function digit_string(at) return at and string.format("%.0f", at) or nil end

function M.thread_take(url, digest, n, per)
  local f = require "cachectl.fleet"
  local wait, at, msg = f.take(url, { service = "omni", digest = digest }, n, per, 30, 2)
  return f.available(), wait, type(at) == "number" and digit_string(at) or at, msg
end

function M.take()
  local a = ngx.req.get_uri_args()
  local out = { pid = ngx.worker.pid() }
  if a.thread then
    local ok, lib, wait, at, msg = ngx.run_worker_thread("fleet", "fleet_hooks", "thread_take",
      URL, a.digest, tonumber(a.n), tonumber(a.per))
    out.ok, out.library, out.wait, out.at, out.msg = ok, lib, wait, at, msg
  else
    local wait, at, msg = fleet.take(URL, { service = "omni", digest = a.digest },
      tonumber(a.n), tonumber(a.per), 30, 2)
    out.library, out.wait, out.msg = fleet.available(), wait, msg
    out.at = type(at) == "number" and digit_string(at) or at
  end
  ngx.say(cjson.encode(out))
end

function M.coalesce()
  local a = ngx.req.get_uri_args()
  local res, err, co = fleet.coalesce(URL, a.digest, 30, 10, function()
    ngx.sleep(0.3)
    return { ran_by = ngx.worker.pid() }
  end)
  ngx.say(cjson.encode{ res = res, err = err, co = co })
end
return M
]]

    local function conf()
      local temp = {}
      for _, t in ipairs{ "client_body", "proxy", "fastcgi", "uwsgi", "scgi" } do
        temp[#temp + 1] = string.format("%s_temp_path %s/%s;", t, dir, t)
      end
      return table.concat({
        "load_module /usr/lib/nginx/modules/ndk_http_module.so;",
        "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;",
        "daemon off;", "master_process on;", "worker_processes 2;",
        "error_log " .. dir .. "/error.log notice;", "pid " .. dir .. "/nginx.pid;",
        "env CACHECTL_REDIS_URL;", "thread_pool fleet threads=2;",
        "events { worker_connections 64; }",
        "http {", "access_log off;", table.concat(temp, " "),
        string.format('lua_package_path "%s/lua/?.lua;%s/?.lua;;";', root, dir),
        "server {", "listen 127.0.0.1:" .. port .. " reuseport;",
        'location = /take { content_by_lua_block { require("fleet_hooks").take() } }',
        'location = /coalesce { content_by_lua_block { require("fleet_hooks").coalesce() } }',
        "}", "}",
      }, "\n") .. "\n"
    end

    -- Sends all `paths` at once (HTTP/1.0), then reads every answer as JSON.
    local function get_all(paths)
      local conns = {}
      for i, path in ipairs(paths) do
        local c = assert(socket.tcp())
        c:settimeout(15)
        assert(c:connect("127.0.0.1", port))
        assert(c:send("GET " .. path .. " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"))
        conns[i] = c
      end
      local out = {}
      for i, c in ipairs(conns) do
        local all, _, partial = c:receive("*a")
        c:close()
        local body = assert((all or partial):match("\r\n\r\n(.*)$"))
        out[i] = cjson.decode(body)
      end
      return out
    end

    setup(function()
      local p = assert(io.popen("pwd"))
      root = p:read("*l")
      p:close()
      assert(helpers.succeeds("command -v nginx >/dev/null"), "nginx is not installed")
      p = assert(io.popen("mktemp -d /tmp/cachectl-fleet-nginx.XXXXXX"))
      dir = p:read("*l")
      p:close()
      helpers.succeeds("chmod 755 " .. helpers.sh_quote(dir)) -- workers may run as nobody
      port = helpers.free_port()
      helpers.write_file(dir .. "/nginx.conf", conf())
      helpers.write_file(dir .. "/fleet_hooks.lua", HOOKS)
      proc = assert(io.popen("exec env -u LD_PRELOAD CACHECTL_REDIS_URL=" .. helpers.sh_quote(url)
        .. " nginx -p " .. helpers.sh_quote(dir) .. " -c " .. helpers.sh_quote(dir .. "/nginx.conf")
        .. " >" .. helpers.sh_quote(dir .. "/stderr.log") .. " 2>&1"))
      local up = helpers.eventually(function()
        pid = pid or tonumber(helpers.read_file(dir .. "/nginx.pid") or "")
        local c = socket.tcp()
        c:settimeout(0.5)
        local ok = pid and c:connect("127.0.0.1", port)
        c:close()
        return ok, ok
      end, 250)
      assert(up, "nginx did not start: " .. tostring(helpers.read_file(dir .. "/error.log")))
    end)

    teardown(function()
      if pid then
        helpers.succeeds("kill -TERM " .. pid)
        helpers.eventually(function() return not helpers.succeeds("kill -0 " .. pid .. " 2>/dev/null") end, 250)
      end
      if proc then proc:close() end
      if dir then helpers.succeeds("rm -rf " .. helpers.sh_quote(dir)) end
    end)

    it("takes turns with lua-resty-redis in the workers and redis-lua in their threads, one window", function()
      local d = sha256(helpers.secret())
      local paths = {}
      for i = 1, 12 do
        paths[i] = "/take?n=4&per=0.5&digest=" .. d .. (i % 3 == 0 and "&thread=1" or "")
      end
      local all = {}
      for i, r in ipairs(get_all(paths)) do
        assert.is_number(r.wait, tostring(r.msg or r.at))
        assert.equal(i % 3 == 0 and "redis-lua" or "lua-resty-redis", r.library)
        all[#all + 1] = tonumber(r.at)
      end
      for _ = 1, 4 do all[#all + 1] = select(2, fleet.take(url, parts(d), 4, 0.5, 30)) end
      assert.equal(16, #all)
      assert.is_nil(window_violation(all, 4, 500000))
    end)

    it("coalesces concurrent identical calls across workers", function()
      local d = sha256(helpers.secret())
      local paths = {}
      for i = 1, 4 do paths[i] = "/coalesce?digest=" .. d end
      local outs = get_all(paths)
      local shared, ran_by = 0, outs[1].res.ran_by
      for _, r in ipairs(outs) do
        assert.equal(ran_by, r.res.ran_by)
        if r.co then shared = shared + 1 end
      end
      assert.equal(3, shared)
    end)
  end)

  describe("without the client library", function()
    it("says which library is missing", function()
      local code = [[
        package.loaded.redis = nil
        package.preload.redis = function() error("module 'redis' not found") end
        local fleet = require "cachectl.fleet"
        print(select(2, fleet.available()))
        print(select(2, pcall(fleet.take, "redis://127.0.0.1:1", { service = "omni", digest = (("0"):rep(64)) }, 1, 1)))
      ]]
      local out = run_processes{ code }[1]
      local expected = "rate_limit.redis needs the Lua library redis-lua (Debian package lua-redis)"
      local lines = {}
      for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.equal(expected, lines[1])
      assert.matches(expected, lines[2], 1, true)
    end)
  end)
end)
