-- Bad input to cachectl.core: programming mistakes raise and name the
-- option; bad values return nil, err with kind "invalid" and err.field.
-- Either way nothing may reach the server, so every call here points at the
-- mock and every test checks that it recorded nothing.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"

local uid, UUID = helpers.uid, helpers.UUID

describe("core input", function()
  local srv = server.use()

  -- Complete, valid options for each call, with `over` applied on top
  -- (a field set to false in `over` is removed).
  local function merge(o, over)
    for k, v in pairs(over or {}) do
      if v == false and k ~= "verify_tls" and k ~= "playground" then o[k] = nil else o[k] = v end
    end
    return o
  end
  local calls = {
    clear_cache = function(over)
      return core.modelslab.clear_cache(merge({ key = uid("key"), base_url = srv.base, retries = 0 }, over))
    end,
    clear_queue = function(over)
      return core.modelslab.clear_queue(merge({ key = uid("key"), base_url = srv.base, retries = 0 }, over))
    end,
    reset_cache = function(over)
      return core.omni.reset_cache(merge({ token = uid("tok"), base_url = srv.base, retries = 0,
                                           model_id = UUID, policy = "daily" }, over))
    end,
  }

  local function nothing_sent()
    assert.equal(0, #srv:requests())
  end

  local function assert_invalid(field, res, err)
    assert.is_nil(res)
    assert.is_table(err)
    assert.equal("invalid", err.kind)
    assert.equal(field, err.field)
    assert.equal(0, err.attempts)
    assert.is_nil(err.status)
    nothing_sent()
  end

  local function assert_raises_naming(name, fn)
    local ok, msg = pcall(fn)
    assert.is_false(ok)
    assert.truthy(tostring(msg):find(name, 1, true), "error should name '" .. name .. "': " .. tostring(msg))
    nothing_sent()
  end

  describe("the valid baseline", function()
    for name, call in pairs(calls) do
      it("of " .. name .. " succeeds (so the failures below are due to the one bad option)", function()
        local res, err = call()
        assert.is_nil(err)
        assert.is_table(res)
        assert.equal(1, #srv:requests())
      end)
    end
  end)

  describe("raises", function()
    for _, arg in ipairs{ "key", 42, true } do
      it("when the options argument is a " .. type(arg), function()
        assert_raises_naming("options", function() core.modelslab.clear_cache(arg) end)
        assert_raises_naming("options", function() core.omni.reset_cache(arg) end)
      end)
    end

    it("when the options argument is missing", function()
      assert_raises_naming("options", function() core.modelslab.clear_queue() end)
    end)

    local wrong_types = {
      { "clear_cache", "key", 12345 },
      { "reset_cache", "token", { "t" } },
      { "clear_queue", "product", 3 },
      { "reset_cache", "instance", true },
      { "reset_cache", "playground", "yes" },
      { "reset_cache", "model_id", 1 },
      { "reset_cache", "policy", { "daily" } },
      { "reset_cache", "reset_at", true },
      { "reset_cache", "reset_at", {} },
      { "clear_cache", "base_url", 80 },
      { "clear_cache", "timeout", "5" },
      { "clear_cache", "connect_timeout", "1" },
      { "clear_queue", "retries", "2" },
      { "clear_cache", "user_agent", 7 },
      { "clear_cache", "proxy", true },
      { "reset_cache", "ca_file", 1 },
      { "clear_cache", "verify_tls", "no" },
      { "clear_cache", "verify_tls", 1 },
      { "reset_cache", "max_response_bytes", "10" },
    }
    for _, case in ipairs(wrong_types) do
      local call, name, value = case[1], case[2], case[3]
      it(string.format("when %s gets %s = <%s>", call, name, type(value)), function()
        assert_raises_naming(name, function() calls[call]{ [name] = value } end)
      end)
    end

    local unknown = {
      { "reset_cache", "modelId" }, { "reset_cache", "model" }, { "reset_cache", "key" },
      { "reset_cache", "product" }, { "clear_cache", "product" }, { "clear_cache", "token" },
      { "clear_queue", "Key" }, { "clear_queue", "retry" },
    }
    for _, case in ipairs(unknown) do
      local call, name = case[1], case[2]
      it(string.format("when %s gets the unknown option %s", call, name), function()
        assert_raises_naming(name, function() calls[call]{ [name] = "x" } end)
      end)
    end

    it("when instance and base_url are both given", function()
      assert_raises_naming("instance", function() calls.reset_cache{ instance = "acme" } end)
      assert_raises_naming("base_url", function() calls.reset_cache{ instance = "acme" } end)
    end)
  end)

  describe("returns kind 'invalid'", function()
    local srv_base_placeholder = {}
    local cases = {
      -- key and token
      { "clear_cache", "key", false, "missing" },
      { "clear_cache", "key", "" },
      { "clear_queue", "key", "" },
      { "clear_cache", "key", "abc\ndef" },
      { "clear_cache", "key", "abc\rdef" },
      { "clear_cache", "key", "abc\0def" },
      { "clear_queue", "key", "abc\tdef" },
      { "clear_cache", "key", "abc\127def" },
      { "reset_cache", "token", false, "missing" },
      { "reset_cache", "token", "" },
      { "reset_cache", "token", "tok\r\nX-Injected: 1" },
      { "reset_cache", "token", "tok\0" },
      -- model_id
      { "reset_cache", "model_id", false, "missing" },
      { "reset_cache", "model_id", "not-a-uuid" },
      { "reset_cache", "model_id", "" },
      { "reset_cache", "model_id", "3f2504e0-4f89-41d3-9a0c-0305e82c330" },
      { "reset_cache", "model_id", "3f2504e0-4f89-41d3-9a0c-0305e82c33011" },
      { "reset_cache", "model_id", "3f2504e04f8941d39a0c0305e82c3301" },
      { "reset_cache", "model_id", "3f2504e0-4f89-41d3-9a0c-0305e82c330g" },
      { "reset_cache", "model_id", "{3f2504e0-4f89-41d3-9a0c-0305e82c3301}" },
      { "reset_cache", "model_id", "3f2504e0-4f89-41d3-9a0c-0305e82c3301/x" },
      { "reset_cache", "model_id", "../../../../../../../v1/x" },
      -- policy
      { "reset_cache", "policy", false, "missing" },
      { "reset_cache", "policy", "" },
      { "reset_cache", "policy", "." },
      { "reset_cache", "policy", ".." },
      -- reset_at: not RFC 3339
      { "reset_cache", "reset_at", "2024-01-01T10:00:00", "no zone" },
      { "reset_cache", "reset_at", "2024-13-01T10:00:00Z", "month 13" },
      { "reset_cache", "reset_at", "2023-02-30T10:00:00Z", "30 February" },
      { "reset_cache", "reset_at", "2023-02-29T10:00:00Z", "29 February of a common year" },
      { "reset_cache", "reset_at", "2024-04-31T10:00:00Z", "31 April" },
      { "reset_cache", "reset_at", "2024-01-01T24:00:00Z", "hour 24" },
      { "reset_cache", "reset_at", "2024-01-01T10:60:00Z", "minute 60" },
      { "reset_cache", "reset_at", "2024-01-01T10:00Z", "no seconds" },
      { "reset_cache", "reset_at", "2024-01-01", "date only" },
      { "reset_cache", "reset_at", "2024-1-01T10:00:00Z", "one-digit month" },
      { "reset_cache", "reset_at", "2024-01-01T10:00:00+0100", "offset without colon" },
      { "reset_cache", "reset_at", "2024-01-01T10:00:00.Z", "empty fraction" },
      { "reset_cache", "reset_at", "2024-01-01T10:00:00Zjunk", "trailing text" },
      { "reset_cache", "reset_at", "yesterday" },
      { "reset_cache", "reset_at", "" },
      -- reset_at: in the future
      { "reset_cache", "reset_at", os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 3600), "an hour ahead" },
      { "reset_cache", "reset_at", "2999-01-01T00:00:00Z", "year 2999" },
      { "reset_cache", "reset_at", os.time() + 3600, "epoch an hour ahead" },
      { "reset_cache", "reset_at", 32503680000, "epoch in year 3000" },
      -- product and instance
      { "clear_queue", "product", "3D" },
      { "clear_queue", "product", "" },
      { "clear_queue", "product", "3d/../admin" },
      { "clear_queue", "product", "3d?x=1" },
      { "clear_queue", "product", "My_Product" },
      { "clear_queue", "product", "prod uct" },
      { "clear_queue", "product", "pröduct" },
      { "reset_cache", "instance", "Acme", nil, true },
      { "reset_cache", "instance", "acme.evil.com", nil, true },
      { "reset_cache", "instance", "acme_corp", nil, true },
      { "reset_cache", "instance", "", nil, true },
      { "reset_cache", "instance", string.rep("a", 64), "64 characters", true },
      { "reset_cache", "instance", "-acme", nil, true },
      { "reset_cache", "instance", "acme-", nil, true },
      { "reset_cache", "instance", "acme/x", nil, true },
      -- base_url
      { "clear_cache", "base_url", "ftp://127.0.0.1/api" },
      { "clear_cache", "base_url", "127.0.0.1/api", "no scheme" },
      { "clear_cache", "base_url", "" },
      { "clear_cache", "base_url", "http://example.com/api" },
      { "clear_cache", "base_url", "http://127.0.0.1.example.com/api" },
      { "clear_cache", "base_url", "http://user@127.0.0.1@evil/api" },
      { "reset_cache", "base_url", "http://example.com/api" },
      { "reset_cache", "base_url", "file:///etc/passwd" },
      -- numbers
      { "clear_cache", "timeout", 0 },
      { "clear_cache", "timeout", -1 },
      { "clear_cache", "timeout", 0 / 0, "NaN" },
      { "clear_cache", "connect_timeout", 0 },
      { "clear_cache", "connect_timeout", -0.5 },
      { "clear_cache", "retries", -1 },
      { "clear_cache", "retries", 1.5 },
      { "clear_cache", "max_response_bytes", 0 },
      { "clear_cache", "max_response_bytes", -100 },
    }
    for _, case in ipairs(cases) do
      local call, field, value, label, instead_of_base_url = case[1], case[2], case[3], case[4], case[5]
      label = label or string.format("%q", tostring(value)):gsub("\\\n", "\\n")
      it(string.format("from %s for %s = %s", call, field, label), function()
        local over = { [field] = value }
        if instead_of_base_url then over.base_url = false end
        assert_invalid(field, calls[call](over))
      end)
    end

    -- Over-long texts are refused before anything is built or sent, never
    -- reported as a network failure ("Out of memory", connect, retries).
    local KiB64 = 64 * 1024
    local too_long = {
      { "clear_cache", "key", string.rep("k", KiB64 + 1), "64 KiB + 1" },
      { "clear_queue", "key", string.rep("k", 10 * 1024 * 1024), "10 MiB" },
      { "reset_cache", "token", string.rep("t", KiB64 + 1), "64 KiB + 1" },
      { "reset_cache", "token", string.rep("t", 10 * 1024 * 1024), "10 MiB" },
      { "reset_cache", "policy", string.rep("p", KiB64 + 1), "64 KiB + 1" },
      { "reset_cache", "policy", string.rep("p", 1024 * 1024), "1 MiB" },
      { "clear_cache", "user_agent", string.rep("u", KiB64 + 1), "64 KiB + 1" },
      { "clear_cache", "base_url", srv_base_placeholder, "64 KiB + 1" },
      { "clear_queue", "product", string.rep("p", KiB64 + 1), "64 KiB + 1" },
    }
    for _, case in ipairs(too_long) do
      local call, field, value, label = case[1], case[2], case[3], case[4]
      it(string.format("from %s for a %s of %s, with attempts = 0 even with retries", call, field, label), function()
        if value == srv_base_placeholder then value = srv.base .. string.rep("/", KiB64) end
        local res, err = calls[call]{ [field] = value, retries = 2 }
        assert_invalid(field, res, err)
        assert.truthy(err.message:find("too long", 1, true), err.message)
      end)
    end

    it("from list_models for a name over 64 KiB", function()
      assert_invalid("name", core.omni.list_models{ token = uid("tok"), base_url = srv.base,
                                                     name = string.rep("n", KiB64 + 1) })
    end)

    it("from request for a body over 1 MiB of JSON", function()
      assert_invalid("body", core.modelslab.request{ key = uid("key"), base_url = srv.base, method = "POST",
        path = "/v5/clear_cache", body = { pad = string.rep("b", 1024 * 1024) } })
      assert_invalid("body", core.omni.request{ token = uid("tok"), base_url = srv.base, method = "POST",
        path = "/v1/anything", body = { pad = string.rep("b", 1024 * 1024) } })
    end)

    for _, proxy in ipairs{ "", "127.0.0.1:3128", "ftp://127.0.0.1:21", "socks4://127.0.0.1:1080",
                            "socks://127.0.0.1:1080", "http://", "http:// 127.0.0.1", "file:///tmp/p" } do
      it(string.format("from clear_cache for proxy = %q", proxy), function()
        assert_invalid("proxy", calls.clear_cache{ proxy = proxy })
      end)
    end

    it("from reset_cache without instance or base_url", function()
      local res, err = calls.reset_cache{ base_url = false }
      assert.is_nil(res)
      assert.equal("invalid", err.kind)
      assert.is_true(err.field == "instance" or err.field == "base_url", tostring(err.field))
      assert.equal(0, err.attempts)
      nothing_sent()
    end)
  end)

  describe("accepts", function()
    it("an upper-case UUID", function()
      local res, err = calls.reset_cache{ model_id = UUID:upper() }
      assert.is_nil(err)
      assert.is_true(res.success)
    end)

    it("fractional timeout and connect_timeout", function()
      local res, err = calls.clear_cache{ timeout = 5.5, connect_timeout = 2.25 }
      assert.is_nil(err)
      assert.equal("success", res.status)
    end)

    it("reset_at a moment ago, as a string and as a number", function()
      local res, err = calls.reset_cache{ reset_at = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - 60) }
      assert.is_nil(err)
      assert.is_true(res.success)
      res, err = calls.reset_cache{ reset_at = os.time() - 60 }
      assert.is_nil(err)
      assert.is_true(res.success)
    end)

    -- The mock refuses a request line that long (400) before it records it.
    it("a policy of exactly 64 KiB (sent: the mock refuses so long a line)", function()
      local res, err = calls.reset_cache{ policy = string.rep("p", 64 * 1024) }
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(400, err.status)
      assert.equal(1, err.attempts)
    end)

    it("a request body of just under 1 MiB of JSON", function()
      local body = { pad = string.rep("b", 1024 * 1024 - 20) }
      local res, err = core.modelslab.request{ key = uid("key"), base_url = srv.base, method = "POST",
        path = "/v5/clear_cache", body = body, retries = 0 }
      assert.is_nil(err)
      assert.equal("success", res.status)
      assert.equal(1, #srv:requests())
    end)

    -- Whether a call goes through it is the engine's business (plain http://
    -- never does): only that these are not refused as invalid.
    for _, proxy in ipairs{ "http://127.0.0.1:9", "HTTPS://127.0.0.1:9", "socks5://127.0.0.1:9",
                            "socks5h://user:pw@127.0.0.1:9" } do
      it(string.format("proxy = %q", proxy), function()
        local res, err = calls.clear_cache{ proxy = proxy, timeout = 2 }
        if not res then assert.are_not.equal("invalid", err.kind) end
      end)
    end

    it("plain http:// to localhost", function()
      local res, err = calls.clear_cache{ base_url = helpers.url_with_host(srv, "localhost") }
      assert.is_nil(err)
      assert.equal("success", res.status)
      assert.equal(1, #srv:requests())
    end)

    -- The mock listens on 127.0.0.1 only: other loopback addresses may be
    -- refused, but never as 'invalid'.
    for _, host in ipairs{ "127.0.0.2", "127.1.2.3", "[::1]" } do
      it("plain http:// to " .. host, function()
        local res, err = calls.clear_cache{ base_url = helpers.url_with_host(srv, host) }
        if res then
          assert.equal("success", res.status)
        else
          assert.are_not.equal("invalid", err.kind)
          assert.equal(1, err.attempts)
        end
      end)
    end
  end)

  describe("core.endpoints", function()
    it("lists the options reset_cache accepts", function()
      local options = core.endpoints["omni.reset_cache"].options
      for _, name in ipairs{ "base_url", "timeout", "connect_timeout", "retries", "user_agent", "proxy",
                             "ca_file", "verify_tls", "max_response_bytes", "token", "instance",
                             "playground", "model_id", "policy", "reset_at" } do
        assert.truthy(options[name], name)
      end
      assert.is_nil(options.key)
      assert.is_nil(options.product)
      assert.is_nil(options.modelId)
    end)

    it("lists product for clear_queue only", function()
      assert.truthy(core.endpoints["modelslab.clear_queue"].options.product)
      assert.truthy(core.endpoints["modelslab.clear_queue"].options.key)
      assert.is_nil(core.endpoints["modelslab.clear_cache"].options.product)
      assert.truthy(core.endpoints["modelslab.clear_cache"].options.key)
      assert.is_nil(core.endpoints["modelslab.clear_cache"].options.token)
    end)
  end)
end)
