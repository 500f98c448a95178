-- Omni's model list and model YAML calls (core.omni.list_models and
-- core.omni.model_yaml) as they arrive on the wire: GET, the query
-- parameters percent-encoded, no body, the bearer token; bad values refused
-- before anything is sent; retries and secrets as for reset_cache.
local server = require "support.mock_server"
local scripted = require "support.scripted_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"

local uid, UUID = helpers.uid, helpers.UUID
local BRANCH = "6ba7b813-9dad-11d1-80b4-00c04fd430c8"

describe("Omni discovery calls on the wire", function()
  local srv = server.use()

  local function opts(over)
    return helpers.merge({ token = uid("tok"), base_url = srv.base, retries = 0 }, over)
  end

  -- The one request the mock saw (whatever it answered: what was sent is
  -- the point here).
  local function only_request(o)
    local r = server.only_request(srv)
    assert.equal("GET", r.method)
    assert.equal("", r.body)
    assert.is_nil(r.headers["content-length"])
    assert.equal("Bearer " .. o.token, r.headers["authorization"])
    assert.equal("application/json", r.headers["accept"])
    return r
  end

  -- path?query -> path, { name = decoded value } and the names in order
  local function split(target)
    local path, query = target:match("^([^?]*)%??(.*)$")
    local params, order = {}, {}
    for name, value in query:gmatch("([^&=]+)=([^&]*)") do
      params[name] = helpers.percent_decode(value)
      order[#order + 1] = name
    end
    return path, params, order
  end

  describe("list_models", function()
    it("GETs {base}/v1/models with no query, no body and the bearer token", function()
      local o = opts()
      core.omni.list_models(o)
      assert.equal("/api/v1/models", only_request(o).path)
    end)

    it("percent-encodes the name: Sales & Marketing/2026", function()
      local o = opts{ name = "Sales & Marketing/2026" }
      core.omni.list_models(o)
      assert.equal("/api/v1/models?name=Sales%20%26%20Marketing%2F2026", only_request(o).path)
    end)

    it("sends name, kind, include_deleted, cursor and page_size as name, modelKind, includeDeleted, cursor, "
      .. "pageSize", function()
      local o = opts{ name = "Sales", kind = "SHARED", include_deleted = true, cursor = "eyJpZCI6MX0=/+x",
                      page_size = 50 }
      core.omni.list_models(o)
      local path, params, order = split(only_request(o).path)
      assert.equal("/api/v1/models", path)
      assert.same({ name = "Sales", modelKind = "SHARED", includeDeleted = "true", cursor = "eyJpZCI6MX0=/+x",
                    pageSize = "50" }, params)
      assert.same({ "name", "modelKind", "includeDeleted", "cursor", "pageSize" }, order)
      assert.truthy(only_request(o).path:find("cursor=eyJpZCI6MX0%3D%2F%2Bx", 1, true))
    end)

    it("sends include_deleted = false as false", function()
      local o = opts{ include_deleted = false }
      core.omni.list_models(o)
      assert.equal("/api/v1/models?includeDeleted=false", only_request(o).path)
    end)

    it("encodes non-ASCII and reserved characters of a name byte by byte", function()
      local name = "Ventes été #1 ?x=1&y"
      local o = opts{ name = name }
      core.omni.list_models(o)
      local target = only_request(o).path
      assert.is_nil(target:find("[%s#\128-\255]"))
      local _, params = split(target)
      assert.equal(name, params.name)
    end)

    it("is a GET without body after a POST on the same session", function()
      local s = core.session()
      local o = opts{ model_id = UUID, policy = "daily" }
      assert.is_table((s:call("omni", "reset_cache", o)))
      s:call("omni", "list_models", { token = o.token, base_url = srv.base, retries = 0 })
      s:close()
      local reqs = srv:requests()
      assert.equal(2, #reqs)
      assert.equal("POST", reqs[1].method)
      assert.equal("GET", reqs[2].method)
      assert.equal("/api/v1/models", reqs[2].path)
      assert.equal("", reqs[2].body)
    end)
  end)

  describe("model_yaml", function()
    it("GETs {base}/v1/models/{model_id}/yaml", function()
      local o = opts{ model_id = UUID }
      core.omni.model_yaml(o)
      assert.equal("/api/v1/models/" .. UUID .. "/yaml", only_request(o).path)
    end)

    it("sends file_name, mode, fully_resolved and branch_id as fileName, mode, fullyResolved, branchId", function()
      local o = opts{ model_id = UUID, file_name = "model.yaml", mode = "combined", fully_resolved = true,
                      branch_id = BRANCH }
      core.omni.model_yaml(o)
      assert.equal("/api/v1/models/" .. UUID .. "/yaml?fileName=model.yaml&mode=combined&fullyResolved=true"
        .. "&branchId=" .. BRANCH, only_request(o).path)
    end)

    it("percent-encodes a file name given as a regular expression", function()
      local o = opts{ model_id = UUID, file_name = "^views/.*\\.yaml$", fully_resolved = false }
      core.omni.model_yaml(o)
      assert.equal("/api/v1/models/" .. UUID .. "/yaml?fileName=%5Eviews%2F.%2A%5C.yaml%24&fullyResolved=false",
        only_request(o).path)
    end)
  end)

  describe("refuses", function()
    local function assert_invalid(field, res, err)
      assert.is_nil(res)
      assert.equal("invalid", err.kind)
      assert.equal(field, err.field)
      assert.equal(0, err.attempts)
      assert.equal(0, #srv:requests())
    end

    local cases = {
      { "list_models", "kind", "shared" }, { "list_models", "kind", "" }, { "list_models", "kind", "SHARED/x" },
      { "list_models", "page_size", 0 }, { "list_models", "page_size", 1001 }, { "list_models", "page_size", 1.5 },
      { "list_models", "name", "" }, { "list_models", "name", "a\nb" }, { "list_models", "cursor", "" },
      { "list_models", "token", "" }, { "list_models", "token", "t\r\nX: y" },
      { "model_yaml", "model_id", "not-a-uuid" }, { "model_yaml", "model_id", UUID .. "/../x" },
      { "model_yaml", "mode", "bogus" }, { "model_yaml", "mode", "combined\0" }, { "model_yaml", "mode", "" },
      { "model_yaml", "branch_id", "main" }, { "model_yaml", "file_name", "" },
      { "model_yaml", "file_name", "a\tb" },
    }
    for _, case in ipairs(cases) do
      local call, field, value = case[1], case[2], case[3]
      it(string.format("%s with %s = %q as invalid, nothing sent", call, field, tostring(value)), function()
        local o = opts{ model_id = call == "model_yaml" and UUID or nil, [field] = value }
        assert_invalid(field, core.omni[call](o))
      end)
    end

    it("model_yaml without model_id as invalid", function()
      assert_invalid("model_id", core.omni.model_yaml(opts()))
    end)

    local raises = {
      { "list_models", "include_deleted", "yes" }, { "list_models", "page_size", "10" },
      { "list_models", "modelKind", "SHARED" }, { "list_models", "policy", "daily" },
      { "list_models", "model_id", UUID }, { "model_yaml", "fully_resolved", "true" },
      { "model_yaml", "fileName", "model.yaml" }, { "model_yaml", "name", "Sales" },
    }
    for _, case in ipairs(raises) do
      local call, name, value = case[1], case[2], case[3]
      it(string.format("%s with %s = %q as a mistake that raises naming it", call, name, value), function()
        local o = opts{ [name] = value }
        if call == "model_yaml" and name ~= "model_id" then o.model_id = UUID end
        local ok, msg = pcall(core.omni[call], o)
        assert.is_false(ok)
        assert.truthy(tostring(msg):find(name, 1, true), tostring(msg))
        assert.equal(0, #srv:requests())
      end)
    end
  end)

  describe("retries and secrets, as for reset_cache", function()
    local script

    setup(function() script = scripted.start() end)
    teardown(function() if script then script:stop() end end)
    before_each(function() script:reset() end)

    for _, status in ipairs{ 429, 503 } do
      for _, call in ipairs{ "list_models", "model_yaml" } do
        it(call .. " is retried after a " .. status .. ", the same request again", function()
          local token = helpers.secret("SECRETTOKEN")
          local o = { token = token, base_url = script.url .. "/" .. status .. "_then_ok", retries = 1 }
          if call == "model_yaml" then o.model_id, o.file_name = UUID, "a b.yaml" else o.name = "a b" end
          local res, err = core.omni[call](o)
          assert.is_nil(err)
          assert.is_table(res)
          local log = script:log()
          assert.equal(2, #log)
          assert.equal(log[1].path, log[2].path)
          assert.equal("Bearer " .. token, log[2].headers["authorization"])
          assert.is_nil(helpers.find_secret(res, token))
        end)

        it(call .. " without retries ends " .. (status == 429 and "rate_limited" or "http")
          .. ", the token nowhere in the error", function()
          local token = helpers.secret("SECRETTOKEN")
          local res, err = core.omni[call]{ token = token, base_url = script.url .. "/" .. status .. "_then_ok",
            retries = 0, model_id = call == "model_yaml" and UUID or nil }
          assert.is_nil(res)
          assert.equal(status == 429 and "rate_limited" or "http", err.kind)
          assert.equal(status, err.status)
          assert.equal("try again", err.message)
          assert.equal(0, err.retry_after)
          assert.equal(1, err.attempts)
          assert.is_nil(helpers.find_secret(err, token))
          assert.is_nil(tostring(err):find(token, 1, true))
        end)
      end
    end
  end)
end)
