-- cachectl.core ModelsLab calls against the mock: what goes on the wire,
-- what comes back, and how the two kinds of service failure are reported.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local cjson = require "cjson"
local core = require "cachectl.core"

local uid, literal = helpers.uid, helpers.literal

describe("core.modelslab", function()
  local srv = server.use()

  local function only_request() return server.only_request(srv) end

  local function assert_json_post(req, path, key)
    assert.equal("POST", req.method)
    assert.equal(path, req.path)
    assert.equal("application/json", req.headers["content-type"])
    assert.equal("application/json", req.headers["accept"])
    assert.matches("^%s*{", req.body)             -- an object, not an array
    assert.same({ key = key }, cjson.decode(req.body))
  end

  it("has a version string", function()
    assert.is_string(core.version)
    assert.matches("^%d+%.%d+%.%d+", core.version)
  end)

  it("sets no global when loaded", function()
    local loaded = package.loaded["cachectl.core"]
    local before = {}
    for k in pairs(_G) do before[k] = true end
    package.loaded["cachectl.core"] = nil
    local fresh = require "cachectl.core"
    package.loaded["cachectl.core"] = loaded
    local added = {}
    for k in pairs(_G) do
      if not before[k] then added[#added + 1] = tostring(k) end
    end
    assert.same({}, added)
    assert.is_table(fresh.modelslab)
    assert.is_table(fresh.omni)
  end)

  describe("clear_cache", function()
    it("POSTs {key} as JSON to {base}/v5/clear_cache", function()
      local key = uid("key")
      local res, err = core.modelslab.clear_cache{ key = key, base_url = srv.base }
      assert.is_nil(err)
      assert.is_table(res)
      assert_json_post(only_request(), "/api/v5/clear_cache", key)
    end)

    it("returns the decoded body", function()
      local res, err = core.modelslab.clear_cache{ key = uid("key"), base_url = srv.base }
      assert.is_nil(err)
      assert.same({ status = "success", message = "Cache cleared" }, res)
    end)

    it("sends the default User-Agent cachectl/<version> libcurl/<version>", function()
      assert.is_table((core.modelslab.clear_cache{ key = uid("key"), base_url = srv.base }))
      assert.matches("^cachectl/" .. literal(core.version) .. " libcurl/%d+%.%d+%.%d+%S*$",
                     only_request().headers["user-agent"])
    end)

    it("sends a custom User-Agent as given", function()
      local ua = "ops-dashboard/2.1 (cache janitor)"
      assert.is_table((core.modelslab.clear_cache{ key = uid("key"), base_url = srv.base, user_agent = ua }))
      assert.equal(ua, only_request().headers["user-agent"])
    end)

    it("escapes quotes and backslashes in the key and keeps UTF-8 intact", function()
      local key = 'q"uo\\te\\\\"-ключ-é-' .. uid("k")
      local res, err = core.modelslab.clear_cache{ key = key, base_url = srv.base }
      assert.is_nil(err)
      assert.equal("success", res.status)
      assert.same({ key = key }, cjson.decode(only_request().body))
    end)

    it("reports HTTP 200 with status error as kind 'api', not retried", function()
      local res, err = core.modelslab.clear_cache{ key = "bad-" .. uid("key"), base_url = srv.base }
      assert.is_nil(res)
      assert.equal("api", err.kind)
      assert.equal("Invalid API key", err.message)
      assert.equal("invalid_key", err.code)
      assert.equal(200, err.status)
      assert.equal(1, err.attempts)
      assert.equal(1, #srv:requests())
    end)

    for _, suffix in ipairs{ "/", "///" } do
      it("takes a base_url ending in '" .. suffix .. "'", function()
        local key = uid("key")
        local res, err = core.modelslab.clear_cache{ key = key, base_url = srv.base .. suffix }
        assert.is_nil(err)
        assert.equal("success", res.status)
        assert_json_post(only_request(), "/api/v5/clear_cache", key)
      end)
    end

    it("appends the path to whatever root base_url names", function()
      local key = uid("key")
      assert.is_table((core.modelslab.clear_cache{ key = key, base_url = srv.url .. "/v2-root" }))
      assert.equal("/v2-root/v5/clear_cache", only_request().path)
    end)
  end)

  describe("clear_queue", function()
    it("POSTs {key} to {base}/v1/enterprise/3d/clear_queue by default", function()
      local key = uid("key")
      local res, err = core.modelslab.clear_queue{ key = key, base_url = srv.base }
      assert.is_nil(err)
      assert.same({ status = "success", message = "Queue cleared successfully" }, res)
      assert_json_post(only_request(), "/api/v1/enterprise/3d/clear_queue", key)
    end)

    it("uses the same path for an explicit product '3d'", function()
      local key = uid("key")
      assert.is_table((core.modelslab.clear_queue{ key = key, product = "3d", base_url = srv.base }))
      assert_json_post(only_request(), "/api/v1/enterprise/3d/clear_queue", key)
    end)

    it("puts another product into the path", function()
      local key = uid("key")
      local res, err = core.modelslab.clear_queue{ key = key, product = "video-2", base_url = srv.base }
      assert.is_nil(err)
      assert.equal("success", res.status)
      assert_json_post(only_request(), "/api/v1/enterprise/video-2/clear_queue", key)
    end)

    it("sends the headers and User-Agent like clear_cache", function()
      local ua = "queue-cleaner/0.9"
      assert.is_table((core.modelslab.clear_queue{ key = uid("key"), base_url = srv.base, user_agent = ua }))
      local req = only_request()
      assert.equal(ua, req.headers["user-agent"])
      assert.equal("application/json", req.headers["accept"])
    end)

    it("escapes the key as a JSON string", function()
      local key = "back\\slash \"quoted\" ünïcødé " .. uid("k")
      assert.is_table((core.modelslab.clear_queue{ key = key, base_url = srv.base }))
      assert.same({ key = key }, cjson.decode(only_request().body))
    end)

    it("reports a 401 as kind 'http' with the service's message and code, not retried", function()
      local res, err = core.modelslab.clear_queue{ key = "bad-" .. uid("key"), base_url = srv.base }
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(401, err.status)
      assert.equal("Invalid or missing API key", err.message)
      assert.equal("unauthorized", err.code)
      assert.equal(1, err.attempts)
      assert.equal(1, #srv:requests())
    end)

    it("takes a base_url with trailing slashes", function()
      local key = uid("key")
      assert.is_table((core.modelslab.clear_queue{ key = key, product = "img", base_url = srv.base .. "//" }))
      assert_json_post(only_request(), "/api/v1/enterprise/img/clear_queue", key)
    end)
  end)
end)
