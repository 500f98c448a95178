-- coalesce = seconds, in one process: identical calls within the window share
-- one request's outcome (sequential calls, several clients, duplicates in a
-- batch); a shared outcome is a copy marked coalesced = true, with an event.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local socket = require "socket"
local cachectl = require "cachectl"

local UUID, MISSING = helpers.UUID, helpers.MISSING_UUID
local collector, of_type = helpers.collector, helpers.of_type

describe("coalesce (in the process)", function()
  local srv = server.use()

  local function omni(opts)
    return cachectl.omni.new(helpers.merge({ token = helpers.uid("tok-co"), base_url = srv.base }, opts))
  end

  it("sends one request for identical calls within the window; the later get a marked copy", function()
    local events, on_event = collector()
    local c = omni{ coalesce = 30, on_event = on_event }
    local first = assert(c:reset_cache(UUID, "daily"))
    local second = assert(c:reset_cache(UUID, "daily"))
    local third = assert(c:reset_cache(UUID, "daily"))
    assert.equal(1, #srv:requests())
    assert.is_nil(first.coalesced)
    assert.is_true(second.coalesced)
    assert.is_true(third.coalesced)
    assert.equal("daily", second.cache_reset.policy_name)
    assert.same(first.cache_reset, second.cache_reset)
    -- a copy: changing one outcome changes no other
    second.cache_reset.policy_name = "changed"
    assert.equal("daily", third.cache_reset.policy_name)
    assert.equal("daily", first.cache_reset.policy_name)
    local co = of_type(events, "coalesced")
    assert.equal(2, #co)
    assert.same({ type = "coalesced", service = "omni", call = "reset_cache" }, co[1])
  end)

  it("sends again once the window has passed", function()
    local c = omni{ coalesce = 0.2 }
    assert(c:reset_cache(UUID, "daily"))
    socket.sleep(0.3)
    local again = assert(c:reset_cache(UUID, "daily"))
    assert.is_nil(again.coalesced)
    assert.equal(2, #srv:requests())
  end)

  it("keeps different calls apart: another policy, model, body or credential", function()
    local c = omni{ coalesce = 30 }
    assert(c:reset_cache(UUID, "daily"))
    assert(c:reset_cache(UUID, "hourly"))
    assert(c:reset_cache(UUID, "daily", { reset_at = "2020-01-02T03:04:05Z" }))
    assert(omni{ coalesce = 30 }:reset_cache(UUID, "daily"))
    assert.equal(4, #srv:requests())
  end)

  it("is shared by several clients of the process with the same credential", function()
    local token = helpers.uid("tok-shared")
    local a = cachectl.omni.new{ token = token, base_url = srv.base, coalesce = 30 }
    local b = cachectl.omni.new{ token = token, base_url = srv.base }
    assert(a:reset_cache(UUID, "daily"))
    local res = assert(b:reset_cache(UUID, "daily", { coalesce = 30 }))
    assert.is_true(res.coalesced)
    assert.equal(1, #srv:requests())
  end)

  it("is off without the option, and as a call option turns on for that call", function()
    local c = omni()
    assert(c:reset_cache(UUID, "daily"))
    assert(c:reset_cache(UUID, "daily"))
    assert.equal(2, #srv:requests())
    assert(c:reset_cache(UUID, "weekly", { coalesce = 30 }))
    local res = assert(c:reset_cache(UUID, "weekly", { coalesce = 30 }))
    assert.is_true(res.coalesced)
    assert.equal(3, #srv:requests())
  end)

  it("shares a failure: the same error, marked coalesced", function()
    local c = omni{ coalesce = 30 }
    local _, e1 = c:reset_cache(MISSING, "daily")
    local _, e2 = c:reset_cache(MISSING, "daily")
    assert.equal(1, #srv:requests())
    assert.equal("http", e1.kind)
    assert.is_nil(e1.coalesced)
    assert.equal(e1.kind, e2.kind)
    assert.equal(e1.status, e2.status)
    assert.equal(e1.message, e2.message)
    assert.is_true(e2.coalesced)
    assert.equal(tostring(e1), tostring(e2))
  end)

  it("does not keep an outcome that sent nothing", function()
    local c = omni{ coalesce = 30 }
    local _, e1 = c:reset_cache(UUID, "..")
    local _, e2 = c:reset_cache(UUID, "..")
    assert.equal("invalid", e1.kind)
    assert.is_nil(e2.coalesced)
    assert.equal(0, #srv:requests())
  end)

  it("works for ModelsLab calls too (a queue clear that restarts the server runs once)", function()
    local ml = cachectl.modelslab.new{ key = helpers.uid("k-co"), base_url = srv.base, coalesce = 30 }
    assert(ml:clear_queue{ product = "flux", deploy_type = "flux_2_dev" })
    local res = assert(ml:clear_queue{ product = "flux", deploy_type = "flux_2_dev" })
    assert.is_true(res.coalesced)
    assert(ml:clear_queue{ product = "flux" })
    assert.equal(2, #srv:requests())
  end)

  it("never applies to request", function()
    local c = omni{ coalesce = 30 }
    assert(c:request("POST", "/v1/models/" .. UUID .. "/cache_reset/daily"))
    assert(c:request("POST", "/v1/models/" .. UUID .. "/cache_reset/daily"))
    assert.equal(2, #srv:requests())
    assert.error_matches(function() c:request("GET", "/v1/models", nil, { coalesce = 5 }) end,
      "unknown option 'coalesce'")
  end)

  it("refuses a bad window: invalid, nothing sent; a wrong type raises", function()
    local c = omni()
    local res, err = c:reset_cache(UUID, "daily", { coalesce = -1 })
    assert.is_nil(res)
    assert.equal("invalid", err.kind)
    assert.equal("coalesce", err.field)
    assert.equal(0, err.attempts)
    assert.equal(0, #srv:requests())
    assert.error_matches(function() c:reset_cache(UUID, "daily", { coalesce = "5" }) end,
      "'coalesce' must be a number")
    assert.error_matches(function() cachectl.omni.new{ coalesce = true } end, "'coalesce' must be a number")
  end)

  describe("in a batch", function()
    it("sends duplicates once each and fans the outcome out, in input order", function()
      local events, on_event = collector()
      local c = omni{ coalesce = 30, on_event = on_event }
      local names = { "daily", "hourly", "daily", "weekly", "hourly", "daily" }
      local results = c:reset_caches(UUID, names, { concurrency = 4 })
      assert.equal(3, #srv:requests())
      local sent = {}
      for _, r in ipairs(srv:requests()) do sent[#sent + 1] = r.path:match("[^/]+$") end
      table.sort(sent)
      assert.same({ "daily", "hourly", "weekly" }, sent)
      for i, name in ipairs(names) do
        assert.equal(name, results[i].policy)
        assert.equal(name, results[i].result.cache_reset.policy_name)
      end
      assert.is_nil(results[1].result.coalesced)
      assert.is_true(results[3].result.coalesced)
      assert.is_true(results[5].result.coalesced)
      assert.is_true(results[6].result.coalesced)
      assert.is_nil(results[4].result.coalesced)
      assert.equal(3, #of_type(events, "coalesced"))
    end)

    it("takes stored outcomes of earlier calls", function()
      local c = omni{ coalesce = 30 }
      assert(c:reset_cache(UUID, "daily"))
      local results = c:reset_caches(UUID, { "daily", "hourly" })
      assert.is_true(results[1].result.coalesced)
      assert.is_nil(results[2].result.coalesced)
      local again = assert(c:reset_cache(UUID, "hourly"))
      assert.is_true(again.coalesced)
      assert.equal(2, #srv:requests())
    end)

    it("without coalesce sends every item", function()
      local results = omni():reset_caches(UUID, { "daily", "daily" })
      assert.is_nil(results[2].result.coalesced)
      assert.equal(2, #srv:requests())
    end)
  end)
end)
