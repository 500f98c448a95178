-- The key and the token never come back to the caller: not in results, not
-- in any field of an error, not in tostring(err), not in tostring of a
-- session, not anywhere in the module table. Each credential carries a
-- recognisable random part, and the search is for that part alone, so that
-- an echo of the credential's prefix or of a fragment would be caught too.
local server = require "support.mock_server"
local scripted = require "support.scripted_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"

local find_secret = helpers.find_secret

describe("secrets", function()
  local srv = server.use()

  -- Asserts that the secret is nowhere in what a call returned.
  local function assert_clean(secret, res, err)
    assert.is_nil(find_secret(res, secret), "result holds the secret")
    assert.is_nil(find_secret(err, secret), "error holds the secret")
    if err then
      assert.is_nil(tostring(err):find(secret, 1, true), "tostring(err) holds the secret")
    end
    assert.is_nil(find_secret(core, secret), "the module table holds the secret")
  end

  -- Asserts that the secret did go out (else the test would prove nothing).
  local function assert_sent(secret)
    local reqs = srv:requests()
    assert.is_true(#reqs >= 1)
    local r = reqs[#reqs]
    assert.truthy(r.body:find(secret, 1, true) or (r.headers["authorization"] or ""):find(secret, 1, true))
  end

  local function ml(key, over)
    return helpers.merge({ key = key, base_url = srv.base, retries = 0 }, over)
  end

  local function omni(token, over)
    return helpers.merge({ token = token, base_url = srv.base, retries = 0,
      model_id = helpers.UUID, policy = "daily" }, over)
  end

  describe("of a successful call", function()
    it("clear_cache", function()
      local key = helpers.secret("SECRETKEY")
      local res, err = core.modelslab.clear_cache(ml(key))
      assert.is_table(res)
      assert_sent(key)
      assert_clean(key, res, err)
    end)

    it("clear_queue", function()
      local key = helpers.secret("SECRETKEY")
      local res, err = core.modelslab.clear_queue(ml(key))
      assert.is_table(res)
      assert_sent(key)
      assert_clean(key, res, err)
    end)

    it("reset_cache", function()
      local token = helpers.secret("SECRETTOKEN")
      local res, err = core.omni.reset_cache(omni(token))
      assert.is_table(res)
      assert_sent(token)
      assert_clean(token, res, err)
    end)
  end)

  describe("of a failing call", function()
    local failures = {
      { "api (ModelsLab)", "api", function(s) return core.modelslab.clear_cache(ml(s .. " fault=api_error")) end },
      { "api (Omni)", "api", function(s) return core.omni.reset_cache(omni(s .. " fault=api_error")) end },
      { "api (invalid key)", "api", function(s) return core.modelslab.clear_cache(ml("bad-" .. s)) end },
      { "http 401 (ModelsLab)", "http", function(s) return core.modelslab.clear_queue(ml("bad-" .. s)) end },
      { "http 401 (Omni)", "http", function(s) return core.omni.reset_cache(omni("bad-" .. s)) end },
      { "http 404 (Omni)", "http", function(s)
        return core.omni.reset_cache(omni(s, { model_id = helpers.MISSING_UUID }))
      end },
      { "http 503", "http", function(s) return core.modelslab.clear_cache(ml(s .. " fault=503")) end },
      { "rate_limited", "rate_limited", function(s) return core.omni.reset_cache(omni(s .. " fault=429")) end },
      { "decode", "decode", function(s) return core.modelslab.clear_cache(ml(s .. " fault=invalid_json")) end },
      { "too_large", "too_large", function(s) return core.omni.reset_cache(omni(s .. " fault=huge")) end },
      { "redirect", "http", function(s) return core.modelslab.clear_cache(ml(s .. " fault=redirect")) end },
    }
    for _, case in ipairs(failures) do
      local label, kind, call = case[1], case[2], case[3]
      it(label, function()
        local secret = helpers.secret("SECRET")
        local res, err = call(secret)
        assert.is_nil(res)
        assert.equal(kind, err.kind)
        assert_sent(secret)
        assert_clean(secret, res, err)
      end)
    end

    -- The mock echoes the unknown fault name, i.e. the credential minus its
    -- "fault=" prefix: the whole credential must still not come back.
    it("http whose message echoes most of the token", function()
      local token = "fault=" .. helpers.secret("SECRETTOKEN")
      local res, err = core.omni.reset_cache(omni(token))
      assert.equal("http", err.kind)
      assert.equal(400, err.status)
      assert_sent(token)
      assert_clean(token, res, err)
    end)

    it("connect", function()
      local key = helpers.secret("SECRETKEY")
      local res, err = core.modelslab.clear_cache(ml(key, {
        base_url = "http://127.0.0.1:" .. helpers.free_port() .. "/api" }))
      assert.equal("connect", err.kind)
      assert_clean(key, res, err)
    end)

    it("invalid for another field (ModelsLab)", function()
      local key = helpers.secret("SECRETKEY")
      local res, err = core.modelslab.clear_queue(ml(key, { product = "NOT A SLUG" }))
      assert.equal("invalid", err.kind)
      assert.equal("product", err.field)
      assert_clean(key, res, err)
    end)

    it("invalid for another field (Omni)", function()
      local token = helpers.secret("SECRETTOKEN")
      local res, err = core.omni.reset_cache(omni(token, { reset_at = "2999-01-01T00:00:00Z" }))
      assert.equal("invalid", err.kind)
      assert.equal("reset_at", err.field)
      assert_clean(token, res, err)
    end)

    it("invalid for the key itself", function()
      local key = helpers.secret("SECRETKEY")
      local res, err = core.modelslab.clear_cache(ml(key .. "\n"))
      assert.equal("invalid", err.kind)
      assert.equal("key", err.field)
      assert_clean(key, res, err)
    end)

    it("a raised error for a typo'd option", function()
      local token = helpers.secret("SECRETTOKEN")
      local ok, msg = pcall(core.omni.reset_cache, omni(token, { modelId = helpers.UUID }))
      assert.is_false(ok)
      assert.is_nil(tostring(msg):find(token, 1, true))
    end)
  end)

  describe("of sessions", function()
    it("tostring of an open and a closed session", function()
      local key = helpers.secret("SECRETKEY")
      local s = core.session()
      local res, err = s:call("modelslab", "clear_cache", ml(key))
      assert.is_table(res)
      assert_sent(key)
      assert_clean(key, res, err)
      assert.is_nil(tostring(s):find(key, 1, true))
      s:close()
      assert.is_nil(tostring(s):find(key, 1, true))
    end)

    it("the items of a batch", function()
      local token = helpers.secret("SECRETTOKEN")
      local s = core.session()
      local items = s:batch("omni", "reset_cache", {
        omni(token), omni(token .. " fault=api_error"), omni(token, { model_id = "nope" }),
        omni("bad-" .. token),
      }, 4)
      s:close()
      assert.equal(4, #items)
      assert.is_table(items[1].result)
      assert.equal("api", items[2].err.kind)
      assert.equal("invalid", items[3].err.kind)
      assert.equal("http", items[4].err.kind)
      assert.is_nil(find_secret(items, token))
      for i = 2, 4 do assert.is_nil(tostring(items[i].err):find(token, 1, true)) end
    end)
  end)

  -- A secret with characters that every encoding changes.
  local function odd_secret()
    return "Zq7+xY2/pL9=mK4" .. helpers.secret("")
  end

  -- Asserts that no 8 bytes in a row of secret are in text, in any of the
  -- forms a service may echo them in.
  local function assert_no_form(secret, text)
    for i = 1, #secret - 7 do
      local piece = secret:sub(i, i + 7)
      assert.is_nil(text:find(piece, 1, true), "raw piece " .. i)
      for name, form in pairs(scripted.FORMS) do
        assert.is_nil(text:find(form(piece), 1, true), name .. " piece " .. i)
      end
    end
  end

  describe("echoed in other forms", function()
    local script

    setup(function() script = scripted.start() end)
    teardown(function() if script then script:stop() end end)

    for name in pairs(scripted.FORMS) do
      it("are masked in err.message and err.code when the service echoes them " .. name, function()
        local key, token = odd_secret(), odd_secret()
        local base = script.url .. "/echo_" .. name
        local _, e1 = core.modelslab.clear_cache{ key = key, base_url = base, retries = 0 }
        local _, e2 = core.omni.reset_cache{ token = token, base_url = base, retries = 0,
                                             model_id = helpers.UUID, policy = "daily" }
        local _, e3 = core.omni.list_models{ token = token, base_url = base, retries = 0 }
        local _, e4 = core.omni.model_yaml{ token = token, base_url = base, retries = 0, model_id = helpers.UUID }
        for _, case in ipairs{ { e1, key }, { e2, token }, { e3, token }, { e4, token } } do
          local err, secret = case[1], case[2]
          assert.equal("http", err.kind)
          assert.equal(401, err.status)
          assert.equal("invalid key ***", err.message)
          assert.matches("^%*%*%*", err.code)    -- a code is cut at 63 bytes: maybe mid-escape
          assert_no_form(secret, err.message .. " " .. err.code .. " " .. tostring(err))
        end
      end)
    end
  end)

  describe("core.scrub", function()
    local scrub = core.scrub

    it("masks the secret as given, and any 8 bytes of it in a row", function()
      local secret = odd_secret()
      assert.equal("a *** b", scrub("a " .. secret .. " b", secret))
      assert.equal("[***]", scrub("[" .. secret:sub(3, 10) .. "]", secret))
      assert.equal("(" .. secret:sub(3, 9) .. ")", scrub("(" .. secret:sub(3, 9) .. ")", secret))
    end)

    for name, form in pairs(scripted.FORMS) do
      it("masks the secret " .. name, function()
        local secret = odd_secret()
        local text = "before " .. form(secret) .. " after"
        assert.equal("before *** after", scrub(text, secret))
        assert.equal("<***>", scrub("<" .. form(secret:sub(2, 9)) .. ">", secret))
      end)
    end

    it("masks the forms mixed in one echo, upper- and lower-case hex alike", function()
      local secret = "Zq7+xY2/pL9=mK4-0123"
      assert.equal("x *** y", scrub("x Zq7%2bxY2\\/pL9\\u003DmK4-0123 y", secret))
      assert.equal("x *** y", scrub("x Zq7%2BxY2%2fpL9%3dmK4%2D0123 y", secret))
    end)

    it("masks UTF-8 bytes JSON-escaped as code points, surrogate pairs included", function()
      local secret = "caf\195\169-\240\159\152\128-key"
      assert.equal("id ***", scrub("id caf\\u00e9-\\ud83d\\ude00-key", secret))
      assert.equal("id ***", scrub("id caf%C3%A9-%F0%9F%98%80-key", secret))
    end)

    it("keeps everything else, line breaks and NUL bytes included", function()
      local secret = odd_secret()
      assert.equal("line 1\nline \0 2 ***\n", scrub("line 1\nline \0 2 " .. secret .. "\n", secret))
      assert.equal("100% sure, \\u is not \\/ a secret", scrub("100% sure, \\u is not \\/ a secret", secret))
    end)

    it("leaves text alone without a secret, or with one under 4 bytes", function()
      assert.equal("abc abc", scrub("abc abc"))
      assert.equal("abc abc", scrub("abc abc", "abc"))
      assert.equal("*** ***", scrub("abcd abcd", "abcd"))
    end)

    -- masked in place, a short secret would show through the words around
    -- it ("user is dis***led" for "ab"): the whole text goes
    it("leaves out a whole text holding a short secret when asked (a Redis password)", function()
      assert.equal("***", scrub("pw b pw \0 a", "pw", true))
      assert.equal("***", scrub("x\0\1y", "\0\1", true))
      assert.equal("***", scrub("WRONGPASS invalid username-password pair or user is disabled.", "ab", true))
      assert.equal("abc", scrub("abc", "", true))
      assert.equal("abc", scrub("abc", "xy", true))
    end)

    it("copies a table with every string in it masked, keys too, at any depth; other values kept", function()
      local secret, other = odd_secret(), "pw"
      local mt = {}
      local v = setmetatable({ ["k " .. secret] = { "v " .. other, 5, true, { deep = secret .. " " .. other } },
        n = 1.5 }, mt)
      local out = scrub(v, { secret, other }, true)
      assert.same({ ["k ***"] = { "***", 5, true, { deep = "***" } }, n = 1.5 }, out)
      assert.is_nil(getmetatable(out))
      assert.equal(mt, getmetatable(v))                         -- the value itself untouched
      assert.equal("v " .. other, v["k " .. secret][1])
      assert.same({ "v pw" }, scrub({ "v pw" }, { other }))     -- short: left alone unless asked
      assert.equal(42, scrub(42, secret))
      assert.is_nil(scrub(nil, secret))
      local deep = {}
      local at = deep
      for _ = 1, 1001 do at.x = {} at = at.x end
      assert.matches("nested deeper than 1000", select(2, pcall(scrub, deep, secret)))
    end)
  end)
end)
