-- The cachectl command's Omni discovery against the mock's default models
-- (docs/mock.md): `omni models`, `omni policies`, `--model NAME` resolved by
-- name (none or several: exit 1 with the candidates), the policy check of
-- `reset-cache` (a typo refused with its suggestion and nothing reset, one
-- YAML read per run, --no-check, a 403 on the YAML), --json shapes, and the
-- token masked in success output that echoes it.
local server = require "support.mock_server"
local support = require "support.cli"
local helpers = require "support.helpers"
local cjson = require "cjson"

local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
local FINANCE = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"
local FINANCE_BRANCH = "6ba7b813-9dad-11d1-80b4-00c04fd430c8"
local EMPTY = "6ba7b812-9dad-11d1-80b4-00c04fd430c8"
local FORBIDDEN = "6ba7b814-9dad-11d1-80b4-00c04fd430c8"

local secret, run, lines, L = support.secret, support.run, support.lines, helpers.literal

describe("cachectl omni discovery", function()
  local srv = server.use()

  local function omni(argv, token)
    token = token or secret("t")
    local args = { "omni" }
    for _, a in ipairs(argv) do args[#args + 1] = a end
    args[#args + 1] = "--base-url"
    args[#args + 1] = srv.base
    local status, out, err = run(args, { OMNI_API_KEY = token })
    return status, out, err, token
  end

  -- The recorded requests as "METHOD path" (query included).
  local function wire()
    local out = {}
    for _, r in ipairs(srv:requests()) do out[#out + 1] = r.method .. " " .. r.path end
    return out
  end

  local function count(prefix)
    local n = 0
    for _, line in ipairs(wire()) do
      if line:sub(1, #prefix) == prefix then n = n + 1 end
    end
    return n
  end

  local function resets() return count("POST /api/v1/models/") end

  describe("omni models", function()
    it("lists every model, every page followed, one line each", function()
      local status, out, err = omni{ "models" }
      assert.equal(0, status, err)
      assert.equal("", err)
      local l = lines(out)
      assert.matches("^omni models: 6 models %(%d+ ms%)$", l[1])
      assert.equal(7, #l)
      assert.matches("^  " .. L(SALES) .. "  SHARED +Sales$", l[2])
      for _, id in ipairs{ SALES, FINANCE, FINANCE_BRANCH, EMPTY, FORBIDDEN } do
        assert.matches(id, out, 1, true)
      end
      -- pages of 100 (contract v3): the mock's six models in one page
      assert.same({ "GET /api/v1/models?pageSize=100" }, wire())
    end)

    it("--name sends the name and lists the models of that name", function()
      local status, out = omni{ "models", "--name", "Finance" }
      assert.equal(0, status)
      local l = lines(out)
      assert.matches("^omni models: 2 models ", l[1])
      assert.matches("^  " .. L(FINANCE) .. "  SHARED +Finance$", l[2])
      assert.matches("^  " .. L(FINANCE_BRANCH) .. "  BRANCH +Finance$", l[3])
      assert.equal("GET /api/v1/models?name=Finance", wire()[1]:match("^[^&]*"))
    end)

    it("--json gives the records as the service sent them; none is an empty list", function()
      local status, out = omni{ "models", "--name", "Sales", "--json" }
      assert.equal(0, status)
      local doc = cjson.decode(out)
      assert.is_true(doc.ok)
      assert.equal("omni models", doc.command)
      assert.equal("models", doc.results[1].call)
      assert.equal(1, #doc.results[1].result)
      assert.equal(SALES, doc.results[1].result[1].id)
      assert.equal("SHARED", doc.results[1].result[1].modelKind)
      status, out = omni{ "models", "--name", "Nobody", "--json" }
      assert.equal(0, status)
      assert.matches('"result":[]', out, 1, true)
      assert.same({}, cjson.decode(out).results[1].result)
    end)
  end)

  describe("omni policies", function()
    it("prints a model's policies in file order with their attributes, by name", function()
      local status, out, err = omni{ "policies", "--model", "Sales" }
      assert.equal(0, status, err)
      assert.equal("", err)
      local l = lines(out)
      assert.equal(4, #l)
      assert.matches("^omni policies Sales: 3 cache policies, default daily %(%d+ ms%)$", l[1])
      assert.matches("^  daily +filter_suggestions_must_obey_policy: true; max_cache_age: 24 hours  %(default%)$", l[2])
      assert.matches("^  hourly +max_cache_age: 1 hour$", l[3])
      assert.matches('^  "weekly report" +.*max_cache_age: 7 days$', l[4])
      local w = wire()
      assert.equal(2, #w)
      assert.matches("^GET /api/v1/models%?.*name=Sales", w[1])
      assert.matches("^GET /api/v1/models/" .. L(SALES) .. "/yaml%?", w[2])
    end)

    it("takes a UUID as it is (no model lookup)", function()
      local status, out = omni{ "policies", "--model", SALES }
      assert.equal(0, status)
      assert.matches("3 cache policies", out, 1, true)
      assert.equal(0, count("GET /api/v1/models?"))
      assert.equal(1, count("GET /api/v1/models/" .. SALES .. "/yaml"))
    end)

    it("--json gives the policies as a list and the default", function()
      local status, out = omni{ "policies", "--model", "Sales", "--json" }
      assert.equal(0, status)
      local r = cjson.decode(out).results[1]
      assert.equal("cache_policies", r.call)
      assert.equal(SALES, r.model_id)
      assert.equal("daily", r.result.default)
      local names = {}
      for i, p in ipairs(r.result.policies) do names[i] = p.name end
      assert.same({ "daily", "hourly", "weekly report" }, names)
      assert.equal("1 hour", r.result.policies[2].max_cache_age)
    end)

    it("says so for a model without policies", function()
      local status, out = omni{ "policies", "--model", "Empty" }
      assert.equal(0, status)
      assert.matches("^omni policies Empty: 0 cache policies %(%d+ ms%)\n$", out)
      status, out = omni{ "policies", "--model", EMPTY, "--json" }
      assert.equal(0, status)
      local r = cjson.decode(out).results[1]
      assert.same({}, r.result.policies)
      assert.equal(cjson.null, r.result.default)
      assert.matches('"policies":[]', out, 1, true)
    end)

    it("exits 1 and names the missing permission on a 403", function()
      local status, out, err = omni{ "policies", "--model", "Forbidden" }
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("omni policies Forbidden: failed: ", err, 1, true)
      assert.matches("lacks permission to read model " .. FORBIDDEN .. "'s YAML (HTTP 403)", err, 1, true)
    end)
  end)

  describe("--model NAME", function()
    it("fails (exit 1) listing the candidates with their ids when several models have the name", function()
      for _, action in ipairs{ { "policies" }, { "reset-cache", "--policy", "daily" } } do
        local argv = { action[1], "--model", "Finance" }
        for i = 2, #action do argv[#argv + 1] = action[i] end
        local status, out, err = omni(argv)
        assert.equal(1, status)
        assert.equal("", out)
        assert.matches("omni " .. action[1] .. " --model Finance: failed: cachectl: invalid: 2 models are named "
          .. '"Finance"', err, 1, true)
        assert.matches("\n  " .. L(FINANCE) .. "  SHARED +Finance\n", err)
        assert.matches("\n  " .. L(FINANCE_BRANCH) .. "  BRANCH +Finance\n", err)
        assert.matches("give one of these ids with --model", err, 1, true)
        argv[#argv + 1] = "--json"
        local _, doc = omni(argv)
        local r = cjson.decode(doc).results[1]
        assert.equal("find_model", r.call)
        assert.equal("model", r.error.field)
        assert.equal(2, #r.error.candidates)
      end
      assert.equal(0, resets())
      assert.equal(0, count("GET /api/v1/models/"))
    end)

    it("fails (exit 1) when no model has the name", function()
      local status, out, err = omni{ "reset-cache", "--model", "Sails", "--policy", "daily" }
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches('omni reset-cache --model Sails: failed: cachectl: invalid: no model is named "Sails"',
        err, 1, true)
      assert.equal(0, resets())
    end)

    it("fails with exit 75 when the model list cannot be read for a temporary reason", function()
      local status, _, err = omni({ "policies", "--model", "Sales", "--retries", "0" }, secret("t", "fault=503"))
      assert.equal(75, status)
      assert.matches("omni policies --model Sales: failed: cachectl: http: ", err, 1, true)
    end)
  end)

  describe("omni reset-cache checks the policy names", function()
    it("resets a declared policy of a model given by name", function()
      local status, out, err = omni{ "reset-cache", "--model", "Sales", "--policy", "daily" }
      assert.equal(0, status, err)
      assert.matches("^omni reset%-cache daily: reset", out)
      local w = wire()
      assert.equal(3, #w)
      assert.matches("^GET /api/v1/models%?", w[1])
      assert.matches("^GET /api/v1/models/" .. L(SALES) .. "/yaml%?", w[2])
      assert.equal("POST /api/v1/models/" .. SALES .. "/cache_reset/daily", w[3])
    end)

    it("refuses a typo before sending, with the suggestion, exit 1", function()
      local status, out, err = omni{ "reset-cache", "--model", "Sales", "--policy", "dialy" }
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("^omni reset%-cache dialy: refused: ", err)
      assert.matches("did you mean 'daily'", err, 1, true)
      assert.matches("--no-check", err, 1, true)
      assert.equal(0, resets())
    end)

    it("reads the YAML once for a batch, and refuses only the unknown names", function()
      local status, out, err = omni{ "reset-cache", "--model", SALES, "--policy", "daily", "--policy", "hourly",
        "--policy", "weekly report", "--policy", "hourly2" }
      assert.equal(1, status)
      assert.equal(3, #lines(out))
      assert.matches('omni reset-cache "weekly report": reset', out, 1, true)
      assert.matches("omni reset-cache hourly2: refused: ", err, 1, true)
      assert.equal(1, count("GET /api/v1/models/" .. SALES .. "/yaml"))
      assert.equal(3, resets())
      assert.equal(0, count("POST /api/v1/models/" .. SALES .. "/cache_reset/hourly2"))
    end)

    it("refuses every name of a model that declares none", function()
      local status, _, err = omni{ "reset-cache", "--model", "Empty", "--policy", "daily" }
      assert.equal(1, status)
      assert.matches("refused: ", err, 1, true)
      assert.equal(0, resets())
    end)

    it("--no-check sends any name without reading the YAML", function()
      local status, out = omni{ "reset-cache", "--model", SALES, "--policy", "dialy", "--no-check" }
      assert.equal(0, status)
      assert.matches("^omni reset%-cache dialy: reset", out)
      assert.same({ "POST /api/v1/models/" .. SALES .. "/cache_reset/dialy" }, wire())
    end)

    it("says the key lacks permission on a 403 for the YAML, suggests --no-check, resets nothing", function()
      local status, out, err = omni{ "reset-cache", "--model", "Forbidden", "--policy", "daily" }
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("lacks permission to read model " .. FORBIDDEN .. "'s YAML (HTTP 403)", err, 1, true)
      assert.matches("--no-check resets without the check", err, 1, true)
      assert.equal(0, resets())
      status = omni{ "reset-cache", "--model", FORBIDDEN, "--policy", "daily", "--no-check" }
      assert.equal(0, status)
      assert.equal(1, resets())
    end)

    it("--json gives a refused name as an invalid error with field policy", function()
      local status, out = omni{ "reset-cache", "--model", "Sales", "--policy", "dialy", "--json" }
      assert.equal(1, status)
      local r = cjson.decode(out).results[1]
      assert.is_false(r.ok)
      assert.equal("dialy", r.policy)
      assert.equal(SALES, r.model_id)
      assert.equal("invalid", r.error.kind)
      assert.equal("policy", r.error.field)
      assert.matches("daily", r.error.message, 1, true)
    end)
  end)

  describe("masks the token in success output", function()
    -- A model whose name and YAML echo pieces of the token, as given, percent-
    -- encoded and JSON-escaped: all of it reaches the output as the service's answer.
    it("in the model list and the policies, human and --json", function()
      local token = "tok/" .. helpers.hex(12) .. "+=\"" .. helpers.hex(12)
      local pct = token:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end)
      local id = "0e4a5c1d-1111-4222-8333-444455556666"
      local name = "M " .. token:sub(5, 16) .. " " .. pct
      srv:define_models({ { id = id, name = name, modelKind = "SHARED", yaml = "cache_policies:\n  p:\n"
        .. "    max_cache_age: " .. cjson.encode(token:sub(2, 20)) .. "\n" } })
      for _, argv in ipairs{ { "models" }, { "models", "--json" }, { "policies", "--model", id },
                              { "policies", "--model", id, "--json" } } do
        local status, out, err = omni(argv, token)
        assert.equal(0, status, err)
        for _, piece in ipairs{ token:sub(5, 16), token:sub(2, 20), pct:sub(1, 12), token:sub(-8) } do
          assert.is_nil(out:find(piece, 1, true), piece .. " in " .. out)
        end
        assert.matches("***", out, 1, true)
      end
    end)
  end)
end)
