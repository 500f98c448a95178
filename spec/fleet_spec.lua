-- The fleet's Redis against a real redis-server (started here on a free
-- loopback port, no persistence, stopped by its pid) and the mock, through
-- real calls: the core takes every request's turn in Redis (hiredis), and the
-- windows are read from the arrival times the mock records (`at`) and from
-- the keys in Redis. From one process and from several at once; keys; the
-- script cache; a restarted and a stopped Redis; AUTH and SELECT; and
-- cachectl.fleet's coalescing across processes (and across nginx workers).
-- Tags: #redis (a redis-server), #slow (real time), #nginx.
local io, os, string, table = io, os, string, table
local assert, error, ipairs, pcall, require, tonumber, tostring, type =
  assert, error, ipairs, pcall, require, tonumber, tostring, type
local G = _G

local helpers = require "support.helpers"
local redis_server = require "support.redis_server"
local cjson = require "cjson"
local socket = require "socket"
local mock = require "cachectl.mock"
local core = require "cachectl.core"
local cachectl = require "cachectl"
local fleet = require "cachectl.fleet"

redis_server.need_redis_lua() -- the admin client of support.redis_server

-- The interpreter running this spec, for the child processes.
local LUA = type(G.rawget(G, "jit")) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")

local UUID = helpers.UUID

-- The mock stamps a request when it has read it, a few milliseconds after
-- the client started it: a window is checked this much shorter than `per`.
local SLACK = tonumber(os.getenv("CACHECTL_SPEC_SLACK")) or 0.05

-- The SHA-256 of `s` in hex, from sha256sum (the core's sha256 is checked
-- against it below).
local function sha256sum(s)
  local p = assert(io.popen("printf %s " .. helpers.sh_quote(s) .. " | sha256sum"))
  local out = p:read("*a")
  p:close()
  return assert(out:match("^(%x+)"))
end

local sha256 = core.sha256

local function tmpname()
  local name = os.tmpname()
  os.remove(name)
  return name
end

-- Runs each of `scripts` (Lua source, given this process's paths) in its own
-- process, all at once; waits for all; returns their outputs in order.
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

-- The arrival times the mock recorded, in arrival order, and the records.
local function arrivals(m)
  local reqs, times = m:requests(), {}
  for i, r in ipairs(reqs) do
    assert(type(r.at) == "number", "the mock records no arrival time")
    times[i] = r.at
  end
  return times, reqs
end

-- The most of `times` inside any half-open window [t, t + width) that starts
-- at one of them.
local function busiest(times, width)
  local most = 0
  for i = 1, #times do
    local n = 0
    for j = 1, #times do
      if times[j] >= times[i] and times[j] < times[i] + width then n = n + 1 end
    end
    if n > most then most = n end
  end
  return most
end

local function sorted(list)
  local t = {}
  for i, v in ipairs(list) do t[i] = v end
  table.sort(t)
  return t
end

-- The events of `events` of type `t` (and reason `reason`, when given).
local function events_of(events, t, reason)
  local out = {}
  for _, ev in ipairs(events) do
    if ev.type == t and (reason == nil or ev.reason == reason) then out[#out + 1] = ev end
  end
  return out
end

-- The name of a window in Redis.
local function rl_key(service, secret, n, per)
  return string.format("cachectl:rl:%s:%s:%s:%s", service, sha256(secret), n, per)
end

describe("fleet", function()
  local srv, url, m

  setup(function() m = mock.start() end)
  teardown(function() if m then m:stop() end end)
  before_each(function() m:reset() end)

  -- The options of one Omni reset, with a rate limit and what `over` changes.
  local function reset_opts(token, lim, over)
    return helpers.merge({ token = token, base_url = m.url .. "/api", model_id = UUID, policy = "daily",
      retries = 0, timeout = 10, rate_limit = lim }, over)
  end

  -- A limit of n per `per` kept in this file's Redis, with what `over` changes.
  local function limit(n, per, over)
    return helpers.merge({ requests = n, per = per, redis = url }, over)
  end

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

    it("refuses malformed URLs, quoting nothing of them; a call with one is invalid, nothing sent", function()
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
        local res, err = core.session():call("omni", "reset_cache", reset_opts(helpers.uid("tok"),
          { requests = 5, per = 1, redis = bad }))
        assert.is_nil(res, bad)
        assert.same({ "invalid", "rate_limit", 0 }, { err.kind, err.field, err.attempts })
        assert.matches("invalid Redis URL", err.message, 1, true)
        assert.is_nil(err.message:find(secret, 1, true), err.message)
      end
      assert.equal(0, #m:requests())
    end)
  end)

  -- What a first caller stores in Redis and its waiters read back
  -- (core.outcome_encode, core.outcome_decode), without a Redis.
  describe("outcomes as stored", function()
    local mtype = math.type -- nil before Lua 5.3

    it("come back exactly as the first caller had them, marked coalesced", function()
      local res = { big = 1234567890123456789, f = 0.1234567890123456789, small = 7, half = 7.5, e = "",
        tag = "\0n:5", str = "\0s:x", nul = "\0", list = { 1, 2 ^ 53 + 2, { deep = -0.1 / 3 } }, yes = true }
      local o = assert(core.outcome_decode(assert(core.outcome_encode(res, nil))))
      assert.is_true(o.res.coalesced)
      o.res.coalesced = nil
      assert.same(res, o.res)
      for _, k in ipairs{ "big", "f", "small", "half" } do assert.is_true(res[k] == o.res[k], k) end
      assert.is_true(res.list[2] == o.res.list[2] and res.list[3].deep == o.res.list[3].deep)
      if mtype then
        assert.same({ "integer", "integer", "float" }, { mtype(o.res.big), mtype(o.res.small), mtype(o.res.half) })
      end
      assert.is_nil(o.err)
    end)

    it("an error comes back an error of the module, on one line, marked coalesced", function()
      local err = core.error{ kind = "http", message = "gone", status = 404, attempts = 1, code = "c" }
      local o = assert(core.outcome_decode(assert(core.outcome_encode(nil, err))))
      assert.is_nil(o.res)
      assert.equal(core.error_mt, getmetatable(o.err))
      assert.same({ "http", "gone", 404, 1, "c", true },
        { o.err.kind, o.err.message, o.err.status, o.err.attempts, o.err.code, o.err.coalesced })
      -- as another writer (or version) stored it
      o = assert(core.outcome_decode(cjson.encode{ err = { kind = "api", message = "a\nb", attempts = 1 } }))
      assert.equal("cachectl: api: a b (1 attempt)", tostring(o.err))
    end)

    it("hold no form of a secret, however short; the caller's own values are left untouched", function()
      local token, pw = helpers.secret("TOKEN") .. "/+x", "pw"
      local pct = token:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end)
      local res = { echo = token, url = "https://h/?t=" .. pct, raw = token:gsub("/", "\\/"), short = "a pw b",
        [token] = "as a key" }
      local text = assert(core.outcome_encode(res, nil, { token, pw }))
      for _, form in ipairs{ token, pct, pct:lower(), cjson.encode(token):sub(2, -2), pw } do
        assert.is_nil(text:find(form, 1, true), form)
      end
      assert.equal(token, res.echo)
      assert.same({ echo = "***", url = "https://h/?t=***", raw = "***", short = "***", ["***"] = "as a key",
        coalesced = true }, core.outcome_decode(text).res)
    end)

    it("an outcome that cannot be stored is nil, and a text that is none reads as nil", function()
      local deep = {}
      for _ = 1, 1001 do deep = { deep } end
      for _, res in ipairs{ { f = print }, { n = 0 / 0 }, { n = 1 / 0 }, deep } do
        assert.is_nil(core.outcome_encode(res, nil))
      end
      for _, text in ipairs{ "", "{", "pending:x", '{"err":{"kind":"nonsense","attempts":1}}',
                             '{"err":{"kind":"http"}}' } do
        assert.is_nil(core.outcome_decode(text), text)
      end
      assert.error_matches(function() core.outcome_encode({}, nil, "s3cret") end, "a list of secrets")
    end)
  end)

  describe("with a Redis #redis", function()
    setup(function()
      srv = redis_server.start()
      url = srv:url()
    end)
    teardown(function() if srv then srv:stop() end end)

    it("takes the core's digests (core.sha256 is sha256sum's); the window is named by the credential's", function()
      local secret = helpers.secret()
      assert.equal(sha256sum(secret), core.sha256(secret))
      assert.equal("hiredis", fleet.available())
      assert(core.session():call("omni", "reset_cache", reset_opts(secret, limit(5, 60, { redis_required = true }))))
      local admin = srv:client()
      assert.equal(1, admin:llen("cachectl:rl:omni:" .. sha256sum(secret) .. ":5:60"))
      admin:quit()
    end)

    describe("the window in Redis #slow", function()
      it("reserves n starts at once, then each at the n-th previous start + per (a batch: one round trip)", function()
        local token, list, events = helpers.uid("tok"), {}, {}
        for i = 1, 7 do
          events[i] = {}
          list[i] = reset_opts(token, limit(3, 0.5, { redis_required = true }),
            { policy = "p" .. i, on_event = helpers.recorder(events[i]) })
        end
        local items = core.session():batch("omni", "reset_cache", list, 7)
        local waits = {}
        for i = 1, 7 do
          assert.is_nil(items[i].err, items[i].err and tostring(items[i].err))
          for _, ev in ipairs(events_of(events[i], "wait", "rate_limit")) do waits[#waits + 1] = ev.wait end
        end
        -- all seven asked at once: three free now, three at now + per, one at now + 2 per
        waits = sorted(waits)
        assert.equal(4, #waits)
        for i, want in ipairs{ 0.5, 0.5, 0.5, 1.0 } do assert.near(want, waits[i], 1e-6) end
        -- Redis keeps the last three starts (µs, newest first): now + 2 per, now + per, now + per
        local admin = srv:client()
        local kept = admin:lrange(rl_key("omni", token, 3, 0.5), 0, -1)
        admin:quit()
        assert.equal(3, #kept)
        local s7, s6, s5 = tonumber(kept[1]), tonumber(kept[2]), tonumber(kept[3])
        assert.equal(s5, s6)
        assert.equal(s5 + 500000, s7)
        -- nothing arrived before its reserved start (one clock: Redis and the mock share the machine's)
        local now = (s5 - 500000) / 1e6
        local starts = { now, now, now, now + 0.5, now + 0.5, now + 0.5, now + 1.0 }
        local times = sorted((arrivals(m)))
        assert.equal(7, #times)
        for i = 1, 7 do
          assert.is_true(times[i] >= starts[i] - 0.001, string.format("arrival %d at %.6f, its start %.6f",
            i, times[i], starts[i]))
        end
        assert.equal(3, busiest(times, 0.5 - SLACK))
      end)

      it("holds the window over sequential calls: at most n arrivals in any per, starts n-th previous + per", function()
        local token, events = helpers.uid("tok"), {}
        local s = core.session()
        local admin = srv:client()
        local key, starts = rl_key("omni", token, 3, 0.5), {}
        for i = 1, 9 do
          local mine = {}
          assert(s:call("omni", "reset_cache", reset_opts(token, limit(3, 0.5, { redis_required = true }),
            { policy = "p" .. i, on_event = helpers.recorder(mine) })))
          events[i] = mine
          starts[i] = tonumber(admin:lindex(key, 0))
        end
        admin:quit()
        for i = 1, 3 do assert.equal(0, #events_of(events[i], "wait")) end
        assert.equal(1, #events_of(events[4], "wait", "rate_limit"))
        for i = 4, 9 do
          assert.is_true(starts[i] >= starts[i - 3] + 500000, "start " .. i)
        end
        local times = arrivals(m)
        assert.equal(9, #times)
        assert.equal(3, busiest(times, 0.5 - SLACK))
      end)

      it("ends a turn past the timeout with rate_limited and retry_after, nothing sent, nothing reserved", function()
        local token = helpers.uid("tok")
        local s = core.session()
        local lim = limit(2, 60, { redis_required = true })
        for i = 1, 2 do assert(s:call("omni", "reset_cache", reset_opts(token, lim, { policy = "p" .. i }))) end
        local admin = srv:client()
        local key = rl_key("omni", token, 2, 60)
        local before = admin:lrange(key, 0, -1)
        local res, err = s:call("omni", "reset_cache", reset_opts(token, lim, { timeout = 1 }))
        assert.is_nil(res)
        assert.same({ "rate_limited", 0 }, { err.kind, err.attempts })
        assert.is_true(err.retry_after > 58 and err.retry_after <= 60, tostring(err.retry_after))
        assert.matches("shared through Redis", err.message, 1, true)
        -- a batch of two: both late, in one round trip
        local items = s:batch("omni", "reset_cache", { reset_opts(token, lim, { timeout = 1, policy = "a" }),
          reset_opts(token, lim, { timeout = 1, policy = "b" }) }, 2)
        assert.same({ "rate_limited", "rate_limited" }, { items[1].err.kind, items[2].err.kind })
        assert.same(before, admin:lrange(key, 0, -1))
        admin:quit()
        assert.equal(2, #m:requests())
      end)

      it("keeps separate windows per service, credential and limit", function()
        local a, b = helpers.uid("cred"), helpers.uid("cred")
        local s = core.session()
        local one = limit(1, 60, { redis_required = true })
        assert(s:call("omni", "reset_cache", reset_opts(a, one)))
        assert(s:call("omni", "reset_cache", reset_opts(b, one)))
        assert(s:call("modelslab", "clear_cache", { key = a, base_url = m.url .. "/api", rate_limit = one }))
        assert(s:call("omni", "reset_cache", reset_opts(a, limit(2, 60, { redis_required = true }))))
        local _, err = s:call("omni", "reset_cache", reset_opts(a, one, { timeout = 1 }))
        assert.equal("rate_limited", err.kind)
        local admin = srv:client()
        for _, key in ipairs{ rl_key("omni", a, 1, 60), rl_key("omni", b, 1, 60), rl_key("modelslab", a, 1, 60),
                              rl_key("omni", a, 2, 60) } do
          assert.equal(1, admin:llen(key), key)
        end
        admin:quit()
        assert.equal(4, #m:requests())
      end)

      it("holds the window for several processes sharing one credential", function()
        local token = helpers.uid("tok")
        local start_at = socket.gettime() + 1
        local scripts = {}
        for p = 1, 4 do
          scripts[p] = string.format([[
            local core, socket, cjson = require "cachectl.core", require "socket", require "cjson"
            while socket.gettime() < %f do socket.sleep(0.005) end
            local s, out = core.session(), {}
            for i = 1, 8 do
              local res, err = s:call("omni", "reset_cache", { token = %q, base_url = %q, model_id = %q,
                policy = "proc%d", retries = 0, timeout = 30,
                rate_limit = { requests = 5, per = 0.5, redis = %q, redis_required = true } })
              out[i] = res and "ok" or tostring(err)
            end
            print(cjson.encode(out))
          ]], start_at, token, m.url .. "/api", UUID, p, url)
        end
        for p, out in ipairs(run_processes(scripts)) do
          local ok, list = pcall(cjson.decode, out)
          assert(ok, "process " .. p .. ": " .. out)
          assert.same({ "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok" }, list)
        end
        local times, reqs = arrivals(m)
        assert.equal(32, #times)
        assert.equal(5, busiest(times, 0.5 - SLACK))
        -- the processes really ran at the same time: their arrivals interleave
        local switches = 0
        for i = 2, #reqs do
          if reqs[i].path:match("proc%d$") ~= reqs[i - 1].path:match("proc%d$") then switches = switches + 1 end
        end
        assert.is_true(switches > 3, "the processes' requests did not interleave")
      end)

      it("loads the script again after SCRIPT FLUSH (NOSCRIPT), no fallback", function()
        local token, events = helpers.uid("tok"), {}
        local s = core.session()
        local opts = reset_opts(token, limit(5, 60), { on_event = helpers.recorder(events) })
        assert(s:call("omni", "reset_cache", opts))
        local admin = srv:client()
        admin:script("FLUSH")
        assert(s:call("omni", "reset_cache", opts))
        assert.equal(2, admin:llen(rl_key("omni", token, 5, 60)))
        admin:quit()
        assert.equal(0, #events_of(events, "redis_fallback"))
        assert.equal(2, #m:requests())
      end)

      it("reconnects after Redis restarted under a kept connection: no redis_fallback", function()
        local token, events = helpers.uid("tok"), {}
        local s = core.session()
        local opts = reset_opts(token, limit(5, 60), { on_event = helpers.recorder(events) })
        assert(s:call("omni", "reset_cache", opts))
        srv:restart()
        assert(s:call("omni", "reset_cache", opts))
        assert.equal(0, #events_of(events, "redis_fallback"))
        local admin = srv:client()
        assert.equal(1, admin:llen(rl_key("omni", token, 5, 60))) -- the new server's window: the second call
        admin:quit()
        assert.equal(2, #m:requests())
      end)

      it("reconnects for coalescing too (session:redis) after a restart under a kept connection", function()
        local token, events = helpers.uid("tok"), {}
        local s = core.session()
        assert.same({ true, "PONG" }, { s:redis(url, 5, 1, "PING") })
        local c = cachectl.omni.new{ token = token, base_url = m.url .. "/api", coalesce = 30,
          on_event = helpers.recorder(events), rate_limit = limit(5, 60) }
        assert(c:reset_cache(UUID, "a"))
        srv:restart()
        assert(c:reset_cache(UUID, "b"))
        c:close()
        local admin = srv:client()
        local d = core.identity("omni", "reset_cache", { token = token, base_url = m.url .. "/api", model_id = UUID,
          policy = "b" })
        local stored, llen = admin:get("cachectl:co:" .. d), admin:llen(rl_key("omni", token, 5, 60))
        admin:quit()
        assert.same({}, events_of(events, "redis_fallback"))
        assert.equal(1, llen)
        assert.equal("{", (stored or ""):sub(1, 1), "the outcome is not stored in Redis")
        -- a plain command on a kept connection that Redis's restart broke
        assert.same({ true, "PONG" }, { s:redis(url, 5, 1, "PING") })
      end)

      it("falls back once Redis is stopped (an event naming it), and uses it again after its restart", function()
        local spare = redis_server.start()
        local ok, err = pcall(function()
          local token, events = helpers.uid("tok"), {}
          local s = core.session()
          local opts = reset_opts(token, limit(5, 60, { redis = spare:url() }), { on_event = helpers.recorder(events) })
          assert(s:call("omni", "reset_cache", opts))
          spare:stop(true)
          assert(s:call("omni", "reset_cache", opts))
          local fb = events_of(events, "redis_fallback")
          assert.equal(1, #fb)
          assert.matches("Redis at 127.0.0.1:" .. spare.port, fb[1].message, 1, true)
          spare:restart()
          socket.sleep(1.1) -- a failed URL is left alone for a second
          assert(s:call("omni", "reset_cache", opts))
          assert.equal(1, #events_of(events, "redis_fallback"))
          local admin = spare:client()
          assert.equal(1, admin:llen(rl_key("omni", token, 5, 60)))
          admin:quit()
          assert.equal(3, #m:requests())
        end)
        spare:stop()
        if not ok then error(err, 0) end
      end)
    end)

    describe("keys #slow", function()
      it("start with cachectl:, hold no credential, and expire", function()
        local secret = helpers.secret()
        local c = cachectl.omni.new{ token = secret, base_url = m.url .. "/api", coalesce = 30,
          rate_limit = { requests = 3, per = 0.3, redis = url, redis_required = true } }
        assert(c:reset_cache(UUID, "daily"))
        c:close()
        local admin = srv:client()
        local keys = admin:keys("*")
        local rl = rl_key("omni", secret, 3, 0.3)
        local seen_rl, seen_co = false, false
        for _, key in ipairs(keys) do
          assert.matches("^cachectl:", key)
          assert.is_nil(key:find(secret, 1, true), key)
          local ttl = admin:pttl(key)
          assert.is_true(ttl > 0, key)
          if key == rl then
            seen_rl = true
            assert.is_true(ttl <= 302, "the window's key outlives its per: " .. ttl)
            assert.is_nil(helpers.find_secret(admin:lrange(key, 0, -1), secret))
          elseif key:match("^cachectl:co:%x+$") then
            seen_co = true
            assert.is_nil(admin:get(key):find(secret, 1, true))
          end
        end
        assert.same({ true, true }, { seen_rl, seen_co })
        local gone = helpers.eventually(function()
          local left = admin:exists(rl)
          return not left, not left
        end, 100)
        assert.is_true(gone, "the window's key did not expire")
        admin:quit()
      end)
    end)

    describe("unreachable Redis", function()
      it("falls back (or fails with connect), a message naming Redis and no password; coalesce never runs", function()
        local password = helpers.secret("REDISPW")
        local dead = "redis://fleet:" .. password .. "@127.0.0.1:" .. helpers.free_port() .. "/2"
        local events = {}
        local res, err = core.session():call("omni", "reset_cache", reset_opts(helpers.uid("tok"),
          { requests = 5, per = 1, redis = dead }, { on_event = helpers.recorder(events) }))
        assert.is_table(res, err and tostring(err))
        local fb = events_of(events, "redis_fallback")
        assert.equal(1, #fb)
        assert.matches("^Redis at 127%.0%.0%.1:%d+/2: ", fb[1].message)
        assert.is_nil(fb[1].message:find(password, 1, true))
        res, err = core.session():call("omni", "reset_cache", reset_opts(helpers.uid("tok"),
          { requests = 5, per = 1, redis = dead, redis_required = true }))
        assert.is_nil(res)
        assert.same({ "connect", 0 }, { err.kind, err.attempts })
        assert.matches("^Redis at 127%.0%.0%.1:%d+/2: ", err.message)
        assert.is_nil(tostring(err):find(password, 1, true))
        assert.equal(1, #m:requests())
        local ran = false
        local cres, ckind, cmsg = fleet.coalesce(dead, sha256("c"), 5, 1, function() ran = true end,
          { connect_timeout = 1 })
        assert.same({ nil, "unreachable", false }, { cres, ckind, ran })
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

      local function required(u) return { requests = 5, per = 60, redis = u, redis_required = true } end

      it("logs in with the password, as the default user or a named one", function()
        local token = helpers.uid("tok")
        local s = core.session()
        assert(s:call("omni", "reset_cache", reset_opts(token, required(auth_srv:url{ password = true }))))
        assert(s:call("omni", "reset_cache", reset_opts(token,
          required(auth_srv:url{ password = true, user = "default" }))))
        local admin = auth_srv:client()
        local user_pw = helpers.secret("USERPW")
        require("redis").command("ACL")(admin, "SETUSER", "fleet", "on", ">" .. user_pw, "~cachectl:*", "+@all")
        assert(s:call("omni", "reset_cache", reset_opts(token,
          required(auth_srv:url{ password = user_pw, user = "fleet" }))))
        assert.equal(3, admin:llen(rl_key("omni", token, 5, 60)))
        for _, key in ipairs(admin:keys("*")) do
          assert.is_nil(key:find(password, 1, true))
          assert.is_nil(key:find(user_pw, 1, true))
        end
        admin:quit()
        assert.equal(3, #m:requests())
      end)

      it("reports a wrong or missing password without quoting any", function()
        local wrong = helpers.secret("WRONGPW")
        local forms = { password, (password:gsub("-", "%%2D")), wrong, (wrong:gsub("-", "%%2D")) }
        for _, u in ipairs{ auth_srv:url{ password = wrong }, auth_srv:url{ password = wrong, user = "fleet" },
                            auth_srv:url() } do
          local res, err = core.session():call("omni", "reset_cache", reset_opts(helpers.uid("tok"), required(u)))
          assert.is_nil(res, u)
          assert.same({ "connect", 0 }, { err.kind, err.attempts })
          assert.matches("Redis at 127.0.0.1:" .. auth_srv.port, err.message, 1, true)
          local events = {}
          assert(core.session():call("omni", "reset_cache", reset_opts(helpers.uid("tok"),
            { requests = 5, per = 60, redis = u }, { on_event = helpers.recorder(events) })))
          local fb = events_of(events, "redis_fallback")
          assert.equal(1, #fb)
          for _, form in ipairs(forms) do
            assert.is_nil(tostring(err):find(form, 1, true), err.message)
            assert.is_nil(fb[1].message:find(form, 1, true), fb[1].message)
          end
        end
        assert.equal(3, #m:requests()) -- the fallbacks'; none under redis_required
      end)

      it("uses the database the URL names", function()
        local token = helpers.uid("tok")
        assert(core.session():call("omni", "reset_cache", reset_opts(token,
          required(auth_srv:url{ password = true, db = 3 }))))
        local key = rl_key("omni", token, 5, 60)
        local db3, db0 = auth_srv:client(3), auth_srv:client()
        assert.equal(1, db3:llen(key))
        assert.equal(0, db0:llen(key))
        db3:quit()
        db0:quit()
      end)
    end)

    describe("coalesce #slow", function()
      it("runs the first call, shares its outcome within the window, then runs again", function()
        local d = sha256(helpers.secret())
        local runs, lefts = 0, {}
        local function run(left)
          runs = runs + 1
          lefts[runs] = left
          return { success = true, n = runs, cache_reset = { policy_name = "daily" } }
        end
        local res, err, co = fleet.coalesce(url, d, 0.3, 5, run)
        assert.same({ success = true, n = 1, cache_reset = { policy_name = "daily" } }, res)
        assert.same({ nil, false }, { err, co })
        assert.is_true(lefts[1] > 0 and lefts[1] <= 5, tostring(lefts[1])) -- run gets the seconds left
        local res2, err2, co2 = fleet.coalesce(url, d, 0.3, 5, run)
        assert.same({ success = true, n = 1, cache_reset = { policy_name = "daily" }, coalesced = true }, res2)
        assert.same({ nil, true, 1 }, { err2, co2, runs })
        local admin = srv:client()
        helpers.eventually(function() return admin:exists("cachectl:co:" .. d) == false end, 200)
        admin:quit()
        local res3, _, co3 = fleet.coalesce(url, d, 0.3, 5, run)
        assert.same({ 2, false, 2 }, { res3.n, co3, runs })
      end)

      it("refuses wrong arguments, naming them, before connecting", function()
        local d = sha256("x")
        local secret = helpers.secret()
        local function run() end
        local cases = {
          { "url", function() fleet.coalesce(nil, d, 1, 1, run) end },
          { "connect_timeout", function() fleet.coalesce(url, d, 1, 1, run, { connect_timeout = 0 }) end },
          { "digest", function() fleet.coalesce(url, secret, 1, 1, run) end },
          { "window", function() fleet.coalesce(url, d, 0, 1, run) end },
          { "budget", function() fleet.coalesce(url, d, 1, -1, run) end },
          { "run", function() fleet.coalesce(url, d, 1, 1, nil) end },
          { "opts.secrets", function() fleet.coalesce(url, d, 1, 1, run, { secrets = secret }) end },
        }
        for _, case in ipairs(cases) do
          local ok, err = pcall(case[2])
          assert.is_false(ok)
          assert.matches("cachectl.fleet.coalesce: " .. case[1], err, 1, true)
          assert.is_nil(err:find(secret, 1, true))
        end
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
        assert.same({ "timeout", false, false }, { err.kind, ran, co })
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

    -- The Redis window between nginx workers is spec/nginx_spec.lua's ("with
    -- rate_limit.redis shares the window through Redis between workers").
    describe("inside nginx (2 workers, LuaJIT) #nginx", function()
      local root, dir, port, pid, proc

      local HOOKS = [[
  local fleet = require "cachectl.fleet"
  local cjson = require "cjson.safe"
  local M = {}
  local URL = os.getenv("CACHECTL_REDIS_URL")

  function M.coalesce()
    local a = ngx.req.get_uri_args()
    local res, err, co = fleet.coalesce(URL, a.digest, 30, 10, function()
      ngx.sleep(0.3)
      return { ran_by = ngx.worker.pid() }
    end)
    ngx.say(cjson.encode{ res = res, err = err, co = co, library = fleet.available() })
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
          "env CACHECTL_REDIS_URL;",
          "events { worker_connections 64; }",
          "http {", "access_log off;", table.concat(temp, " "),
          string.format('lua_package_path "%s/lua/?.lua;%s/?.lua;;";', root, dir),
          string.format('lua_package_cpath "%s/build/luajit/?.so;;";', root),
          "server {", "listen 127.0.0.1:" .. port .. " reuseport;",
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
        require("support.nginx_server").prepare(root)     -- the LuaJIT build nginx loads, and nginx
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

      it("coalesces concurrent identical calls across workers (lua-resty-redis)", function()
        local d = sha256(helpers.secret())
        local paths = {}
        for i = 1, 4 do paths[i] = "/coalesce?digest=" .. d end
        local outs = get_all(paths)
        local shared, ran_by = 0, outs[1].res.ran_by
        for _, r in ipairs(outs) do
          assert.equal("lua-resty-redis", r.library)
          assert.equal(ran_by, r.res.ran_by)
          if r.co then shared = shared + 1 end
        end
        assert.equal(3, shared)
      end)
    end)
  end)
end)
