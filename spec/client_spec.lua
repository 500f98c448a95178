-- The Lua layer: clients, environment defaults, per-call overrides, close,
-- tostring, batches.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local cjson = require "cjson"
local cachectl = require "cachectl"

local with_env = helpers.with_env

local MODEL = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

describe("cachectl (Lua layer)", function()
  local srv = server.use()

  it("returns the same service tables as the core, extended with new", function()
    local core = require "cachectl.core"
    assert.equal(core.modelslab, cachectl.modelslab)
    assert.equal(core.omni, cachectl.omni)
    assert.is_function(cachectl.modelslab.new)
    assert.equal(core.version, cachectl.version)
    assert.is_nil(rawget(_G, "cachectl"))
  end)

  it("takes the key and base URL from the environment", function()
    with_env({ MODELSLAB_API_KEY = "env-key-123", MODELSLAB_BASE_URL = srv.base }, function(c)
      local ml = c.modelslab.new()
      local res, err = ml:clear_cache()
      assert.is_nil(err)
      assert.equal("success", res.status)
      local req = srv:requests()[1]
      assert.equal("/api/v5/clear_cache", req.path)
      assert.same({ key = "env-key-123" }, cjson.decode(req.body))
    end)
  end)

  it("prefers explicit options over the environment", function()
    with_env({ MODELSLAB_API_KEY = "env-key", MODELSLAB_BASE_URL = "http://127.0.0.1:1/api" }, function(c)
      local ml = c.modelslab.new{ key = "explicit-key", base_url = srv.base }
      assert.truthy(ml:clear_cache())
      assert.same({ key = "explicit-key" }, cjson.decode(srv:requests()[1].body))
    end)
  end)

  it("an Omni instance given to new wins over $OMNI_BASE_URL", function()
    with_env({ OMNI_API_KEY = "env-token", OMNI_BASE_URL = srv.base }, function(c)
      local omni = c.omni.new{ instance = "acme" }
      assert.matches("https://acme.omniapp.co/api", tostring(omni), 1, true)
      local from_env = c.omni.new()
      local res, err = from_env:reset_cache(MODEL, "daily")
      assert.is_nil(err)
      assert.equal("daily", res.cache_reset.policy_name)
      assert.equal("Bearer env-token", srv:requests()[1].headers.authorization)
    end)
  end)

  it("says which variable to set when the credential is missing", function()
    with_env({}, function(c)
      local res, err = c.omni.new{ base_url = srv.base }:reset_cache(MODEL, "daily")
      assert.is_nil(res)
      assert.equal("invalid", err.kind)
      assert.equal("token", err.field)
      assert.matches("OMNI_API_KEY", err.message, 1, true)
      local _, err2 = c.modelslab.new{ base_url = srv.base }:clear_cache()
      assert.equal("key", err2.field)
      assert.matches("MODELSLAB_API_KEY", err2.message, 1, true)
    end)
    assert.equal(0, #srv:requests())
  end)

  it("uses the client's defaults and lets a call override them", function()
    local ml = cachectl.modelslab.new{ key = "k-defaults", base_url = srv.base, product = "video" }
    assert.truthy(ml:clear_queue())
    assert.truthy(ml:clear_queue{ product = "3d" })
    assert.truthy(ml:clear_cache())          -- product is not an option of clear_cache: not passed
    local reqs = srv:requests()
    assert.equal("/api/v1/enterprise/video/clear_queue", reqs[1].path)
    assert.equal("/api/v1/enterprise/3d/clear_queue", reqs[2].path)
    assert.equal("/api/v5/clear_cache", reqs[3].path)
  end)

  it("clear_queue defaults to the 3d product", function()
    local ml = cachectl.modelslab.new{ key = "k-3d", base_url = srv.base }
    assert.truthy(ml:clear_queue())
    assert.equal("/api/v1/enterprise/3d/clear_queue", srv:requests()[1].path)
  end)

  it("a call may name another host than the client's", function()
    local omni = cachectl.omni.new{ token = "tok-host", instance = "acme" }
    local res, err = omni:reset_cache(MODEL, "daily", { base_url = srv.base })
    assert.is_nil(err)
    assert.equal("daily", res.cache_reset.policy_name)
  end)

  it("takes a default model from new, which an argument overrides", function()
    local omni = cachectl.omni.new{ token = "tok-model", base_url = srv.base, model_id = MODEL }
    assert.truthy(omni:reset_cache(nil, "daily"))
    local other = "00000000-0000-0000-0000-0000000000aa"
    assert.truthy(omni:reset_cache(other, "daily"))
    assert.truthy(omni:reset_cache(nil, "weekly"))
    local reqs = srv:requests()
    assert.equal("/api/v1/models/" .. MODEL .. "/cache_reset/daily", reqs[1].path)
    assert.equal("/api/v1/models/" .. other .. "/cache_reset/daily", reqs[2].path)
    assert.equal("/api/v1/models/" .. MODEL .. "/cache_reset/weekly", reqs[3].path)
  end)

  it("passes reset_at through", function()
    local omni = cachectl.omni.new{ token = "tok-reset", base_url = srv.base }
    assert.truthy(omni:reset_cache(MODEL, "daily", { reset_at = "2026-01-02T03:04:05Z" }))
    assert.same({ resetAt = "2026-01-02T03:04:05Z" }, cjson.decode(srv:requests()[1].body))
  end)

  it("raises on unknown options and wrong types, in new and in calls", function()
    assert.error_matches(function() cachectl.omni.new{ modelId = MODEL } end, "unknown option 'modelId'")
    assert.error_matches(function() cachectl.omni.new{ timeout = "5" } end, "'timeout' must be a number")
    assert.error_matches(function() cachectl.modelslab.new("key") end, "table expected")
    assert.error_matches(function() cachectl.omni.new{ instance = "a", base_url = srv.base } end,
      "either 'instance' or 'base_url'")
    local ml = cachectl.modelslab.new{ key = "k", base_url = srv.base }
    assert.error_matches(function() ml:clear_cache{ product = "3d" } end, "unknown option 'product'")
    assert.error_matches(function() ml:clear_cache("x") end, "options table expected")
    assert.is_nil(ml.reset_cache)
    assert.equal(0, #srv:requests())
  end)

  it("keeps its connection open between calls", function()
    local omni = cachectl.omni.new{ token = "tok-reuse", base_url = srv.base }
    for i = 1, 20 do
      assert.truthy(omni:reset_cache(MODEL, "p" .. i))
    end
    assert.equal(20, srv:stats().requests)
    assert.equal(1, srv:stats().connections)
    omni:close()
  end)

  it("closes: idempotent, then every use raises", function()
    local ml = cachectl.modelslab.new{ key = "k-close", base_url = srv.base }
    assert.truthy(ml:clear_cache())
    ml:close()
    ml:close()
    assert.error_matches(function() ml:clear_cache() end, "client is closed")
    assert.matches("closed", tostring(ml))
  end)

  it("works as a to-be-closed variable", function()
    if _VERSION ~= "Lua 5.4" then
      return pending("to-be-closed variables need Lua 5.4")
    end
    local f = assert(load([[
      local cachectl, base = ...
      local kept
      do
        local ml <close> = cachectl.modelslab.new{ key = "k-tbc", base_url = base }
        assert(ml:clear_cache())
        kept = ml
      end
      return kept
    ]]))
    local kept = f(cachectl, srv.base)
    assert.error_matches(function() kept:clear_cache() end, "client is closed")
  end)

  it("never shows a credential in tostring", function()
    local ml = cachectl.modelslab.new{ key = "SECRET-KEY-777", base_url = srv.base }
    local omni = cachectl.omni.new{ token = "SECRET-TOKEN-777", instance = "acme" }
    local proxied = cachectl.omni.new{ token = "SECRET-TOKEN-777", base_url = "https://u:SECRET-PW@x.example/api" }
    for _, c in ipairs{ ml, omni, proxied } do
      assert.not_matches("SECRET", tostring(c))
      for k, v in pairs(c) do
        assert.not_matches("SECRET", tostring(k) .. tostring(v))
      end
    end
    assert.matches("^cachectl.modelslab client %(" .. srv.base:gsub("%p", "%%%0") .. "%)$", tostring(ml))
  end)

  describe("reset_caches", function()
    it("returns one item per policy, in input order", function()
      local omni = cachectl.omni.new{ token = "tok-batch", base_url = srv.base }
      local policies = { "daily", "hourly", "weekly", "a/b", "monthly" }
      local results = omni:reset_caches(MODEL, policies, { concurrency = 3 })
      assert.equal(#policies, #results)
      for i, p in ipairs(policies) do
        assert.equal(p, results[i].policy)
        assert.is_nil(results[i].err)
        assert.equal(p, results[i].result.cache_reset.policy_name)
      end
      assert.equal(#policies, #srv:requests())
    end)

    it("an empty list gives an empty list", function()
      local omni = cachectl.omni.new{ token = "tok-empty", base_url = srv.base }
      assert.same({}, omni:reset_caches(MODEL, {}))
      assert.equal(0, #srv:requests())
    end)

    it("an invalid policy fails alone", function()
      local omni = cachectl.omni.new{ token = "tok-invalid", base_url = srv.base }
      local results = omni:reset_caches(MODEL, { "daily", "..", "weekly" })
      assert.is_table(results[1].result)
      assert.equal("invalid", results[2].err.kind)
      assert.equal("policy", results[2].err.field)
      assert.equal(0, results[2].err.attempts)
      assert.is_table(results[3].result)
      assert.equal(2, #srv:requests())
    end)

    it("runs the requests concurrently", function()
      -- the mock holds every answer for 0.5 s: run one after another, 4 of
      -- them would take 2 s; concurrently the mock sees them all in flight
      local omni = cachectl.omni.new{ token = "tok-conc hold=0.5", base_url = srv.base }
      local results = omni:reset_caches(MODEL, { "a", "b", "c", "d" }, { concurrency = 4 })
      for i = 1, 4 do assert.is_nil(results[i].err) end
      assert.equal(4, srv:stats().connections)
    end)

    it("refuses a bad concurrency", function()
      local omni = cachectl.omni.new{ token = "tok", base_url = srv.base }
      assert.error_matches(function() omni:reset_caches(MODEL, { "a" }, { concurrency = 0 }) end,
        "concurrency")
      assert.error_matches(function() omni:reset_caches(MODEL, "a") end, "table expected")
    end)
  end)
end)
