-- How to test your own code against the cachectl mock server.
--
-- `purge` stands for a function of your application: it resets some Omni
-- cache policies and reports the ones that failed. The spec gets one mock
-- server for the file (cachectl.mock.busted), points a client at it, and
-- checks what `purge` returns and what arrived on the wire. Run it with
--   busted --lua=lua5.4 examples/mock_usage_spec.lua
-- from a checkout (after `make`), or anywhere with the cachectl and
-- cachectl-mock rocks installed (docs/mock.md, "A complete example spec").
local cachectl = require "cachectl"
local mock = require "cachectl.mock.busted"

local MODEL = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
local RESET = "/v1/models/" .. MODEL .. "/cache_reset/"

-- Your code: resets `policies` of `model`; returns the names that failed.
local function purge(omni, model, policies, opts)
  local failed = {}
  for _, r in ipairs(omni:reset_caches(model, policies, opts)) do
    if r.err then failed[#failed + 1] = r.policy end
  end
  return failed
end

describe("purge", function()
  -- One mock server for this block: started before its first test, reset
  -- before each test, stopped by its pid after the last, even when one fails.
  local m = mock.use()

  local function client(opts)
    local o = { token = "test-token", base_url = m.url .. "/api" }
    for k, v in pairs(opts or {}) do o[k] = v end
    return cachectl.omni.new(o)
  end

  it("resets every policy exactly once", function()
    local omni = client()
    assert.same({}, purge(omni, MODEL, { "daily", "hourly" }))
    omni:close()

    assert.equal(1, m:count{ method = "POST", path = RESET .. "daily" })
    assert.equal(1, m:count{ method = "POST", path = RESET .. "hourly" })
    for _, req in ipairs(m:requests()) do
      assert.equal("Bearer test-token", req.headers.authorization)
    end
  end)

  it("reports the policies the service refused", function()
    -- The reset of daily answers 503 once; without retries, daily fails.
    m:fault{ method = "POST", path = RESET .. "daily", fault = "503", times = 1 }
    local omni = client{ retries = 0 }
    assert.same({ "daily" }, purge(omni, MODEL, { "daily", "hourly" }))
    omni:close()
    assert.equal(1, m:faults()[1].uses)
    assert.equal(1, m:count{ path = RESET .. "hourly" })
  end)

  it("never resets a policy the model does not declare", function()
    -- Your test's own model and its model file (the reset before the next
    -- test restores the mock's models).
    m:define_models({ { id = MODEL, name = "Orders", yaml = [[
cache_policies:
  daily:
    max_cache_age: 24 hours
  hourly:
    max_cache_age: 1 hour
default_cache_policy: daily
]] } })
    local omni = client()
    assert.same({ "dialy" }, purge(omni, MODEL, { "dialy", "hourly" }, { check_policy = true }))
    omni:close()

    -- one read of the model file, then the one reset that was right
    assert.equal(1, m:count{ method = "GET", path = "/v1/models/" .. MODEL .. "/yaml" })
    assert.equal(0, m:count{ path = RESET .. "dialy" })
    assert.equal(1, m:count{ method = "POST", path = RESET .. "hourly" })
  end)
end)
