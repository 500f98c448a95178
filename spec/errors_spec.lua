-- The error value of cachectl.core: one test per kind that can be provoked
-- on loopback, its fields, its one-line __tostring, and attempt counts.
local server = require "support.mock_server"
local scripted = require "support.scripted_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"

local uid = helpers.uid

describe("core errors", function()
  local srv = server.use()

  local function clear_cache(key, over)
    return core.modelslab.clear_cache(helpers.merge({ key = key, base_url = srv.base, retries = 0 }, over))
  end

  local function reset_cache(token, over)
    return core.omni.reset_cache(helpers.merge({ token = token, base_url = srv.base, retries = 0,
      model_id = helpers.UUID, policy = "daily" }, over))
  end

  -- The checks every error passes, whatever its kind.
  local function assert_error(kind, res, err)
    assert.is_nil(res)
    assert.is_table(err)
    assert.equal(kind, err.kind)
    assert.is_string(err.message)
    assert.is_true(#err.message > 0)
    local mt = getmetatable(err)
    assert.is_table(mt)
    assert.is_function(mt.__tostring)
    local line = tostring(err)
    assert.is_nil(line:find("[\r\n]"))
    assert.truthy(line:find(kind, 1, true))
    assert.truthy(line:find(err.message, 1, true))
    if err.status then assert.truthy(line:find(tostring(err.status), 1, true)) end
    return err
  end

  describe("invalid", function()
    it("names the field, sends nothing and counts 0 attempts", function()
      local err = assert_error("invalid", reset_cache(uid("tok"), { model_id = "not-a-uuid" }))
      assert.equal("model_id", err.field)
      assert.equal(0, err.attempts)
      assert.is_nil(err.status)
      assert.is_nil(err.code)
      assert.is_nil(err.retry_after)
      assert.truthy(err.message:find("model_id", 1, true))
      assert.equal(0, #srv:requests())
    end)
  end)

  describe("core.error", function()
    it("makes the Lua layer's errors: one line, the secret masked, attempts 0 by default", function()
      local secret = uid("secret-key")
      local err = core.error({ kind = "decode", message = "x\226\128\168y\194\155z " .. secret .. "\n" }, secret)
      assert.equal("x y z *** ", err.message)
      assert.equal(0, err.attempts)
      assert.equal(getmetatable(select(2, reset_cache(uid("tok"), { model_id = "nope" }))), getmetatable(err))
      assert.has_error(function() core.error{ kind = "nonsense", message = "m" } end)
      assert.has_error(function() core.error{ kind = "decode" } end)
    end)
  end)

  describe("connect", function()
    it("is returned for a closed port, without status", function()
      local port = helpers.free_port()
      local err = assert_error("connect", clear_cache(uid("key"),
        { base_url = "http://127.0.0.1:" .. port .. "/api" }))
      assert.is_nil(err.status)
      assert.is_nil(err.code)
      assert.is_nil(err.field)
      assert.equal(1, err.attempts)
    end)

    it("is retried: retries = 2 makes 3 attempts #slow", function()
      local port = helpers.free_port()
      local err = assert_error("connect", clear_cache(uid("key"),
        { base_url = "http://127.0.0.1:" .. port .. "/api", retries = 2 }))
      assert.equal(3, err.attempts)
    end)

    it("covers a connection closed before any answer", function()
      local err = assert_error("connect", clear_cache(uid("key") .. " fault=drop"))
      assert.is_nil(err.status)
      assert.equal(1, err.attempts)
    end)
  end)

  describe("timeout", function()
    it("is returned when no answer comes within timeout", function()
      local err = assert_error("timeout", clear_cache(uid("key") .. " hold=3", { timeout = 0.3 }))
      assert.is_nil(err.status)
      assert.equal(1, err.attempts)
    end)
  end)

  describe("tls", function()
    it("is returned for https:// to a plain HTTP port", function()
      local err = assert_error("tls", clear_cache(uid("key"),
        { base_url = (srv.base:gsub("^http:", "https:")) }))
      assert.is_nil(err.status)
      assert.equal(1, err.attempts)
    end)
  end)

  describe("http", function()
    it("carries the status and the service's message and code", function()
      local err = assert_error("http", clear_cache(uid("key") .. " fault=503"))
      assert.equal(503, err.status)
      assert.equal("Service unavailable", err.message)
      assert.equal("http_503", err.code)
      assert.equal(1, err.attempts)
    end)

    -- A server's message on one line: C0 and DEL, C1 controls (U+0085 as
    -- UTF-8, a raw 0x9B), U+2028 and a bidi override (U+202E) become spaces;
    -- other UTF-8 (é) stays.
    it("puts a server's message on one line, C1, separators and bidi controls too", function()
      srv:fault{ path = "/v5/clear_cache", status = 400,
        body = '{"status":"error","message":"a\\nb\\u0085c\\u2028d\\u202ee\\u00e9"}' }
      local err = assert_error("http", clear_cache(uid("key")))
      assert.equal("a b c d e\195\169", err.message)
    end)

    it("has a message naming the status when the body is not JSON", function()
      local err = assert_error("http", clear_cache(uid("key") .. " fault=500_html"))
      assert.equal(500, err.status)
      assert.truthy(err.message:find("500", 1, true))
      assert.is_nil(err.code)
    end)

    it("is not retried for a 500, even with retries left", function()
      local err = assert_error("http", clear_cache(uid("key") .. " fault=500_html", { retries = 2 }))
      assert.equal(1, err.attempts)
      assert.equal(1, #srv:requests())
    end)

    it("counts every attempt of a retried 503", function()
      local err = assert_error("http", clear_cache(uid("key") .. " fault=503", { retries = 1 }))
      assert.equal(2, err.attempts)
      assert.equal(2, #srv:requests())
    end)

    it("gives way to success when a retry succeeds", function()
      local res, err = clear_cache(uid("key") .. " fault=503 times=1", { retries = 1 })
      assert.is_nil(err)
      assert.equal("success", res.status)
      assert.equal(2, #srv:requests())
    end)

    it("turns Omni's {error, message} into message and code", function()
      local err = assert_error("http", reset_cache("bad-" .. uid("tok")))
      assert.equal(401, err.status)
      assert.equal("Invalid or missing bearer token", err.message)
      assert.equal("401", err.code)
    end)

    it("is returned for a redirect, which is not followed", function()
      local err = assert_error("http", clear_cache(uid("key") .. " fault=redirect"))
      assert.equal(302, err.status)
      assert.equal(1, err.attempts)
      local reqs = srv:requests()
      assert.equal(1, #reqs)
      assert.equal("/api/v5/clear_cache", reqs[1].path)
      assert.equal(0, #helpers.requests_under(reqs, "/redirect-target"))
    end)
  end)

  describe("api", function()
    it("is a ModelsLab 2xx whose status is not success", function()
      local err = assert_error("api", clear_cache(uid("key") .. " fault=api_error"))
      assert.equal(200, err.status)
      assert.equal("Something failed", err.message)
      assert.equal("E42", err.code)
      assert.equal(1, err.attempts)
    end)

    it("is an Omni 2xx with success = false", function()
      local err = assert_error("api", reset_cache(uid("tok") .. " fault=api_error"))
      assert.equal(200, err.status)
      assert.equal("Something failed", err.message)
      assert.equal("E42", err.code)
    end)
  end)

  describe("rate_limited", function()
    it("is a 429, with Retry-After as retry_after", function()
      local err = assert_error("rate_limited", clear_cache(uid("key") .. " fault=429"))
      assert.equal(429, err.status)
      assert.equal(1, err.retry_after)
      assert.equal("rate_limited", err.code)
      assert.equal(1, err.attempts)
      assert.truthy(tostring(err):find("retry after", 1, true))
    end)

    it("ends the call at once when Retry-After lies past the timeout", function()
      local err = assert_error("rate_limited", clear_cache(uid("key") .. " fault=429",
        { retries = 2, timeout = 0.5 }))
      assert.equal(1, err.retry_after)
      assert.equal(1, err.attempts)
      assert.equal(1, #srv:requests())
    end)

    it("is also what a 503 becomes when its Retry-After lies past the timeout", function()
      local err = assert_error("rate_limited", clear_cache(uid("key") .. " fault=503_retry_after",
        { retries = 2, timeout = 0.5 }))
      assert.equal(503, err.status)
      assert.equal(1, err.retry_after)
      assert.equal(1, err.attempts)
    end)

    it("is retried after the wait Retry-After asks for #slow", function()
      local res, err = clear_cache(uid("key") .. " fault=429 times=1", { retries = 1 })
      assert.is_nil(err)
      assert.equal("success", res.status)
      assert.equal(2, #srv:requests())
    end)

    it("takes retry_after from the body when there is no header", function()
      local err = assert_error("rate_limited", reset_cache(uid("tok") .. " fault=429_retry_after_body"))
      assert.equal(429, err.status)
      assert.equal(1, err.retry_after)
    end)
  end)

  describe("decode", function()
    for _, fault in ipairs{ "invalid_json", "empty", "html200" } do
      it("is a 200 with a body that is not a JSON object (" .. fault .. ")", function()
        local err = assert_error("decode", clear_cache(uid("key") .. " fault=" .. fault))
        assert.equal(200, err.status)
        assert.equal(1, err.attempts)
        assert.is_nil(err.code)
      end)
    end

    it("is not retried", function()
      local err = assert_error("decode", reset_cache(uid("tok") .. " fault=invalid_json", { retries = 2 }))
      assert.equal(1, err.attempts)
      assert.equal(1, #srv:requests())
    end)
  end)

  describe("too_large", function()
    it("cuts off a normal answer over max_response_bytes", function()
      local err = assert_error("too_large", clear_cache(uid("key"), { max_response_bytes = 10 }))
      assert.equal(1, err.attempts)
    end)

    it("cuts off a 2 MiB answer under the default limit", function()
      local err = assert_error("too_large", clear_cache(uid("key") .. " fault=huge"))
      assert.equal(1, err.attempts)
    end)

    it("applies to an error body too", function()
      local err = assert_error("too_large", reset_cache("bad-" .. uid("tok"), { max_response_bytes = 10 }))
      assert.equal(1, err.attempts)
    end)

    -- The mock's answer {"status":"success","message":"Cache cleared"} is 46 bytes.
    it("lets an answer of exactly max_response_bytes through", function()
      local res, err = clear_cache(uid("key"), { max_response_bytes = 46 })
      assert.is_nil(err)
      assert.equal("success", res.status)
    end)

    it("cuts off an answer one byte over max_response_bytes", function()
      local err = assert_error("too_large", clear_cache(uid("key"), { max_response_bytes = 45 }))
      assert.equal(1, err.attempts)
    end)
  end)

  -- Answers the mock does not give, from the scripted server: the first
  -- path segment of base_url picks the answer.
  describe("answer shapes", function()
    local script

    setup(function() script = scripted.start() end)
    teardown(function() if script then script:stop() end end)

    local CALLS = {
      ["modelslab.clear_cache"] = function(base) return core.modelslab.clear_cache{ key = uid("key"), base_url = base,
        retries = 0 } end,
      ["modelslab.system_details"] = function(base) return core.modelslab.system_details{ key = uid("key"),
        base_url = base, retries = 0 } end,
      ["modelslab.request"] = function(base) return core.modelslab.request{ key = uid("key"), base_url = base,
        retries = 0, method = "GET", path = "/v6/anything" } end,
      ["omni.reset_cache"] = function(base) return core.omni.reset_cache{ token = uid("tok"), base_url = base,
        retries = 0, model_id = helpers.UUID, policy = "daily" } end,
      ["omni.list_models"] = function(base) return core.omni.list_models{ token = uid("tok"), base_url = base,
        retries = 0 } end,
      ["omni.model_yaml"] = function(base) return core.omni.model_yaml{ token = uid("tok"), base_url = base,
        retries = 0, model_id = helpers.UUID } end,
    }

    for _, scenario in ipairs{ "array", "empty_array", "number", "string", "null", "boolean" } do
      for name, call in pairs(CALLS) do
        it("a 2xx JSON " .. scenario .. " is decode for " .. name, function()
          script:reset()
          local err = assert_error("decode", call(script.url .. "/" .. scenario))
          assert.equal(200, err.status)
          assert.equal(1, err.attempts)
          assert.is_nil(err.code)
          assert.equal(1, #script:log())
        end)
      end
    end

    for name, call in pairs(CALLS) do
      it("an object after blanks is a success for " .. name, function()
        local res, err = call(script.url .. "/blank_object")
        assert.is_nil(err)
        assert.is_table(res)
      end)
    end

    local function omni_error(scenario)
      return assert_error("http", reset_cache(uid("tok"), { base_url = script.url .. "/" .. scenario }))
    end

    it("reads Omni's OpenAPI shape {detail, status}", function()
      local err = omni_error("detail_404")
      assert.equal(404, err.status)
      assert.equal("Model 770e8400-e29b-41d4-a716-446655440000 not found", err.message)
      assert.is_nil(err.code)
      assert.truthy(tostring(err):find("not found", 1, true))
    end)

    it("reads Omni's 422 shape {error}", function()
      local err = omni_error("error_422")
      assert.equal(422, err.status)
      assert.equal("resetAt must not be in the future", err.message)
      assert.equal("resetAt must not be in the future", err.code)
    end)

    it("reads the reset page's shape {error, message}", function()
      local err = omni_error("error_message_400")
      assert.equal(400, err.status)
      assert.equal("Invalid reset timestamp", err.message)
      assert.equal("invalid_reset_at", err.code)
    end)

    local preference = {
      { "all_four", "M1", "7", "message first, error_code before error" },
      { "no_message", "M2", "E", "then messege" },
      { "detail_error", "D", "E", "then detail" },
      { "empty_detail", "E", "E", "an empty detail is skipped" },
      { "detail_object", "E", "E", "a detail that is not text is skipped" },
    }
    for _, case in ipairs(preference) do
      it("takes the message in order message, messege, detail, error: " .. case[4], function()
        local err = omni_error(case[1])
        assert.equal(case[2], err.message)
        assert.equal(case[3], err.code)
      end)
    end

    it("reads nothing from an error body that is a JSON array", function()
      local err = omni_error("array_error")
      assert.equal(400, err.status)
      assert.equal("the service answered HTTP 400", err.message)
      assert.is_nil(err.code)
    end)
  end)
end)
