-- The clients with rate_limit.redis and coalesce: the turn taken in Redis
-- (cachectl.fleet) and handed to the core as a delay; no turn within the
-- timeout -> rate_limited, nothing sent; Redis away -> a redis_fallback event
-- and the process's own window, or with redis_required a connect error;
-- $CACHECTL_REDIS_URL as the default; batches; coalescing across processes.
-- Real redis-server and real child processes.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local redis_server = require "support.redis_server"
local cjson = require "cjson"
local cachectl = require "cachectl"
local core = require "cachectl.core"

local UUID = helpers.UUID
local collector, of_type, with_env = helpers.collector, helpers.of_type, helpers.with_env
-- The interpreter running this spec, for the child processes.
local LUA = type(rawget(_G, "jit")) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")

describe("clients with rate_limit.redis and coalesce #redis", function()
  local srv = server.use()
  local redis, dead

  setup(function()
    redis_server.need_redis_lua()
    redis = redis_server.start()
    dead = "redis://127.0.0.1:" .. helpers.free_port() .. "/0"
  end)
  teardown(function()
    if redis then redis:stop() end
  end)

  local function omni(token, opts)
    return cachectl.omni.new(helpers.merge({ token = token, base_url = srv.base }, opts))
  end

  -- Runs `code` in `n` child processes at once (the same token and URLs);
  -- returns what each printed, decoded from JSON.
  local function children(n, token, code)
    local script = os.tmpname()
    helpers.write_file(script, redis_server.prelude() .. string.format(
      "local TOKEN, BASE, REDIS = %q, %q, %q\nlocal cachectl = require 'cachectl'\n", token, srv.base, redis:url())
      .. code)
    local procs, out = {}, {}
    for i = 1, n do procs[i] = io.popen(LUA .. " " .. script .. " 2>&1") end
    for i = 1, n do
      local text = procs[i]:read("*a")
      procs[i]:close()
      out[i] = assert(select(2, pcall(cjson.decode, text)), text)
    end
    os.remove(script)
    return out
  end

  it("takes each turn in Redis: keys by the credential's digest, with a TTL, never the token", function()
    local token = helpers.secret("SECRETTOKEN")
    local c = omni(token, { rate_limit = { requests = 3, per = 60, redis = redis:url() } })
    for _ = 1, 2 do assert(c:reset_cache(UUID, "daily")) end
    local admin = redis:client()
    local keys = admin:keys("cachectl:rl:omni:" .. core.sha256(token) .. "*")
    assert.equal(1, #keys)
    assert.equal(2, admin:llen(keys[1]))
    assert.is_true(admin:pttl(keys[1]) > 0)
    for _, k in ipairs(admin:keys("*")) do
      assert.is_nil(k:find(token, 1, true))
      assert.is_nil(helpers.find_secret(admin:lrange(k, 0, -1), token))
    end
  end)

  it("shares the window with other processes: no turn within the timeout -> rate_limited, nothing sent", function()
    local token = helpers.uid("tok-late")
    local c = omni(token, { timeout = 1, rate_limit = { requests = 1, per = 60, redis = redis:url() } })
    assert(c:reset_cache(UUID, "daily"))
    local _, err = c:reset_cache(UUID, "hourly")
    assert.equal("rate_limited", err.kind)
    assert.equal(0, err.attempts)
    assert.is_true(err.retry_after > 1 and err.retry_after <= 60)
    -- another process with the same key and limit waits for the same window
    local out = children(1, token, [[
      local c = cachectl.omni.new{ token = TOKEN, base_url = BASE, timeout = 1,
        rate_limit = { requests = 1, per = 60, redis = REDIS } }
      local res, err = c:reset_cache("]] .. UUID .. [[", "weekly")
      print(require("cjson").encode{ ok = res ~= nil, kind = err and err.kind, attempts = err and err.attempts })
    ]])
    assert.same({ ok = false, kind = "rate_limited", attempts = 0 }, out[1])
    assert.equal(1, #srv:requests())
  end)

  it("falls back to the process's own window when Redis cannot be reached, with an event", function()
    local events, on_event = collector()
    local c = omni(helpers.uid("tok-fb"), { timeout = 1, on_event = on_event,
      rate_limit = { requests = 1, per = 60, redis = dead } })
    assert(c:reset_cache(UUID, "daily"))
    local _, err = c:reset_cache(UUID, "hourly")       -- the core's own window of 1 per 60 s
    assert.equal("rate_limited", err.kind)
    assert.equal(0, err.attempts)
    local fb = of_type(events, "redis_fallback")
    assert.equal(2, #fb)
    assert.equal("omni", fb[1].service)
    assert.equal("reset_cache", fb[1].call)
    assert.matches("Redis", fb[1].message)
    assert.equal(1, #srv:requests())
  end)

  it("with redis_required fails with connect naming Redis, nothing sent", function()
    local events, on_event = collector()
    local c = omni(helpers.uid("tok-req"), { on_event = on_event,
      rate_limit = { requests = 5, per = 1, redis = dead, redis_required = true } })
    local res, err = c:reset_cache(UUID, "daily")
    assert.is_nil(res)
    assert.equal("connect", err.kind)
    assert.equal(0, err.attempts)
    assert.matches("Redis", err.message)
    assert.equal(0, #of_type(events, "redis_fallback"))
    local results = c:reset_caches(UUID, { "a", "b" })
    assert.equal("connect", results[1].err.kind)
    assert.equal("connect", results[2].err.kind)
    assert.equal(0, #srv:requests())
  end)

  it("falls back when Redis stops mid-run", function()
    local spare = redis_server.start()
    local events, on_event = collector()
    local c = omni(helpers.uid("tok-stop"), { on_event = on_event,
      rate_limit = { requests = 5, per = 1, redis = spare:url() } })
    assert(c:reset_cache(UUID, "daily"))
    assert.equal(0, #of_type(events, "redis_fallback"))
    spare:stop()
    assert(c:reset_cache(UUID, "daily"))
    assert.equal(1, #of_type(events, "redis_fallback"))
    assert.equal(2, #srv:requests())
  end)

  it("refuses a malformed Redis URL: invalid, nothing sent", function()
    local _, err = omni(helpers.uid("tok-url"), { rate_limit = { redis = "http://127.0.0.1:6379" } })
      :reset_cache(UUID, "daily")
    assert.equal("invalid", err.kind)
    assert.equal("rate_limit", err.field)
    assert.equal(0, #srv:requests())
  end)

  it("takes $CACHECTL_REDIS_URL as the default where the client has a rate limit", function()
    with_env({ CACHECTL_REDIS_URL = dead }, function(c)
      local events, on_event = collector()
      local function fallbacks(client, call, ...)
        local before = #of_type(events, "redis_fallback")
        assert(client[call](client, ...))
        return #of_type(events, "redis_fallback") - before
      end
      local token, key = helpers.uid("tok-env"), helpers.uid("k-env")
      local with_default = c.omni.new{ token = token, base_url = srv.base, on_event = on_event }
      local off = c.omni.new{ token = token, base_url = srv.base, on_event = on_event, rate_limit = false }
      local ml = c.modelslab.new{ key = key, base_url = srv.base, on_event = on_event }
      local ml_limited = c.modelslab.new{ key = key, base_url = srv.base, on_event = on_event,
        rate_limit = { requests = 5, per = 1 } }
      assert.equal(1, fallbacks(with_default, "reset_cache", UUID, "daily"))
      assert.equal(0, fallbacks(off, "reset_cache", UUID, "daily"))
      assert.equal(0, fallbacks(ml, "clear_cache"))
      assert.equal(1, fallbacks(ml_limited, "clear_cache"))
    end)
  end)

  it("gives each item of a batch its own turn; one fallback event per batch", function()
    local c = omni(helpers.uid("tok-batch"), { timeout = 1,
      rate_limit = { requests = 2, per = 60, redis = redis:url() } })
    local results = c:reset_caches(UUID, { "a", "b", "c" })
    assert.is_table(results[1].result)
    assert.is_table(results[2].result)
    assert.equal("rate_limited", results[3].err.kind)
    assert.equal(0, results[3].err.attempts)
    assert.equal(2, #srv:requests())
    srv:reset()
    local events, on_event = collector()
    local down = omni(helpers.uid("tok-batch-down"), { on_event = on_event,
      rate_limit = { requests = 10, per = 1, redis = dead } })
    results = down:reset_caches(UUID, { "a", "b", "c" })
    for i = 1, 3 do assert.is_table(results[i].result) end
    assert.equal(1, #of_type(events, "redis_fallback"))
    assert.equal(3, #srv:requests())
  end)

  -- The most arrivals at the mock that any window of `per` seconds holds
  -- (less a 50 ms allowance for loopback latency, as the mock's own limit).
  local function busiest(token, per, in_label)
    local times = {}
    for _, r in ipairs(srv:requests()) do
      if r.headers.authorization == "Bearer " .. token then times[#times + 1] = r.at end
    end
    table.sort(times)
    local most = 0
    for i = 1, #times do
      local n = 0
      for j = i, #times do
        if times[j] < times[i] + per - 0.05 then n = n + 1 end
      end
      if n > most then most = n end
    end
    local shown = {}
    for i, t in ipairs(times) do shown[i] = string.format("%.3f", t - times[1]) end
    io.stderr:write("\n  three processes, {5, 2}", in_label or "", ": arrivals (s after the first): ",
      table.concat(shown, " "), "\n")
    return most, #times
  end

  -- Three processes, five resets each, one token and { requests = 5, per = 2 }.
  local function three_processes(token, in_redis)
    return children(3, token, [[
      local c = cachectl.omni.new{ token = TOKEN, base_url = BASE, timeout = 30,
        rate_limit = { requests = 5, per = 2]] .. (in_redis and ", redis = REDIS" or "") .. [[ } }
      local ok = 0
      for i = 1, 5 do
        if c:reset_cache("]] .. UUID .. [[", "p" .. i) then ok = ok + 1 end
      end
      print(require("cjson").encode{ ok = ok })
    ]])
  end

  it("keeps one window for three processes: no 2 s window holds more than 5 starts", function()
    local token = helpers.uid("tok-three")
    for _, o in ipairs(three_processes(token, true)) do assert.equal(5, o.ok) end
    local most, n = busiest(token, 2, " in Redis")
    assert.equal(15, n)
    assert.is_true(most <= 5, most .. " starts in one 2 s window")
    -- the same three processes, each with its own window, do exceed it:
    -- what the check above measures is the sharing
    local alone = helpers.uid("tok-three-alone")
    for _, o in ipairs(three_processes(alone, false)) do assert.equal(5, o.ok) end
    most, n = busiest(alone, 2, " without Redis")
    assert.equal(15, n)
    assert.is_true(most > 5, most .. " starts in one 2 s window")
  end)

  it("coalesces across processes: five at once send one request, four are marked coalesced", function()
    local token = helpers.uid("tok-fleet-co")
    local out = children(5, token, [[
      local c = cachectl.omni.new{ token = TOKEN, base_url = BASE, coalesce = 30,
        rate_limit = { requests = 60, per = 60, redis = REDIS } }
      local res, err = c:reset_cache("]] .. UUID .. [[", "daily")
      print(require("cjson").encode{ ok = res ~= nil, coalesced = res and res.coalesced or false,
        policy = res and res.cache_reset.policy_name, err = err and tostring(err) })
    ]])
    local shared = 0
    for _, o in ipairs(out) do
      assert.is_true(o.ok, o.err)
      assert.equal("daily", o.policy)
      if o.coalesced then shared = shared + 1 end
    end
    assert.equal(4, shared)
    assert.equal(1, #srv:requests())
    -- this process too, later in the window
    local events, on_event = collector()
    local res = assert(omni(token, { coalesce = 30, on_event = on_event,
      rate_limit = { requests = 60, per = 60, redis = redis:url() } }):reset_cache(UUID, "daily"))
    assert.is_true(res.coalesced)
    assert.equal(1, #of_type(events, "coalesced"))
    assert.equal(1, #srv:requests())
  end)

  -- docs/fleet.md: "A waiter stops waiting as soon as the claim is gone
  -- without an outcome, and sends its own request at once": it claims again
  -- first (a single call did; a batch item does too), so the outcome it gets
  -- is stored for the callers after it.
  it("a waiter whose first caller leaves no outcome claims again, sends, and stores its outcome", function()
    local token = helpers.uid("tok-fleet-again")
    local lim = { requests = 60, per = 60, redis = redis:url() }
    local admin = redis:client()
    for _, batch in ipairs{ false, true } do
      local policy = batch and "hourly" or "daily"
      local key = "cachectl:co:" .. core.identity("omni", "reset_cache", { token = token, base_url = srv.base,
        model_id = UUID, policy = policy }):lower()
      -- another process's claim, which ends without an outcome
      admin:set(key, "pending:someone-else", "PX", 300)
      local c = omni(token, { coalesce = 30, timeout = 5, rate_limit = lim })
      local res
      if batch then res = c:reset_caches(UUID, { policy })[1].result else res = c:reset_cache(UUID, policy) end
      assert.is_table(res, policy)
      assert.is_nil(res.coalesced, policy)
      assert.equal("{", (admin:get(key) or ""):sub(1, 1), policy .. ": the outcome is not stored")
    end
    admin:quit()
    assert.equal(2, #srv:requests())
  end)
end)
