-- on_event through the clients: the client option (or a call's own) reaches
-- every core call (attempt and wait events), the Lua layer adds its own
-- (coalesced), and an error raised by on_event reaches the caller.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local cachectl = require "cachectl"

local UUID = helpers.UUID
local collector = helpers.collector

describe("on_event (Lua layer)", function()
  local srv = server.use()

  it("hands the client's on_event to every call, and a call's own replaces it", function()
    local events, on_event = collector()
    local own, on_own = collector()
    local omni = cachectl.omni.new{ token = helpers.uid("tok-ev"), base_url = srv.base, on_event = on_event }
    local ml = cachectl.modelslab.new{ key = helpers.uid("k-ev"), base_url = srv.base, on_event = on_event }
    assert(omni:reset_cache(UUID, "daily"))
    assert(ml:clear_queue{ product = "face_gen" })
    omni:reset_caches(UUID, { "a", "b" })
    assert(omni:reset_cache(UUID, "hourly", { on_event = on_own }))
    local calls = {}
    for _, ev in ipairs(events) do
      assert.equal("attempt", ev.type)
      calls[#calls + 1] = ev.service .. "." .. ev.call .. " " .. ev.status
    end
    assert.same({ "omni.reset_cache 200", "modelslab.clear_queue 200", "omni.reset_cache 200",
                  "omni.reset_cache 200" }, calls)
    assert.equal(1, #own)
    assert.equal("POST", own[1].method)
    assert.matches("/cache_reset/hourly$", own[1].url)
  end)

  it("reports a retry's wait and both attempts, with no credential in any event", function()
    local events, on_event = collector()
    local token = helpers.secret("SECRETTOKEN") .. ";fault=503;times=1"
    local omni = cachectl.omni.new{ token = token, base_url = srv.base, on_event = on_event }
    assert(omni:reset_cache(UUID, "daily"))
    local types = {}
    for i, ev in ipairs(events) do types[i] = ev.type end
    assert.same({ "attempt", "wait", "attempt" }, types)
    assert.equal(503, events[1].status)
    assert.equal("backoff", events[2].reason)
    assert.equal(2, events[3].attempt)
    assert.is_nil(helpers.find_secret(events, token:match("^[^;]+")))
  end)

  it("adds a coalesced event for each shared outcome", function()
    local events, on_event = collector()
    local omni = cachectl.omni.new{ token = helpers.uid("tok-co-ev"), base_url = srv.base, on_event = on_event,
      coalesce = 30 }
    assert(omni:reset_cache(UUID, "daily"))
    assert(omni:reset_cache(UUID, "daily"))
    omni:reset_caches(UUID, { "daily", "daily" })
    local co = helpers.of_type(events, "coalesced")
    assert.equal(3, #co)
    for _, ev in ipairs(co) do
      assert.same({ type = "coalesced", service = "omni", call = "reset_cache" }, ev)
    end
    assert.equal(1, #srv:requests())
  end)

  it("lets an error raised by on_event reach the caller; the client stays usable", function()
    local omni = cachectl.omni.new{ token = helpers.uid("tok-raise"), base_url = srv.base, coalesce = 30,
      on_event = function(ev)
        if ev.type == "coalesced" then error("stop at " .. ev.type, 0) end
      end }
    assert(omni:reset_cache(UUID, "daily"))
    assert.error_matches(function() omni:reset_cache(UUID, "daily") end, "stop at coalesced")
    local res = assert(omni:reset_cache(UUID, "hourly"))
    assert.equal("hourly", res.cache_reset.policy_name)
    assert.equal(2, #srv:requests())
  end)

  it("refuses an on_event that is not a function", function()
    assert.error_matches(function() cachectl.omni.new{ on_event = "print" } end, "'on_event' must be a function")
    local omni = cachectl.omni.new{ token = "t", base_url = srv.base }
    assert.error_matches(function() omni:reset_cache(UUID, "daily", { on_event = true }) end,
      "'on_event' must be a function")
    assert.equal(0, #srv:requests())
  end)
end)
