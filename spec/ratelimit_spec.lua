-- The client-side rate limit of cachectl.core as a sliding window: at most
-- `requests` starts in any window of `per` seconds, per credential, shared
-- by sessions and batches, a turn for every attempt, and a request whose
-- turn lies past its deadline ending at once with nothing sent. Windows are
-- computed from the arrival times the mock server records (`at`), never
-- from the client's own clock.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"

local uid, UUID, recorder = helpers.uid, helpers.UUID, helpers.recorder

-- The server stamps a request when it has read it, a few milliseconds after
-- the client started it; a window is checked this much shorter than `per`
-- so that such noise cannot make two starts `per` apart look closer.
local SLACK = tonumber(os.getenv("CACHECTL_SPEC_SLACK")) or 0.05
-- (the valgrind pass gives more: a batch of 60 under valgrind takes a good
-- part of a second to put its requests on the wire, so arrivals lag starts)

-- The arrival times of the recorded requests, in arrival order.
local function arrivals(srv)
  local times = {}
  for i, r in ipairs(srv:requests()) do
    assert(type(r.at) == "number", "the mock records no arrival time (field 'at' of its requests)")
    times[i] = r.at
  end
  return times
end

-- The most arrivals inside any half-open window [t, t + width) that starts
-- at an arrival.
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

local function waits_for(list, reason)
  local n = 0
  for _, ev in ipairs(list) do
    if ev.type == "wait" and ev.reason == reason then n = n + 1 end
  end
  return n
end

describe("the rate limit #slow", function()
  local srv = server.use()

  local function ml(key, over)
    return helpers.merge({ key = key, base_url = srv.base, retries = 0, timeout = 10 }, over)
  end

  local function omni(token, over)
    return helpers.merge({ token = token, base_url = srv.base, retries = 0, timeout = 10,
      model_id = UUID, policy = "daily" }, over)
  end

  local LIMIT = { requests = 2, per = 1 }

  it("lets no more than 2 of 6 sequential calls start in any second under {2, 1}", function()
    local key = uid("key")
    for i = 1, 6 do
      local res, err = core.modelslab.clear_cache(ml(key, { rate_limit = LIMIT }))
      assert.is_nil(err, err and ("call " .. i .. ": " .. tostring(err)))
      assert.equal("success", res.status)
    end
    local times = arrivals(srv)
    assert.equal(6, #times)
    -- (a token bucket that starts full lets a third start within the first second)
    assert.equal(2, busiest(times, LIMIT.per - SLACK))
  end)

  it("lets no more than 2 of a batch of 6 start in any second, whatever the concurrency", function()
    local token, list = uid("tok"), {}
    for i = 1, 6 do list[i] = omni(token, { policy = "p" .. i, rate_limit = LIMIT }) end
    local items = core.session():batch("omni", "reset_cache", list, 6)
    for i = 1, 6 do
      assert.is_nil(items[i].err, items[i].err and tostring(items[i].err))
      assert.equal("p" .. i, items[i].result.cache_reset.policy_name)
    end
    local times = arrivals(srv)
    assert.equal(6, #times)
    assert.equal(2, busiest(times, LIMIT.per - SLACK))
  end)

  it("is one window for every session and the module functions using a credential", function()
    local key = uid("key")
    local a, b = core.session(), core.session()
    for i = 1, 2 do
      assert.is_table((a:call("modelslab", "clear_cache", ml(key, { rate_limit = LIMIT }))), "round " .. i)
      assert.is_table((b:call("modelslab", "clear_cache", ml(key, { rate_limit = LIMIT }))), "round " .. i)
      assert.is_table((core.modelslab.clear_cache(ml(key, { rate_limit = LIMIT }))), "round " .. i)
    end
    a:close()
    b:close()
    local times = arrivals(srv)
    assert.equal(6, #times)
    assert.equal(2, busiest(times, LIMIT.per - SLACK))
  end)

  it("keeps the windows of two credentials apart", function()
    local events, limit = {}, { requests = 2, per = 30 }
    for _, key in ipairs{ uid("key"), uid("key") } do
      for _ = 1, 2 do
        assert.is_table((core.modelslab.clear_cache(ml(key, { rate_limit = limit, on_event = recorder(events) }))))
      end
    end
    assert.equal(4, #srv:requests())
    assert.equal(0, waits_for(events, "rate_limit"))
  end)

  it("gives a retry its own turn", function()
    -- both backoffs together are under 1.5 s: the third attempt is due
    -- well inside the 3 s window of the first
    local key, events, limit = uid("key") .. " fault=503 times=2", {}, { requests = 2, per = 3 }
    local res, err = core.modelslab.clear_cache(ml(key, { retries = 2, rate_limit = limit,
                                                          on_event = recorder(events) }))
    assert.is_nil(err, err and tostring(err))
    assert.equal("success", res.status)
    local times = arrivals(srv)
    assert.equal(3, #times)
    assert.equal(2, busiest(times, limit.per - SLACK))
    -- the third attempt waited for the window, after its backoff
    local kinds = {}
    for _, ev in ipairs(events) do kinds[#kinds + 1] = ev.type .. (ev.reason and ("/" .. ev.reason) or "") end
    assert.same({ "attempt", "wait/backoff", "attempt", "wait/backoff", "wait/rate_limit", "attempt" }, kinds)
  end)

  it("keeps the 61st of a burst of Omni resets a whole window after the first", function()
    local token, list, limit = uid("tok"), {}, { requests = 60, per = 2 }
    for i = 1, 61 do list[i] = omni(token, { policy = "p" .. i, rate_limit = limit }) end
    local items = core.session():batch("omni", "reset_cache", list, 61)
    for i = 1, 61 do assert.is_nil(items[i].err, items[i].err and tostring(items[i].err)) end
    local times = arrivals(srv)
    assert.equal(61, #times)
    assert.equal(60, busiest(times, limit.per - SLACK))
  end)

  describe("against a server that counts the same way", function()
    local strict

    setup(function() strict = server.start{ omni_rate_limit = 2, omni_rate_limit_per = 1 } end)
    teardown(function() if strict then strict:stop() end end)

    it("never draws a 429, for sequential calls and a batch", function()
      local token = uid("tok")
      local function opts(i)
        return { token = token, base_url = strict.base, retries = 0, timeout = 10, model_id = UUID,
                 policy = "p" .. i, rate_limit = LIMIT }
      end
      for i = 1, 4 do
        local res, err = core.omni.reset_cache(opts(i))
        assert.is_nil(err, err and ("call " .. i .. ": " .. tostring(err)))
        assert.is_true(res.success)
      end
      local list = {}
      for i = 1, 4 do list[i] = opts(i) end
      local items = core.session():batch("omni", "reset_cache", list, 4)
      for i = 1, 4 do assert.is_nil(items[i].err, items[i].err and ("item " .. i .. ": " .. tostring(items[i].err))) end
      assert.equal(8, #strict:requests())
    end)
  end)

  describe("past the deadline", function()
    it("ends at once with rate_limited, retry_after the wait, nothing sent", function()
      local key, limit, events = uid("key"), { requests = 1, per = 10 }, {}
      assert.is_table((core.modelslab.clear_cache(ml(key, { rate_limit = limit }))))
      local res, err = core.modelslab.clear_cache(ml(key, { rate_limit = limit, timeout = 1,
                                                            on_event = recorder(events) }))
      assert.is_nil(res)
      assert.equal("rate_limited", err.kind)
      assert.equal(0, err.attempts)
      assert.is_nil(err.status)
      assert.is_true(err.retry_after > 1 and err.retry_after <= 10, "retry_after " .. err.retry_after)
      assert.same({}, events)           -- no wait, no attempt
      assert.equal(1, #srv:requests())
    end)

    it("reserves nothing: the next caller is told the same turn", function()
      local key, limit = uid("key"), { requests = 1, per = 10 }
      assert.is_table((core.modelslab.clear_cache(ml(key, { rate_limit = limit }))))
      local _, first = core.modelslab.clear_cache(ml(key, { rate_limit = limit, timeout = 1 }))
      local _, second = core.modelslab.clear_cache(ml(key, { rate_limit = limit, timeout = 1 }))
      assert.equal("rate_limited", first.kind)
      assert.equal("rate_limited", second.kind)
      -- had the first reserved a start, the second's would lie 10 s later
      assert.is_true(second.retry_after <= first.retry_after, second.retry_after .. " > " .. first.retry_after)
      assert.equal(1, #srv:requests())
    end)

    it("ends a batch item that cannot have a turn, the others still run", function()
      local key, list = uid("key"), {}
      for i = 1, 3 do list[i] = ml(key, { rate_limit = { requests = 2, per = 10 }, timeout = 1 }) end
      local items = core.session():batch("modelslab", "clear_cache", list, 3)
      assert.equal("success", items[1].result.status)
      assert.equal("success", items[2].result.status)
      assert.equal("rate_limited", items[3].err.kind)
      assert.equal(0, items[3].err.attempts)
      assert.equal(2, #srv:requests())
    end)
  end)

  it("remembers a live window however many other credentials come after it", function()
    local limit = { requests = 1, per = 30 }
    local key = uid("key")
    assert.is_table((core.modelslab.clear_cache(ml(key, { rate_limit = limit }))))
    -- more credentials than the old fixed table of 64 held
    local list = {}
    for i = 1, 100 do list[i] = ml(uid("other"), { rate_limit = limit }) end
    local items = core.session():batch("modelslab", "clear_cache", list, 16)
    for i = 1, 100 do assert.is_nil(items[i].err, items[i].err and tostring(items[i].err)) end
    local res, err = core.modelslab.clear_cache(ml(key, { rate_limit = limit, timeout = 1 }))
    assert.is_nil(res)
    assert.equal("rate_limited", err.kind)
    assert.equal(101, #srv:requests())
  end)
end)
