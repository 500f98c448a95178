-- Omni models by name in Lua: omni:find_model(name) against the mock's
-- default models (none, one, several), kept per client; reset_cache,
-- reset_caches, cache_policies and model_yaml taking a model name where
-- they take a UUID, with their options checked before the lookup is sent;
-- odd model lists (a match without an id, a numeric id, one record twice)
-- from a server of fixed answers (support.fixed_server); and OMNI_INSTANCE as the default instance.
local server = require "support.mock_server"
local fixed = require "support.fixed_server"
local helpers = require "support.helpers"
local cachectl = require "cachectl"

local L = helpers.literal

local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
local FINANCE = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"
local FINANCE_BRANCH = "6ba7b813-9dad-11d1-80b4-00c04fd430c8"

-- The recorded requests as "METHOD path" (query included).
local function wire(srv)
  local out = {}
  for _, r in ipairs(srv:requests()) do out[#out + 1] = r.method .. " " .. r.path end
  return out
end

describe("omni:find_model", function()
  local srv = server.use()
  local omni
  before_each(function() omni = cachectl.omni.new{ token = helpers.uid("tok"), base_url = srv.base } end)
  after_each(function() omni:close() end)

  it("returns the one model of that name, from the model list filtered by name", function()
    local model, err = omni:find_model("Sales")
    assert.is_nil(err)
    assert.same({ id = SALES, name = "Sales", modelKind = "SHARED" }, model)
    local w = wire(srv)
    assert.equal(1, #w)
    assert.matches("^GET /api/v1/models%?.*name=Sales", w[1])
  end)

  it("keeps a model found for the client: a second lookup sends nothing", function()
    assert.equal(SALES, omni:find_model("Sales").id)
    local model = omni:find_model("Sales")
    model.id = "changed"                      -- a copy: the kept one is intact
    assert.equal(SALES, omni:find_model("Sales").id)
    assert.equal(1, #srv:requests())
    local other = cachectl.omni.new{ token = helpers.uid("tok"), base_url = srv.base }
    assert.equal(SALES, other:find_model("Sales").id)
    other:close()
    assert.equal(2, #srv:requests())
  end)

  it("none: invalid, field model, the name in the message", function()
    local model, err = omni:find_model("Sails")
    assert.is_nil(model)
    assert.equal("invalid", err.kind)
    assert.equal("model", err.field)
    assert.matches('no model is named "Sails"', err.message, 1, true)
    assert.same({}, err.candidates)
    assert.matches("^cachectl: invalid: ", tostring(err))
  end)

  it("several: invalid, field model, every candidate's id in the message and in err.candidates", function()
    local model, err = omni:find_model("Finance")
    assert.is_nil(model)
    assert.equal("invalid", err.kind)
    assert.equal("model", err.field)
    assert.matches(FINANCE .. " (SHARED)", err.message, 1, true)
    assert.matches(FINANCE_BRANCH .. " (BRANCH)", err.message, 1, true)
    assert.same({ { id = FINANCE, name = "Finance", modelKind = "SHARED" },
                  { id = FINANCE_BRANCH, name = "Finance", modelKind = "BRANCH" } }, err.candidates)
    -- a failed lookup is not kept
    omni:find_model("Finance")
    assert.equal(2, #srv:requests())
  end)

  it("takes the model list's filters: kind narrows several to one", function()
    local model = assert(omni:find_model("Finance", { kind = "BRANCH" }))
    assert.equal(FINANCE_BRANCH, model.id)
  end)

  it("returns the model list's error", function()
    local failing = cachectl.omni.new{ token = "bad-" .. helpers.uid("tok"), base_url = srv.base, retries = 0 }
    local model, err = failing:find_model("Sales")
    failing:close()
    assert.is_nil(model)
    assert.equal("http", err.kind)
    assert.equal(401, err.status)
  end)

  it("raises on a name that is not a string", function()
    assert.has_error(function() omni:find_model(42) end,
      "bad argument #1 to 'omni:find_model' (string expected, got number)")
  end)
end)

describe("a model name where a UUID is taken", function()
  local srv = server.use()
  local omni
  before_each(function() omni = cachectl.omni.new{ token = helpers.uid("tok"), base_url = srv.base } end)
  after_each(function() omni:close() end)

  it("reset_cache: one lookup, then the reset of the model found", function()
    local res = assert(omni:reset_cache("Sales", "daily"))
    assert.equal(SALES, res.cache_reset.model_id)
    assert.is_true(res.success)
    assert(omni:reset_cache("Sales", "hourly"))
    local w = wire(srv)
    assert.equal(3, #w)
    assert.matches("^GET /api/v1/models%?", w[1])
    assert.equal("POST /api/v1/models/" .. SALES .. "/cache_reset/daily", w[2])
    assert.equal("POST /api/v1/models/" .. SALES .. "/cache_reset/hourly", w[3])
  end)

  it("reset_cache: none or several resets nothing", function()
    for _, name in ipairs{ "Sails", "Finance" } do
      local res, err = omni:reset_cache(name, "daily")
      assert.is_nil(res)
      assert.equal("invalid", err.kind)
      assert.equal("model", err.field)
    end
    for _, line in ipairs(wire(srv)) do assert.matches("^GET ", line) end
  end)

  it("reset_caches: every policy of the model found; none gives each item the error", function()
    local results = omni:reset_caches("Sales", { "daily", "hourly" })
    assert.equal(2, #results)
    for i, p in ipairs{ "daily", "hourly" } do
      assert.equal(p, results[i].policy)
      assert.equal(SALES, results[i].result.cache_reset.model_id)
    end
    srv:reset()
    results = omni:reset_caches("Finance", { "daily", "hourly" })
    assert.equal(2, #results)
    for _, r in ipairs(results) do
      assert.is_nil(r.result)
      assert.equal("model", r.err.field)
    end
    assert.same({}, omni:reset_caches("Sails", {}))
    assert.equal(1, #srv:requests())
  end)

  it("cache_policies and model_yaml", function()
    local list = assert(omni:cache_policies("Sales"))
    assert.equal("daily", list.default)
    local yaml = assert(omni:model_yaml("Sales"))
    assert.is_string(yaml.files["model.yaml"])
    local w = wire(srv)
    assert.equal(3, #w)                          -- one lookup, kept for the second call
    assert.matches("^GET /api/v1/models/" .. L(SALES) .. "/yaml", w[2])
    assert.matches("^GET /api/v1/models/" .. L(SALES) .. "/yaml", w[3])
  end)

  it("the client's default model_id may be a name", function()
    local c = cachectl.omni.new{ token = helpers.uid("tok"), base_url = srv.base, model_id = "Sales" }
    local res = assert(c:reset_cache(nil, "daily"))
    c:close()
    assert.equal(SALES, res.cache_reset.model_id)
  end)

  it("checks the call's options before the lookup: a bad value sends nothing", function()
    local cases = {
      function() return omni:reset_cache("Sales", "..") end,
      function() return omni:reset_cache("Sales", "daily", { reset_at = "yesterday" }) end,
      function() return omni:reset_cache("Sales", "daily", { timeout = -1 }) end,
      function() return omni:model_yaml("Sales", { mode = "bogus" }) end,
      function() return omni:cache_policies("Sales", { branch_id = "main" }) end,
    }
    for i, call in ipairs(cases) do
      local res, err = call()
      assert.is_nil(res, "case " .. i)
      assert.equal("invalid", err.kind, "case " .. i)
      assert.equal(0, err.attempts, "case " .. i)
    end
    local results = omni:reset_caches("Sales", { "daily" }, { reset_at = "yesterday" })
    assert.equal("invalid", results[1].err.kind)
    assert.equal("reset_at", results[1].err.field)
    assert.equal(0, #srv:requests())
    -- a mistake still raises, before anything is sent
    assert.has_error(function() omni:reset_cache("Sales", "daily", { resetAt = 1 }) end)
    assert.equal(0, #srv:requests())
  end)

  it("reset_caches by name: no lookup when no name would be sent; else the bad ones get their error", function()
    local results = omni:reset_caches("Sales", { "..", "" })
    assert.equal("policy", results[1].err.field)
    assert.equal("policy", results[2].err.field)
    assert.equal(0, #srv:requests())
    results = omni:reset_caches("Sales", { "..", "daily" })
    assert.equal("policy", results[1].err.field)
    assert.equal(SALES, results[2].result.cache_reset.model_id)
    local w = wire(srv)
    assert.equal(2, #w)
    assert.matches("^GET /api/v1/models%?", w[1])
  end)

  it("leaves a UUID, in either case, as it is (no lookup)", function()
    assert(omni:reset_cache(SALES:upper(), "daily"))
    assert.same({ "POST /api/v1/models/" .. SALES:upper() .. "/cache_reset/daily" }, wire(srv))
  end)
end)

describe("omni:find_model on an odd model list", function()
  local function find(records, name)
    local page = { records = records, pageInfo = { hasNextPage = false } }
    local srv = fixed.start{ ["GET /api/v1/models"] = { 200, page } }
    local ok, model, err = pcall(function()
      local omni = cachectl.omni.new{ token = helpers.uid("tok"), base_url = srv.base, retries = 0 }
      local m, e = omni:find_model(name)
      omni:close()
      return m, e
    end)
    srv:stop()
    assert(ok, model)
    return model, err
  end

  it("counts the same record twice once", function()
    local r = { id = SALES, name = "Sales", modelKind = "SHARED" }
    local model, err = find({ r, r, { id = SALES:upper(), name = "Sales" } }, "Sales")
    assert.is_nil(err)
    assert.equal(SALES, model.id)
  end)

  it("reports a match without an id, or with a number for id, as decode", function()
    for _, records in ipairs{ { { name = "Sales" } }, { { id = 42, name = "Sales" } },
                              { { id = "NoId", name = "Sales" } } } do
      local model, err = find(records, "Sales")
      assert.is_nil(model)
      assert.equal("decode", err.kind)
      assert.matches('the model list gives the model named "Sales" no usable id', err.message, 1, true)
    end
  end)

  it("ignores a matching record without an id beside one with an id", function()
    local model = assert(find({ { name = "Sales" }, { id = SALES, name = "Sales", modelKind = 1 } }, "Sales"))
    assert.same({ id = SALES, name = "Sales" }, model)
  end)

  it("takes only exact matches (the service's filter may be looser)", function()
    local model, err = find({ { id = SALES, name = "sales" }, { id = FINANCE, name = "Sales " } }, "Sales")
    assert.is_nil(model)
    assert.equal("invalid", err.kind)
    assert.equal(2, #err.candidates)
  end)
end)

describe("OMNI_INSTANCE", function()
  -- tostring of a client made by a fresh Lua layer seeing only `env`
  local function client_with(env, opts)
    local line
    helpers.with_env(env, function(fresh) line = tostring(fresh.omni.new(opts or { token = "t" })) end)
    return line
  end

  it("is the default instance when neither instance nor base_url is given nor $OMNI_BASE_URL set", function()
    assert.matches("(https://acme.omniapp.co/api)", client_with{ OMNI_INSTANCE = "acme" }, 1, true)
    assert.matches("(http://127.0.0.1:9/api)", client_with{ OMNI_INSTANCE = "acme",
      OMNI_BASE_URL = "http://127.0.0.1:9/api" }, 1, true)
    assert.matches("(https://other.omniapp.co/api)",
      client_with({ OMNI_INSTANCE = "acme" }, { token = "t", instance = "other" }), 1, true)
    assert.matches("(http://127.0.0.1:9/api)",
      client_with({ OMNI_INSTANCE = "acme" }, { token = "t", base_url = "http://127.0.0.1:9/api" }), 1, true)
    assert.matches("(no instance set)", client_with{ OMNI_INSTANCE = "" }, 1, true)
  end)

  it("that is not a DNS label is refused at the call, nothing sent", function()
    local res, err
    helpers.with_env({ OMNI_INSTANCE = "Not_A_Label" }, function(fresh)
      res, err = fresh.omni.new{ token = "t" }:reset_cache(SALES, "daily")
    end)
    assert.is_nil(res)
    assert.equal("invalid", err.kind)
    assert.equal("instance", err.field)
  end)
end)
