-- cachectl.core Omni reset_cache against the mock: the request (path,
-- bearer token, body), the returned body, the service's errors, and policy
-- names that must stay one path segment.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local cjson = require "cjson"
local core = require "cachectl.core"

local uid, UUID = helpers.uid, helpers.UUID

describe("core.omni.reset_cache", function()
  local srv = server.use()

  -- Valid options against the mock, with `over` applied on top.
  local function opts(over)
    return helpers.merge({ token = uid("tok"), base_url = srv.base, model_id = UUID, policy = "daily" }, over)
  end

  local function only_request() return server.only_request(srv) end

  local prefix = "/api/v1/models/" .. UUID .. "/cache_reset/"

  describe("request", function()
    it("POSTs to {base}/v1/models/{model_id}/cache_reset/{policy} with a bearer token", function()
      local o = opts()
      local res, err = core.omni.reset_cache(o)
      assert.is_nil(err)
      assert.is_table(res)
      local req = only_request()
      assert.equal("POST", req.method)
      assert.equal(prefix .. "daily", req.path)
      assert.equal("Bearer " .. o.token, req.headers["authorization"])
      assert.equal("application/json", req.headers["content-type"])
      assert.equal("application/json", req.headers["accept"])
      assert.matches("^cachectl/", req.headers["user-agent"])
    end)

    it("sends the body {} without reset_at", function()
      assert.is_table((core.omni.reset_cache(opts())))
      local body = only_request().body
      assert.matches("^%s*{%s*}%s*$", body)
      assert.same({}, cjson.decode(body))
    end)

    it("keeps the token's characters in the Authorization header", function()
      local token = "tok.en_with-~chars+/=" .. uid("t")
      assert.is_table((core.omni.reset_cache(opts{ token = token })))
      assert.equal("Bearer " .. token, only_request().headers["authorization"])
    end)

    it("accepts an upper-case model_id", function()
      local upper = UUID:upper()
      local res, err = core.omni.reset_cache(opts{ model_id = upper })
      assert.is_nil(err)
      assert.equal(upper:lower(), res.cache_reset.model_id:lower())
      assert.equal(prefix:lower() .. "daily", only_request().path:lower())
    end)
  end)

  describe("reset_at", function()
    local strings = {
      { "2024-03-01T12:34:56Z", "2024-03-01T12:34:56Z" },
      { "2024-03-01t12:34:56z", "2024-03-01T12:34:56Z" },
      { "2024-03-01T12:34:56.789Z", "2024-03-01T12:34:56.789Z" },
      { "2024-03-01T12:34:56.123456+05:30", "2024-03-01T12:34:56.123456+05:30" },
      { "2024-03-01t12:34:56-08:00", "2024-03-01T12:34:56-08:00" },
      { "2024-02-29T23:59:59.5z", "2024-02-29T23:59:59.5Z" },
    }
    -- reset_at = given arrives as resetAt = sent, and comes back in the answer
    local function it_sends(label, given, sent)
      it("sends " .. label .. " as resetAt " .. sent, function()
        local res, err = core.omni.reset_cache(opts{ reset_at = given })
        assert.is_nil(err)
        assert.same({ resetAt = sent }, cjson.decode(only_request().body))
        assert.equal(sent, res.cache_reset.reset_at)
      end)
    end

    for _, case in ipairs(strings) do
      it_sends("the string " .. case[1], case[1], case[2])
    end

    local numbers = {
      { 0, "1970-01-01T00:00:00Z" },
      { 1700000000, "2023-11-14T22:13:20Z" },
      { 1700000000.0, "2023-11-14T22:13:20Z" },
      { 951782400, "2000-02-29T00:00:00Z" },
      { 1700000000.5, "2023-11-14T22:13:20.500Z" },
      { 1700000000.25, "2023-11-14T22:13:20.250Z" },
      { 1700000000.123, "2023-11-14T22:13:20.123Z" },
    }
    for _, case in ipairs(numbers) do
      it_sends("epoch seconds " .. string.format("%.3f", case[1]), case[1], case[2])
    end
  end)

  describe("result", function()
    it("is the whole decoded body", function()
      local res, err = core.omni.reset_cache(opts{ policy = "hourly" })
      assert.is_nil(err)
      assert.is_true(res.success)
      assert.equal("hourly", res.cache_reset.policy_name)
      assert.equal(UUID, res.cache_reset.model_id)
      assert.is_string(res.cache_reset.id)
      assert.is_string(res.cache_reset.created_at)
      assert.is_string(res.cache_reset.updated_at)
      assert.is_string(res.cache_reset.reset_at)
    end)
  end)

  describe("service errors", function()
    it("reports a bad token as kind 'http' 401, not retried", function()
      local res, err = core.omni.reset_cache(opts{ token = "bad-" .. uid("tok") })
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(401, err.status)
      assert.equal("Invalid or missing bearer token", err.message)
      assert.equal("401", err.code)
      assert.equal(1, err.attempts)
      assert.equal(1, #srv:requests())
    end)

    it("reports an unknown model as kind 'http' 404 with the service's message", function()
      local res, err = core.omni.reset_cache(opts{ model_id = helpers.MISSING_UUID })
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(404, err.status)
      assert.equal("Model with id " .. helpers.MISSING_UUID .. " does not exist", err.message)
      assert.equal("404", err.code)
      assert.equal(1, err.attempts)
    end)
  end)

  -- Omni's error shapes as the mock answers them (docs/mock.md, "Omni error shapes"): the
  -- reset page's {error, message} on resets, the OpenAPI document's
  -- {detail, status} on the model list and YAML, 422 as {error}; a token
  -- directive shape=detail|error picks one.
  describe("error shapes, as the mock answers them (docs/mock.md)", function()
    it("{detail, status}: message from detail, no code", function()
      local res, err = core.omni.reset_cache(opts{ token = uid("tok") .. " shape=detail",
                                                   model_id = helpers.MISSING_UUID })
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(404, err.status)
      assert.equal("Model with id " .. helpers.MISSING_UUID .. " does not exist", err.message)
      assert.is_nil(err.code)
    end)

    it("{detail, status} of the model YAML: 404 and 403", function()
      local _, err = core.omni.model_yaml{ token = uid("tok"), base_url = srv.base, model_id = helpers.MISSING_UUID }
      assert.equal(404, err.status)
      assert.equal("Model " .. helpers.MISSING_UUID .. " not found", err.message)
      assert.is_nil(err.code)
      _, err = core.omni.model_yaml{ token = uid("tok"), base_url = srv.base,
                                     model_id = "6ba7b814-9dad-11d1-80b4-00c04fd430c8" }
      assert.equal(403, err.status)
      assert.equal("Permission denied", err.message)
      assert.is_nil(err.code)
    end)

    it("422 {error}: message and code from error", function()
      local _, err = core.omni.list_models{ token = uid("tok"), base_url = srv.base, kind = "NOT_A_KIND" }
      assert.equal("http", err.kind)
      assert.equal(422, err.status)
      assert.matches("^modelKind must be one of", err.message)
      assert.equal(err.message:sub(1, 63), err.code)
    end)

    it("{error, message} asked for on the YAML: message and code", function()
      local _, err = core.omni.model_yaml{ token = uid("tok") .. " shape=error", base_url = srv.base,
                                           model_id = helpers.MISSING_UUID }
      assert.equal(404, err.status)
      assert.equal("Model " .. helpers.MISSING_UUID .. " not found", err.message)
      assert.equal("404", err.code)
    end)
  end)

  describe("policy names", function()
    local names = {
      "a/b", "../admin", "a/../../b", "what?x=1", "x#frag", "100%", "%2F", "%2e%2e",
      "...", "....", ".hidden", "daily report", "  ", "été-política-日本", "a+b&c=d;e",
      "back\\slash", "quote\"d'", "<tag>", "tab\tname",
    }
    for _, name in ipairs(names) do
      it(string.format("sends %q as one raw path segment", name), function()
        local res, err = core.omni.reset_cache(opts{ policy = name })
        assert.is_nil(err)
        assert.equal(name, res.cache_reset.policy_name)
        local path = only_request().path
        assert.equal(prefix, path:sub(1, #prefix))
        local segment = path:sub(#prefix + 1)
        assert.is_nil(segment:find("[/?#%s\128-\255]"))  -- nothing that ends or escapes the segment
        assert.is_nil(segment:find("%%%X") or segment:find("%%.%X"))
        assert.equal(name, helpers.percent_decode(segment))
      end)
    end

    for _, name in ipairs{ ".", ".." } do
      it("refuses '" .. name .. "' as kind 'invalid' and sends nothing", function()
        local res, err = core.omni.reset_cache(opts{ policy = name })
        assert.is_nil(res)
        assert.equal("invalid", err.kind)
        assert.equal("policy", err.field)
        assert.equal(0, err.attempts)
        assert.equal(0, #srv:requests())
      end)
    end
  end)

  describe("instance", function()
    -- No DNS here: a request to {instance}.omniapp.co cannot succeed, but an
    -- error other than 'invalid' shows that the options were accepted.
    local function assert_accepted(res, err)
      assert.is_nil(res)
      assert.is_table(err)
      assert.are_not.equal("invalid", err.kind)
      assert.is_true(err.kind == "connect" or err.kind == "timeout" or err.kind == "tls", err.kind)
      assert.equal(1, err.attempts)
    end

    local function instance_opts(over)
      local o = opts(over)
      o.base_url = nil
      o.timeout, o.retries = 0.5, 0
      return o
    end

    it("accepts instance = 'acme'", function()
      assert_accepted(core.omni.reset_cache(instance_opts{ instance = "acme" }))
    end)

    it("accepts instance = 'acme' with playground = true", function()
      assert_accepted(core.omni.reset_cache(instance_opts{ instance = "acme", playground = true }))
    end)

    it("accepts a 63-character instance", function()
      assert_accepted(core.omni.reset_cache(instance_opts{ instance = "a" .. string.rep("b-", 30) .. "cd" }))
    end)
  end)
end)
