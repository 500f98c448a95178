-- The fleet's promise, exactly (issue 19, "Must show"): N processes sharing
-- one credential and one Redis never send more than `n` requests in any `per`
-- seconds, whatever the engine does on its own (retries, batches at any
-- concurrency, a fallback), and a frozen or failing Redis never holds a call
-- past its timeout nor strands a coalesced call. Real redis-server, real
-- child processes, and every window computed from the arrival times the mock
-- records (`at`, the server's clock), never from the client's. The arrival
-- times of the retry and two-batch runs are printed with the output.
local io, os, string, table = io, os, string, table
local assert, error, ipairs, pcall, require, tonumber, tostring, type =
  assert, error, ipairs, pcall, require, tonumber, tostring, type
local G = _G

local helpers = require "support.helpers"
local redis_server = require "support.redis_server"
local support_cli = require "support.cli"
local cjson = require "cjson"
local socket = require "socket"
local mock = require "cachectl.mock"
local core = require "cachectl.core"
local cachectl = require "cachectl"

redis_server.need_redis_lua() -- the admin client of support.redis_server

local LUA = type(G.rawget(G, "jit")) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
local UUID = helpers.UUID

-- The mock stamps a request when it has read it, a few milliseconds after
-- the client started it: a window is checked this much shorter than `per`.
local SLACK = tonumber(os.getenv("CACHECTL_SPEC_SLACK")) or 0.05

local function tmpname()
  local name = os.tmpname()
  os.remove(name)
  return name
end

-- A child process running `code` (Lua source, given this process's paths),
-- started now; :finish() waits for it and returns what it printed.
local function spawn(code)
  local file = tmpname() .. ".lua"
  helpers.write_file(file, redis_server.prelude() .. code)
  local p = assert(io.popen(LUA .. " " .. helpers.sh_quote(file) .. " 2>&1"))
  return {
    finish = function()
      local out = p:read("*a")
      p:close()
      os.remove(file)
      return out
    end,
  }
end

-- The JSON a child printed, decoded (the test fails with its output if not).
local function decoded(out, who)
  local ok, v = pcall(cjson.decode, out)
  assert(ok and type(v) == "table", (who or "a child process") .. " printed: " .. tostring(out))
  return v
end

-- Runs each of `codes` in its own process, all at once; their decoded
-- outputs. With `gate` (the children made with it), the children start
-- their work together once every one of them is loaded and waiting.
local function run_all(codes, gate)
  local procs, outs = {}, {}
  for i, code in ipairs(codes) do procs[i] = spawn(code) end
  if gate then
    local waited = 0
    while select(2, helpers.read_file(gate .. ".ready"):gsub("\n", "")) < #codes and waited < 60 do
      socket.sleep(0.01)
      waited = waited + 0.01
    end
    helpers.write_file(gate .. ".go", "")
  end
  for i, p in ipairs(procs) do outs[i] = decoded(p.finish(), "process " .. i) end
  if gate then os.remove(gate .. ".ready"); os.remove(gate .. ".go") end
  return outs
end

-- A gate for run_all: children made with it wait for one another.
local function new_gate()
  local gate = tmpname()
  helpers.write_file(gate .. ".ready", "")
  return gate
end

-- Lua source for a child: runs `body` once every child of `gate` is
-- loaded and waiting (with no gate, at once). `body` sees TOKEN, BASE,
-- REDIS, UUID, core, cachectl, cjson, and `record(list)`, an on_event
-- function that appends plain event tables.
local function child(gate, token, base, redis_url, body)
  return string.format([[
local core, cachectl, cjson, socket = require "cachectl.core", require "cachectl", require "cjson", require "socket"
local TOKEN, BASE, REDIS, UUID, GATE = %q, %q, %q, %q, %q
local function record(list)
  return function(ev)
    list[#list + 1] = { type = ev.type, reason = ev.reason, wait = ev.wait, status = ev.status,
      attempt = ev.attempt, message = ev.message }
  end
end
if GATE ~= "" then
  local f = assert(io.open(GATE .. ".ready", "a"))
  f:write("ready\n")
  f:close()
  while not io.open(GATE .. ".go") do socket.sleep(0.005) end
end
]], token, base, redis_url, UUID, gate or "") .. body
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

-- Prints the arrivals (seconds after the first, and the policy) under `title`.
local function print_arrivals(title, reqs)
  local lines = { title }
  for i, r in ipairs(reqs) do
    lines[#lines + 1] = string.format("  %2d  +%.3f s  %s", i, r.at - reqs[1].at, r.path:match("[^/]+$"))
  end
  print("\n" .. table.concat(lines, "\n"))
end

local function events_of(events, t, reason)
  local out = {}
  for _, ev in ipairs(events) do
    if ev.type == t and (reason == nil or ev.reason == reason) then out[#out + 1] = ev end
  end
  return out
end

-- Kills Redis `srv` at once (SIGKILL: a SIGTERM'd redis-server takes about a
-- second to go, and its zombie lingers until init reaps it) and waits until
-- its port refuses connections; srv:stop() still cleans up.
local function kill_now(srv)
  assert(helpers.succeeds("kill -KILL " .. srv.pid))
  local gone = helpers.eventually(function()
    local c = socket.tcp()
    c:settimeout(0.2)
    local refused = not c:connect("127.0.0.1", srv.port)
    c:close()
    return refused, refused
  end, 250)
  assert(gone, "redis-server still answers on its port")
end

-- INFO `section` as Redis sends it (redis-lua's own info parses it).
local function info(admin, section)
  return require("redis").command("INFO")(admin, section)
end

-- Runs fn with Redis `srv` frozen (SIGSTOP: it accepts connections and never
-- answers); it runs again afterwards, whatever fn did.
local function frozen(srv, fn)
  assert(helpers.succeeds("kill -STOP " .. srv.pid))
  local ok, err = pcall(fn)
  helpers.succeeds("kill -CONT " .. srv.pid)
  if not ok then error(err, 0) end
end

describe("fleet, exact #redis #slow", function()
  local redis, url, m, base

  setup(function()
    redis = redis_server.start()
    url = redis:url()
    m = mock.start()
    base = m.url .. "/api"
  end)

  teardown(function()
    if m then m:stop() end
    if redis then redis:stop() end
  end)

  before_each(function() m:reset() end)

  local function omni(token, opts)
    return cachectl.omni.new(helpers.merge({ token = token, base_url = base }, opts))
  end

  describe("retries", function()
    it("take their turns: {2 per 3 s}, two resets in two processes answered 503 once each", function()
      -- the first two requests of the token get a 503; the retries must wait for the window
      local token = helpers.uid("tok-retry") .. " fault=503 times=2"
      local gate, codes = new_gate(), {}
      for p = 1, 2 do
        codes[p] = child(gate, token, base, url, string.format([[
local events = {}
local res, err = core.session():call("omni", "reset_cache", { token = TOKEN, base_url = BASE, model_id = UUID,
  policy = "proc%d", retries = 2, timeout = 15, on_event = record(events),
  rate_limit = { requests = 2, per = 3, redis = REDIS, redis_required = true } })
print(cjson.encode{ ok = res ~= nil, err = err and tostring(err), events = events })
]], p))
      end
      local outs = run_all(codes, gate)
      local times, reqs = arrivals(m)
      print_arrivals("retries under 503, {2 per 3 s}, two processes: arrivals", reqs)
      for p, out in ipairs(outs) do
        assert.is_true(out.ok, "process " .. p .. ": " .. tostring(out.err))
        local statuses = {}
        for i, ev in ipairs(events_of(out.events, "attempt")) do statuses[i] = ev.status end
        assert.same({ 503, 200 }, statuses)
        -- the retry waited for its turn in the shared window, after its backoff
        local turn = events_of(out.events, "wait", "rate_limit")
        assert.equal(1, #turn, "process " .. p)
        assert.is_true(turn[1].wait > 0)
      end
      assert.equal(4, #times)
      assert.equal(2, busiest(times, 3 - SLACK))
    end)

    it("never start after the deadline: a retry whose turn lies past it ends rate_limited, not sent", function()
      local token = helpers.uid("tok-late") .. " fault=503 times=1"
      local events = {}
      local res, err = core.session():call("omni", "reset_cache", { token = token, base_url = base, model_id = UUID,
        policy = "daily", retries = 2, timeout = 2, on_event = helpers.recorder(events),
        rate_limit = { requests = 1, per = 30, redis = url, redis_required = true } })
      assert.is_nil(res)
      assert.same({ "rate_limited", 1 }, { err.kind, err.attempts })
      assert.is_true(err.retry_after > 2, tostring(err.retry_after))
      assert.equal(1, #events_of(events, "attempt"))
      assert.equal(1, #m:requests())
    end)
  end)

  it("two processes running batches at concurrency 1 and 3 under {3 per 1 s}: no 1 s holds more than 3", function()
    local token = helpers.uid("tok-batches")
    local gate, codes = new_gate(), {}
    for p, conc in ipairs{ 1, 3 } do
      codes[p] = child(gate, token, base, url, string.format([[
local list = {}
for i = 1, 6 do
  list[i] = { token = TOKEN, base_url = BASE, model_id = UUID, policy = "c%d-" .. i, retries = 0, timeout = 30,
    rate_limit = { requests = 3, per = 1, redis = REDIS, redis_required = true } }
end
local started = socket.gettime()
local items, out = core.session():batch("omni", "reset_cache", list, %d), {}
for i, item in ipairs(items) do out[i] = item.err and tostring(item.err) or "ok" end
print(cjson.encode{ out = out, started = started })
]], conc, conc))
    end
    local outs = run_all(codes, gate)
    local times, reqs = arrivals(m)
    print_arrivals("batches of 6 at concurrency 1 (c1-*) and 3 (c3-*), {3 per 1 s}: arrivals", reqs)
    for p = 1, 2 do assert.same({ "ok", "ok", "ok", "ok", "ok", "ok" }, outs[p].out, "process " .. p) end
    assert.equal(12, #times)
    assert.equal(3, busiest(times, 1 - SLACK))
    -- the two batches ran at the same time: each had started before the
    -- other's last request (which of them takes a turn that comes free is a
    -- race: no turn is reserved ahead, so one batch may take every turn of
    -- the first windows while the other waits)
    local last = {}
    for _, r in ipairs(reqs) do last[r.path:match("/(c%d)%-%d+$")] = r.at end
    assert.is_true(outs[1].started < last.c3 and outs[2].started < last.c1, "the batches did not run together")
  end)

  it("one process across a Redis fallback, {10 per 1 s}: no 1 s holds more than 10", function()
    local spare = redis_server.start()
    local ok, err = pcall(function()
      local token = helpers.uid("tok-fallback")
      local s = core.session()
      local function batch(tag, events)
        local list = {}
        for i = 1, 10 do
          list[i] = { token = token, base_url = base, model_id = UUID, policy = tag .. i, retries = 0, timeout = 10,
            on_event = helpers.recorder(events), rate_limit = { requests = 10, per = 1, redis = spare:url() } }
        end
        for i, item in ipairs(s:batch("omni", "reset_cache", list, 10)) do
          assert.is_nil(item.err, tag .. i .. ": " .. tostring(item.err))
        end
      end
      local before, after = {}, {}
      batch("redis-", before)
      assert.equal(0, #events_of(before, "redis_fallback"))
      kill_now(spare)
      batch("fallback-", after)
      -- one event for the run; the process window remembered Redis's ten starts: every item waited
      assert.equal(1, #events_of(after, "redis_fallback"))
      assert.equal(10, #events_of(after, "wait", "rate_limit"))
      local times = arrivals(m)
      assert.equal(20, #times)
      assert.equal(10, busiest(times, 1 - SLACK))
    end)
    spare:stop()
    if not ok then error(err, 0) end
  end)

  describe("Redis frozen with SIGSTOP: the call ends within its timeout", function()
    local spare

    setup(function() spare = redis_server.start() end)
    teardown(function() if spare then spare:stop() end end)

    -- A client of `spare` that has made one call (its connection is kept),
    -- with `over` for the options; its events go to the list returned.
    local function warm(over)
      local events = {}
      local c = omni(helpers.uid("tok-frozen"), helpers.merge({ timeout = 2, retries = 0,
        on_event = helpers.recorder(events), rate_limit = { requests = 5, per = 1, redis = spare:url() } }, over))
      assert(c:reset_cache(UUID, "warm"))
      return c, events
    end

    local function timed(fn)
      local t0 = socket.gettime()
      local res, err = fn()
      return res, err, socket.gettime() - t0
    end

    it("falls back, with the event naming Redis, and sends", function()
      local c, events = warm()
      frozen(spare, function()
        local res, err, took = timed(function() return c:reset_cache(UUID, "daily") end)
        assert.is_table(res, err and tostring(err))
        assert.is_true(took < 3, "the call took " .. took .. " s") -- a sanity bound: timeout + 1 s
        local fb = events_of(events, "redis_fallback")
        assert.equal(1, #fb)
        assert.matches("Redis at 127.0.0.1:" .. spare.port, fb[1].message, 1, true)
      end)
      assert.equal(2, #m:requests())
    end)

    it("ends with connect under redis_required, naming Redis, nothing sent", function()
      local c = warm{ rate_limit = { requests = 5, per = 1, redis = spare:url(), redis_required = true } }
      frozen(spare, function()
        local res, err, took = timed(function() return c:reset_cache(UUID, "daily") end)
        assert.is_nil(res)
        assert.same({ "connect", 0 }, { err.kind, err.attempts })
        assert.matches("Redis at 127.0.0.1:" .. spare.port, err.message, 1, true)
        assert.is_true(took < 3, "the call took " .. took .. " s")
      end)
      assert.equal(1, #m:requests())
    end)

    it("with coalesce: falls back and sends", function()
      local c, events = warm{ coalesce = 5 }
      frozen(spare, function()
        local res, err, took = timed(function() return c:reset_cache(UUID, "daily") end)
        assert.is_true(took < 3, "the call took " .. took .. " s")
        assert.is_table(res, err and tostring(err))
        assert.is_nil(res.coalesced)
        assert.equal(1, #events_of(events, "redis_fallback"))
      end)
      assert.equal(2, #m:requests())
    end)

    it("with coalesce and redis_required: connect, nothing sent", function()
      local c = warm{ coalesce = 5, rate_limit = { requests = 5, per = 1, redis = spare:url(), redis_required = true } }
      frozen(spare, function()
        local res, err, took = timed(function() return c:reset_cache(UUID, "daily") end)
        assert.is_nil(res)
        assert.same({ "connect", 0 }, { err.kind, err.attempts })
        assert.matches("Redis at 127.0.0.1:" .. spare.port, err.message, 1, true)
        assert.is_true(took < 3, "the call took " .. took .. " s")
      end)
      assert.equal(1, #m:requests())
    end)
  end)

  it("while a failed Redis is left alone, a call falls back and starts at once (a 0.09 s timeout is enough)", function()
    local dead = "redis://127.0.0.1:" .. helpers.free_port()
    local token = helpers.uid("tok-alone")
    local s = core.session()
    local function call(timeout)
      local events = {}
      local res, err = s:call("omni", "reset_cache", { token = token, base_url = base, model_id = UUID,
        policy = "daily", retries = 0, timeout = timeout, on_event = helpers.recorder(events),
        rate_limit = { requests = 100, per = 1, redis = dead } })
      return res, err, events
    end
    local res, err, events = call(5)                  -- Redis refuses: the URL is left alone for 1 s
    assert.is_table(res, err and tostring(err))
    assert.equal(1, #events_of(events, "redis_fallback"))
    -- the process window has 99 free turns: nothing should hold the next call
    res, err, events = call(0.09)
    assert.equal(1, #events_of(events, "redis_fallback"))
    assert.is_table(res, err and tostring(err))
    assert.equal(2, #m:requests())
  end)

  describe("coalescing", function()
    -- The first caller, in a child process: one coalesced reset of `token`
    -- through `redis_url`; prints { ok, err, coalesced }.
    local function first_caller(token, redis_url)
      return spawn(child(nil, token, base, redis_url, [[
local c = cachectl.omni.new{ token = TOKEN, base_url = BASE, timeout = 8, retries = 0, coalesce = 30,
  rate_limit = { requests = 10, per = 1, redis = REDIS } }
local res, err = c:reset_cache(UUID, "daily")
print(cjson.encode{ ok = res ~= nil, err = err and tostring(err), kind = err and err.kind,
  attempts = err and err.attempts, coalesced = res and res.coalesced or false })
]]))
    end

    local function await_arrivals(n)
      helpers.eventually(function() return #m:requests() >= n end, 250)
      assert.equal(n, #m:requests())
    end

    it("a first caller whose store is refused (ACL without EVAL/EVALSHA): its waiter sends its own", function()
      local admin = redis:client()
      local pw = helpers.secret("ACLPW")
      require("redis").command("ACL")(admin, "SETUSER", "noeval", "on", ">" .. pw, "~*", "+@all", "-evalsha", "-eval")
      admin:quit()
      local u = redis:url{ user = "noeval", password = pw }
      -- the first caller's request is held 0.5 s; the waiter would time out after 4 s, sending nothing
      local token = helpers.uid("tok-noeval") .. " hold=0.5 times=1"
      local a = first_caller(token, u)
      await_arrivals(1)
      local res, err = omni(token, { timeout = 4, retries = 0, coalesce = 30,
        rate_limit = { requests = 10, per = 1, redis = u } }):reset_cache(UUID, "daily")
      local first = decoded(a.finish(), "the first caller")
      assert.is_true(first.ok, first.err)
      assert.is_table(res, "the waiter: " .. tostring(err))
      assert.is_nil(res.coalesced)
      assert.equal(2, #m:requests())
    end)

    it("a first caller whose store fails (Redis out of memory between claim and store): its waiter sends", function()
      local admin = redis:client()
      admin:config("resetstat")
      local token = helpers.uid("tok-oom") .. " hold=1.5 times=1"
      local a = first_caller(token, url)
      await_arrivals(1)
      local b = first_caller(token, url) -- the waiter: an identical call in another process
      local ok, err = pcall(function()
        -- both claims made (the first's and the waiter's), then no more memory
        local claimed = helpers.eventually(function()
          local calls = tonumber(info(admin, "commandstats"):match("cmdstat_set:calls=(%d+)") or "0")
          return calls >= 2, calls >= 2
        end, 250)
        assert.is_true(claimed, "the waiter did not claim")
        admin:config("set", "maxmemory", "1")
        local first, waiter = decoded(a.finish(), "the first caller"), decoded(b.finish(), "the waiter")
        assert.is_true(first.ok, first.err)
        assert.is_true(waiter.ok, waiter.err)
        assert.is_false(waiter.coalesced)
      end)
      admin:config("set", "maxmemory", "0")
      admin:quit()
      if not ok then error(err, 0) end
      assert.equal(2, #m:requests())
    end)

    it("never shares an outcome that sent nothing (rate_limited, attempts 0) through Redis", function()
      local token = helpers.uid("tok-nothing")
      local lim = { requests = 1, per = 2, redis = url }
      assert(core.session():call("omni", "reset_cache", { token = token, base_url = base, model_id = UUID,
        policy = "fill", rate_limit = lim }))
      -- the first caller gives up at once: its turn lies past its 0.5 s timeout
      local out = decoded(spawn(child(nil, token, base, url, [[
local c = cachectl.omni.new{ token = TOKEN, base_url = BASE, timeout = 0.5, coalesce = 30,
  rate_limit = { requests = 1, per = 2, redis = REDIS } }
local res, err = c:reset_cache(UUID, "daily")
print(cjson.encode{ ok = res ~= nil, kind = err and err.kind, attempts = err and err.attempts })
]])).finish(), "the first caller")
      assert.same({ ok = false, kind = "rate_limited", attempts = 0 }, out)
      local admin = redis:client()
      local digest = core.identity("omni", "reset_cache", { token = token, base_url = base, model_id = UUID,
        policy = "daily" })
      assert.is_false(admin:exists("cachectl:co:" .. digest))
      admin:quit()
      -- an identical call a moment later waits for its own turn and sends
      local res, err = omni(token, { timeout = 5, coalesce = 30, rate_limit = lim }):reset_cache(UUID, "daily")
      assert.is_table(res, err and tostring(err))
      assert.is_nil(res.coalesced)
      local times = arrivals(m)
      assert.equal(2, #times)
      assert.is_true(times[2] - times[1] >= 2 - SLACK)
    end)

    it("a coalesced batch through Redis runs its items concurrently", function()
      -- every answer is held 1 s: items sent one after another could not arrive within 1 s of each other
      local token = helpers.uid("tok-cobatch") .. " hold=1"
      local results = omni(token, { timeout = 10, rate_limit = { requests = 10, per = 1, redis = url } })
        :reset_caches(UUID, { "a", "b", "c", "d" }, { coalesce = 5 })
      for i, r in ipairs(results) do assert.is_nil(r.err, "item " .. i .. ": " .. tostring(r.err)) end
      local times = arrivals(m)
      assert.equal(4, #times)
      table.sort(times)
      assert.is_true(times[4] - times[1] < 1, string.format("arrivals spread over %.3f s", times[4] - times[1]))
      -- they were coalesced through Redis: four outcomes stored there
      local admin = redis:client()
      local stored = 0
      for _, p in ipairs{ "a", "b", "c", "d" } do
        local d = core.identity("omni", "reset_cache", { token = token, base_url = base, model_id = UUID, policy = p })
        if (admin:get("cachectl:co:" .. d) or ""):sub(1, 1) == "{" then stored = stored + 1 end
      end
      admin:quit()
      assert.equal(4, stored)
    end)
  end)

  it("the command's -v prints the Redis wait", function()
    local token = support_cli.secret("t")
    -- this process fills the window of 1 per 2 s; the command (another process) must wait in Redis
    assert(core.session():call("omni", "reset_cache", { token = token, base_url = base, model_id = UUID,
      policy = "fill", rate_limit = { requests = 1, per = 2, redis = url, redis_required = true } }))
    local proc = support_cli.process(tmpname())
    local status, out, err = proc.exec({ "omni", "reset-cache", "--base-url", base, "--model", UUID, "--no-check",
      "--policy", "daily", "--rate-limit", "1/2", "--redis", url, "-v" }, { OMNI_API_KEY = token })
    proc.clean()
    assert.equal(0, status, err)
    assert.matches("^omni reset%-cache daily: reset", out)
    local lines = support_cli.lines(err)
    assert.equal(2, #lines, err)
    assert.matches("^cachectl: omni reset_cache waits [01]%.%d+ s %(rate limit%)$", lines[1])
    assert.matches("^cachectl: omni reset_cache attempt 1: POST .* %-> 200 ", lines[2])
    local times = arrivals(m)
    assert.equal(2, #times)
    assert.is_true(times[2] - times[1] >= 2 - SLACK)
  end)
end)
