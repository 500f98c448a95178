-- Issue 21, bullets 4 and 5: the policy guard (check_policy) checks every
-- option of a reset before it reads the model file, so bad input sends
-- nothing (the scripted server logs every arrival); `attempts` counts what
-- was sent; and every message the Lua layer builds from a server's names
-- goes through the one scrubber, on one line, listing a bounded number of
-- names.
local hostile = require "support.hostile_server"
local scripted = require "support.scripted_server"
local helpers = require "support.helpers"
local cachectl = require "cachectl"
local core = require "cachectl.core"

local UUID = helpers.UUID
local POLICIES = "cache_policies:\n  daily: {max_cache_age: 24 hours}\n  hourly: {}\n"

describe("the policy guard against a hostile server", function()
  local srv

  setup(function() srv = hostile.start() end)
  teardown(function() if srv then srv:stop() end end)

  local function client(text, opts)
    srv:script{ yaml = { ["*"] = text or POLICIES } }
    return cachectl.omni.new(helpers.merge({ token = helpers.uid("tok-guard"), base_url = srv.base,
      check_policy = true, rate_limit = false, retries = 0 }, opts))
  end

  describe("checks every option before anything is sent", function()
    local cases = {
      { "reset_at", "a time to come", { reset_at = os.time() + 3600 } },
      { "reset_at", "not RFC 3339", { reset_at = "yesterday" } },
      { "policy", "over 64 KiB", { policy = string.rep("p", 70 * 1024) } },
      { "policy", "'..'", { policy = ".." } },
      { "policy", "'.'", { policy = "." } },
      { "timeout", "negative", { timeout = -1 } },
      { "retries", "negative", { retries = -1 } },
      { "token", "with a line break", { token = "tok\r\nX-Injected: 1" } },
    }
    for _, case in ipairs(cases) do
      local field, what, over = case[1], case[2], case[3]
      it(field .. " " .. what .. ": invalid, attempts 0, no YAML read on the wire", function()
        local c = client(nil, over.token and { token = over.token } or nil)
        local policy = over.policy or "daily"
        local opts = helpers.merge({}, over)
        opts.policy, opts.token = nil, nil
        local res, err = c:reset_cache(UUID, policy, opts)
        assert.is_nil(res)
        assert.equal("invalid", err.kind)
        assert.equal(field, err.field)
        assert.equal(0, err.attempts)
        assert.same({}, srv:log())
        local results = c:reset_caches(UUID, { policy, policy }, opts)
        assert.equal(field, results[2].err.field)
        assert.same({}, srv:log())
        c:close()
      end)
    end

    it("in a batch, refuses the bad items alone: one read, the good item reset", function()
      local c = client()
      local results = c:reset_caches(UUID, { "daily", "..", string.rep("x", 70 * 1024), "dialy" })
      assert.equal("daily", results[1].result.cache_reset.policy_name)
      assert.equal(0, results[2].err.attempts)
      assert.equal("policy", results[3].err.field)
      assert.equal(0, results[3].err.attempts)
      assert.matches("did you mean 'daily'", results[4].err.message, 1, true)
      assert.equal(1, results[4].err.attempts)
      assert.equal(1, #srv:arrivals("GET", "/yaml"))
      assert.equal(1, #srv:arrivals("POST", "/cache_reset/daily"))
      assert.equal(2, #srv:log())
      c:close()
    end)

    it("attempts counts the requests sent: the read (1), then none while the policies are kept", function()
      local c = client()
      local _, first = c:reset_cache(UUID, "dialy")
      local _, second = c:reset_cache(UUID, "dialy")
      assert.equal(1, first.attempts)
      assert.equal(0, second.attempts)
      assert.equal(1, #srv:log())
      local fresh = client(nil)
      srv:script{}                                           -- no model file now: a 404
      local _, e404 = fresh:reset_cache(UUID, "daily")
      assert.equal(404, e404.status)
      assert.equal(1, e404.attempts)
      assert.equal(0, #srv:arrivals("POST", "/cache_reset/daily"))
      c:close()
      fresh:close()
    end)
  end)

  describe("messages built from a server's names", function()
    local secret = "Zq7+xY2/pL9=mK4&" .. helpers.hex(16)

    -- Asserts that no form of the secret is in `text`.
    local function assert_scrubbed(text)
      assert.is_nil(text:find(secret, 1, true), text)
      for name, form in pairs(scripted.FORMS) do
        assert.is_nil(text:find(form(secret), 1, true), name .. " form in: " .. text)
      end
    end

    -- A YAML single-quoted scalar.
    local function quoted(s) return "'" .. s:gsub("'", "''") .. "'" end

    it("a YAML that echoes the token as policy names (as given, percent-encoded, JSON-escaped) "
      .. "never puts it in a refusal", function()
      local lines = { "cache_policies:", "  " .. quoted(secret) .. ": {}" }
      for _, form in pairs(scripted.FORMS) do lines[#lines + 1] = "  " .. quoted(form(secret)) .. ": {}" end
      local c = client(table.concat(lines, "\n") .. "\n", { token = secret })
      local res, err = c:reset_cache(UUID, "dialy")
      assert.is_nil(res)
      assert.equal("invalid", err.kind)
      assert.matches("***", err.message, 1, true)
      assert_scrubbed(err.message)
      assert_scrubbed(tostring(err))
      assert.is_nil(helpers.find_secret(err, secret))
      -- the name nearest to what was asked is the token itself
      local _, near = c:reset_cache(UUID, secret:sub(1, -2) .. "x")
      assert.matches("did you mean '***'?", near.message, 1, true)
      assert_scrubbed(near.message)
      c:close()
    end)

    it("nor in a decode message that names a policy or the default", function()
      for _, text in ipairs{
        "cache_policies:\n  " .. quoted(secret) .. ": 24 hours\n",
        "cache_policies: {daily: {}}\ndefault_cache_policy: " .. quoted(secret) .. "\n",
      } do
        local c = client(text, { token = secret })
        local _, err = c:cache_policies(UUID)
        assert.equal("decode", err.kind)
        assert.matches("***", err.message, 1, true)
        assert_scrubbed(err.message)
        assert_scrubbed(tostring(err))
        c:close()
      end
    end)

    it("lists at most 10 names, 64 bytes each, and a count of the rest", function()
      local lines = { "cache_policies:" }
      for i = 1, 1000 do lines[#lines + 1] = "  p" .. i .. ": {}" end
      local c = client(table.concat(lines, "\n") .. "\n")
      local _, err = c:reset_cache(UUID, "nope")
      assert.equal("no cache policy 'nope' in model " .. UUID
        .. " (known: p1, p2, p3, p4, p5, p6, p7, p8, p9, p10 and 990 more)", err.message)
      c:close()
      local long = string.rep("a", 63) .. string.rep("é", 20)
      c = client("cache_policies:\n  " .. quoted(long) .. ": {}\n")
      _, err = c:reset_cache(UUID, string.rep("b", 300))
      assert.equal("no cache policy '" .. string.rep("b", 64) .. "...' in model " .. UUID
        .. " (known: " .. string.rep("a", 63) .. "...)", err.message)
      c:close()
    end)

    it("puts control characters of a name on one line, as spaces", function()
      local c = client('cache_policies:\n  "\\e[31mred\\nfake: line\\a": {}\n')
      local _, err = c:reset_cache(UUID, "nope")
      assert.equal("no cache policy 'nope' in model " .. UUID .. " (known:  [31mred fake: line )", err.message)
      assert.is_nil(err.message:find("%c"))
      c:close()
    end)
  end)

  describe("core.policy_check, the suggestion", function()
    local function list(...)
      local out = {}
      for i, name in ipairs{ ... } do out[i] = { name = name } end
      return out
    end

    -- The name suggested when `name` is refused, or nil.
    local function suggested(name, policies)
      local ok, message = core.policy_check(name, policies, UUID)
      assert.is_nil(ok)
      return message:match("; did you mean '(.-)'%?")
    end

    it("true for a declared name; else the nearest within two edits, the first in the file's order on a tie", function()
      local p = list("dbily", "daily", "dai", "weekly")
      assert.is_true(core.policy_check("daily", p, UUID))
      assert.equal("daily", suggested("daily2", p))          -- one edit beats two
      assert.equal("dbily", suggested("dbxly", p))           -- dbily and daily: one edit each, dbily first
      assert.equal("dai", suggested("d", p))                 -- two deletions
      assert.equal("weekly", suggested("weakli", p))         -- two substitutions
      assert.is_nil(suggested("waakli", p))                  -- three
      assert.is_nil(suggested("x", list("xxxx")))
      assert.equal("no cache policy 'x' in model " .. UUID .. ": its model file declares none",
        select(2, core.policy_check("x", {}, UUID)))
    end)

    it("compares at most 256 KiB of names: a near name past them is not suggested", function()
      local long, p = string.rep("n", 1000), {}
      local function name(i) return ("%04d"):format(i):rep(3) .. long end    -- 3 bytes apart from another
      for i = 1, 400 do p[i] = { name = name(i) } end
      assert.equal(name(200):sub(1, 64) .. "...", suggested(name(200) .. "x", p))
      assert.is_nil(suggested(name(300) .. "x", p))          -- 300 names of 1,012 bytes: past the limit
      local ok, message = core.policy_check("nope", p, UUID)
      assert.is_nil(ok)
      assert.matches(" and 390 more%)$", message)
    end)
  end)
end)
