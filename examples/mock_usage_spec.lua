-- How to test your own code against the cachectl mock server.
--
-- `purge` stands for a function of your application: it resets some Omni
-- cache policies and reports the ones that failed. The spec starts the mock,
-- points a client at it, and checks both what `purge` returns and what
-- arrived on the wire. Run it with:  busted examples/mock_usage_spec.lua
-- (docs/mock.md describes the mock in full).
local cachectl = require "cachectl"
local mock = require "cachectl.mock"

local MODEL = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

-- Your code: resets `policies` of `model`; returns the names that failed.
local function purge(omni, model, policies, opts)
  local failed = {}
  for _, r in ipairs(omni:reset_caches(model, policies, opts)) do
    if r.err then failed[#failed + 1] = r.policy end
  end
  return failed
end

describe("purge", function()
  local m

  setup(function() m = mock.start() end)       -- a mock server process on a free port
  teardown(function() m:stop() end)
  before_each(function() m:reset() end)        -- forget the last test's requests and models

  it("resets every policy", function()
    local omni = cachectl.omni.new{ token = "test-token", base_url = m.url .. "/api" }
    assert.same({}, purge(omni, MODEL, { "daily", "hourly" }))
    omni:close()

    local seen = {}
    for _, req in ipairs(m:requests()) do
      assert.equal("POST", req.method)
      assert.equal("Bearer test-token", req.headers.authorization)
      seen[#seen + 1] = req.path
    end
    table.sort(seen)
    assert.same({ "/api/v1/models/" .. MODEL .. "/cache_reset/daily",
                  "/api/v1/models/" .. MODEL .. "/cache_reset/hourly" }, seen)
  end)

  it("reports the policies the service refused", function()
    -- A credential can carry directives for the mock: here a 503 for the
    -- first request only, and no retries, so exactly one policy fails.
    local omni = cachectl.omni.new{ token = "test-token fault=503 times=1", base_url = m.url .. "/api",
                                    retries = 0, concurrency = 1 }
    assert.same({ "daily" }, purge(omni, MODEL, { "daily", "hourly" }))
    omni:close()
    assert.equal(2, #m:requests())
  end)

  it("never resets a policy the model does not declare", function()
    local omni = cachectl.omni.new{ token = "test-token", base_url = m.url .. "/api" }
    -- Your test's own model and its model file (the default set is restored by reset).
    m:define_models({ { id = MODEL, name = "Orders", yaml = [[
cache_policies:
  daily:
    max_cache_age: 24 hours
  hourly:
    max_cache_age: 1 hour
default_cache_policy: daily
]] } })
    assert.same({ "dialy" }, purge(omni, MODEL, { "dialy", "hourly" }, { check_policy = true }))
    omni:close()

    -- one read of the model file, then the one reset that was right
    local reqs = m:requests()
    assert.equal(2, #reqs)
    assert.equal("GET", reqs[1].method)
    assert.equal(1, reqs[1].path:find("/api/v1/models/" .. MODEL .. "/yaml?", 1, true))
    assert.equal("/api/v1/models/" .. MODEL .. "/cache_reset/hourly", reqs[2].path)
  end)
end)
