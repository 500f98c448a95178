-- Numbers checked at the edge: every numeric option outside its documented
-- range (NaN, infinities, huge, negative, fractional where a whole number
-- is meant) is an `invalid` error naming it, with nothing sent, or a raise
-- naming it; never an error from deep inside (such as "number has no
-- integer representation").
local server = require "support.mock_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"
local cachectl = require "cachectl"

local uid, UUID = helpers.uid, helpers.UUID
local NAN, INF = 0 / 0, 1 / 0

local function show(v)
  if v ~= v then return "nan" end
  return tostring(v)
end

describe("numeric options", function()
  local srv = server.use()

  local function omni(over)
    return cachectl.omni.new(helpers.merge({ token = uid("tok"), base_url = srv.base, rate_limit = false }, over))
  end

  -- `call(value)` returns res, err: an `invalid` error naming `field`,
  -- nothing sent, for every value.
  local function refuses(field, values, call)
    for _, v in ipairs(values) do
      local res, err = call(v)
      local what = field .. " = " .. show(v)
      assert.is_nil(res, what)
      assert.is_table(err, what)
      assert.equal("invalid", err.kind, what .. ": " .. tostring(err))
      assert.equal(field, err.field, what)
      assert.equal(0, err.attempts, what)
    end
    assert.equal(0, #srv:requests())
  end

  it("timeout and connect_timeout: seconds > 0, at most 1000000", function()
    local bad = { NAN, INF, -INF, -1, 0, 1e300, 1e6 + 1 }
    for _, field in ipairs{ "timeout", "connect_timeout" } do
      refuses(field, bad, function(v) return core.omni.reset_cache{ token = uid("tok"), base_url = srv.base,
        model_id = UUID, policy = "p", [field] = v } end)
      local c = omni()
      refuses(field, bad, function(v) return c:reset_cache(UUID, "p", { [field] = v }) end)
      assert.is_table((c:reset_cache(UUID, "p", { [field] = 1e6 })))
      assert.is_table((c:reset_cache(UUID, "p", { [field] = 0.25 })))
      srv:reset()
    end
  end)

  it("retries, max_response_bytes: whole numbers in range", function()
    local c = omni()
    refuses("retries", { NAN, INF, -1, 0.5, 101, 1e300 },
      function(v) return c:reset_cache(UUID, "p", { retries = v }) end)
    refuses("max_response_bytes", { NAN, INF, -1, 0, 0.5, 1e300 },
      function(v) return c:reset_cache(UUID, "p", { max_response_bytes = v }) end)
  end)

  it("rate_limit.requests and rate_limit.per (-1 included, which once read as 'not given')", function()
    local c = omni()
    refuses("rate_limit", { NAN, INF, -1, 0, 0.5, 1e300 },
      function(v) return c:reset_cache(UUID, "p", { rate_limit = { requests = v, per = 1 } }) end)
    refuses("rate_limit", { NAN, INF, -1, 0, 1e300 },
      function(v) return c:reset_cache(UUID, "p", { rate_limit = { requests = 1, per = v } }) end)
    refuses("rate_limit", { -1 }, function(v) return c:reset_cache(UUID, "p", { rate_limit = { requests = v } }) end)
  end)

  it("page_size and limit of the model list; reset_at as epoch seconds; coalesce", function()
    local c = omni()
    refuses("page_size", { NAN, INF, -1, 0, 0.5, 1001, 1e300 }, function(v) return c:models{ page_size = v } end)
    refuses("limit", { NAN, INF, -1, 0, 0.5 }, function(v) return c:models{ limit = v } end)
    refuses("reset_at", { NAN, INF, -INF, -1, 1e300 },
      function(v) return c:reset_cache(UUID, "p", { reset_at = v }) end)
    refuses("coalesce", { NAN, -INF, -1 }, function(v) return c:reset_cache(UUID, "p", { coalesce = v }) end)
    for _, v in ipairs{ INF, 1e300, 1e6 + 1 } do
      assert.error_matches(function() c:reset_cache(UUID, "p", { coalesce = v }) end,
        "option 'coalesce' must be a number of seconds >= 0 and at most 1000000", 1, true)
      assert.error_matches(function() omni{ coalesce = v } end, "option 'coalesce'", 1, true)
    end
    assert.equal(0, #srv:requests())
  end)

  it("concurrency: a whole number >= 1, else a raise naming it (a huge one runs everything at once)", function()
    local c = omni()
    for _, v in ipairs{ NAN, INF, -INF, -1, 0, 0.5 } do
      assert.error_matches(function() c:reset_caches(UUID, { "a" }, { concurrency = v }) end,
        "option 'concurrency' must be a whole number >= 1", 1, true)
      assert.error_matches(function() omni{ concurrency = v } end,
        "option 'concurrency' must be a whole number >= 1", 1, true)
      assert.error_matches(function() core.session():batch("omni", "reset_cache", {}, v) end,
        "concurrency must be a whole number >= 1", 1, true)
    end
    assert.equal(0, #srv:requests())
    for _, results in ipairs{ c:reset_caches(UUID, { "a", "b", "c" }, { concurrency = 1e300 }),
                              omni{ concurrency = 2 ^ 70 }:reset_caches(UUID, { "a", "b", "c" }) } do
      for i, name in ipairs{ "a", "b", "c" } do
        assert.equal(name, results[i].result.cache_reset.policy_name)
      end
    end
    local s = core.session()
    local items = s:batch("omni", "reset_cache", { { token = uid("tok"), base_url = srv.base, model_id = UUID,
      policy = "x", rate_limit = false } }, 1e300)
    assert.equal("x", items[1].result.cache_reset.policy_name)
    s:close()
  end)
end)
