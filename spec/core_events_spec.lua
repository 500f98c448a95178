-- on_event of cachectl.core: one event after each attempt, one before each
-- wait, in order, with the fields the contract names; the function is the
-- one given when the call started; an error it raises ends the call cleanly
-- and reaches the caller.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"

local uid, UUID, shape = helpers.uid, helpers.UUID, helpers.shape

describe("on_event #slow", function()
  local srv = server.use()

  local function ml(events, over)
    return helpers.merge({ key = uid("key"), base_url = srv.base, retries = 0, timeout = 10,
      on_event = helpers.recorder(events) }, over)
  end

  it("gets one attempt event for a call that succeeds", function()
    local events, on_event = helpers.collector()
    local res, err = core.omni.reset_cache{ token = uid("tok"), base_url = srv.base, model_id = UUID,
      policy = "daily", on_event = on_event }
    assert.is_nil(err)
    assert.is_true(res.success)
    assert.equal(1, #events)
    local ev = events[1]
    assert.equal("attempt", ev.type)
    assert.equal("omni", ev.service)
    assert.equal("reset_cache", ev.call)
    assert.equal("POST", ev.method)
    assert.equal(srv.base .. "/v1/models/" .. UUID .. "/cache_reset/daily", ev.url)
    assert.equal(200, ev.status)
    assert.is_nil(ev.kind)
    assert.equal(1, ev.attempt)
    assert.is_number(ev.ms)
    assert.is_true(ev.ms >= 0)
    assert.equal(1, #srv:requests())
  end)

  it("tells a failed attempt, the backoff, and the retry apart", function()
    local events = {}
    local res = core.modelslab.clear_cache(ml(events, { key = uid("key") .. " fault=503 times=1", retries = 1 }))
    assert.equal("success", res.status)
    assert.same({ "attempt", "wait/backoff", "attempt" }, shape(events))
    assert.equal(503, events[1].status)
    assert.equal("http", events[1].kind)
    assert.equal(1, events[1].attempt)
    -- full jitter under a 0.5 s cap for the first retry
    assert.is_true(events[2].wait >= 0 and events[2].wait <= 0.5, "wait " .. events[2].wait)
    assert.equal(2, events[2].attempt)
    assert.equal("modelslab", events[2].service)
    assert.equal("clear_cache", events[2].call)
    assert.equal(200, events[3].status)
    assert.is_nil(events[3].kind)
    assert.equal(2, events[3].attempt)
    assert.equal(2, #srv:requests())
  end)

  it("says when a wait is the service's Retry-After", function()
    local events = {}
    local res = core.modelslab.clear_cache(ml(events, { key = uid("key") .. " fault=429 times=1", retries = 1 }))
    assert.equal("success", res.status)
    assert.same({ "attempt", "wait/retry_after", "attempt" }, shape(events))
    assert.equal("rate_limited", events[1].kind)
    assert.equal(429, events[1].status)
    assert.equal(1, events[2].wait)
  end)

  it("says when a wait is the client-side rate limit", function()
    local events, key, limit = {}, uid("key"), { requests = 1, per = 1 }
    assert.is_table((core.modelslab.clear_cache(ml(events, { key = key, rate_limit = limit }))))
    assert.is_table((core.modelslab.clear_cache(ml(events, { key = key, rate_limit = limit }))))
    assert.same({ "attempt", "wait/rate_limit", "attempt" }, shape(events))
    assert.is_true(events[2].wait > 0 and events[2].wait <= 1, "wait " .. events[2].wait)
    assert.equal(1, events[2].attempt)
  end)

  it("reports a connection failure without a status", function()
    local events = {}
    local _, err = core.modelslab.clear_cache(ml(events, { key = uid("key") .. " fault=refuse" }))
    assert.equal("connect", err.kind)
    assert.same({ "attempt" }, shape(events))
    assert.equal("connect", events[1].kind)
    assert.is_nil(events[1].status)
  end)

  it("never shows the credential in the URL", function()
    local events = {}
    local key = helpers.secret()
    core.modelslab.request(ml(events, { key = key, method = "GET", path = "/v5/clear_cache?echo=" .. key }))
    assert.equal(1, #events)
    assert.is_nil(helpers.find_secret(events, key))
    assert.matches("/v5/clear_cache?echo=", events[1].url, 1, true)
  end)

  it("calls the function given when the call started, whatever the table holds later", function()
    local first, later = {}, {}
    local opts = ml(first, { key = uid("key") .. " fault=503 times=1", retries = 1 })
    local given = opts.on_event
    opts.on_event = function(ev)
      given(ev)
      opts.on_event = function(e) later[#later + 1] = e end
      collectgarbage()
    end
    assert.is_table((core.modelslab.clear_cache(opts)))
    assert.equal(3, #first)
    assert.equal(0, #later)
  end)

  it("gives each batch item its own function", function()
    local a, b = {}, {}
    local items = core.session():batch("modelslab", "clear_cache", { ml(a), ml(b), ml(a) })
    for i = 1, 3 do assert.is_nil(items[i].err) end
    assert.same({ "attempt", "attempt" }, shape(a))
    assert.same({ "attempt" }, shape(b))
  end)

  it("may make a call of its own on another session", function()
    local other, nested = core.session(), {}
    local res = core.modelslab.clear_cache(ml({}, { on_event = function()
      nested[#nested + 1] = other:call("modelslab", "clear_cache", { key = uid("key"), base_url = srv.base })
    end }))
    assert.equal("success", res.status)
    assert.equal("success", nested[1].status)
    other:close()
    assert.equal(2, #srv:requests())
  end)

  describe("raising an error", function()
    it("ends the call and reaches the caller; the session works afterwards", function()
      local s = core.session()
      local opts = ml({}, { key = uid("key") .. " fault=503", retries = 2 })
      opts.on_event = function(ev) if ev.type == "wait" then error("stop here") end end
      local ok, msg = pcall(s.call, s, "modelslab", "clear_cache", opts)
      assert.is_false(ok)
      assert.matches("stop here", msg)
      assert.equal(1, #srv:requests())      -- the retry never went out
      local res, err = s:call("modelslab", "clear_cache", ml({}))
      assert.is_nil(err)
      assert.equal("success", res.status)
      s:close()
    end)

    it("ends a batch with transfers in flight and leaves the session usable", function()
      local s = core.session()
      local list = {}
      for i = 1, 4 do list[i] = ml({}, { key = uid("key") .. " hold=" .. (0.05 * i) }) end
      list[1].on_event = function() error({ code = 42 }) end
      local ok, e = pcall(s.batch, s, "modelslab", "clear_cache", list, 4)
      assert.is_false(ok)
      assert.same({ code = 42 }, e)
      local items = s:batch("modelslab", "clear_cache", { ml({}), ml({}) })
      assert.equal("success", items[1].result.status)
      assert.equal("success", items[2].result.status)
      s:close()
    end)

    it("frees everything (valgrind)", function()
      local clean, out = helpers.valgrind_lua(string.format([[
        local core = require "cachectl.core"
        local s = core.session()
        for i = 1, 3 do
          local ok = pcall(s.call, s, "omni", "reset_cache", { token = "tok" .. i, base_url = %q,
            model_id = %q, policy = "daily", on_event = function() error("boom") end })
          assert(not ok)
        end
        s:close()
      ]], srv.base, UUID))
      if clean == nil then
        pending("needs valgrind, Lua 5.4 and no AddressSanitizer")
        return
      end
      assert.is_true(clean, out)
    end)
  end)
end)
