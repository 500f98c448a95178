-- An adversary's pass over how the C core reads a call's options (options.c
-- read into cc_opts: the slots given listed, the query built only when a
-- query option was given, rate_limit's fields in one cc_limit_opts, on_event
-- taken only when given, a table item read at once), held to the contract
-- (API.md "C module calls", "Bad input", "Rate limits", "Events", "Secrets",
-- "Fine points"; core.luadoc; docs/lua.md "Options" and "Errors").
--
-- The tests named "DEFECT: ..." failed when written (what they got is
-- quoted) and pass with the fix; the others are what held. Real parts only:
-- the mock (cachectl-mock) counts what was sent.
local string, table = string, table
local assert, collectgarbage, ipairs, pairs, pcall, setmetatable, tostring =
  assert, collectgarbage, ipairs, pairs, pcall, setmetatable, tostring

local helpers = require "support.helpers"
local server = require "support.mock_server"
local core = require "cachectl.core"
local cachectl = require "cachectl"

local UUID = helpers.UUID
local TOKEN, KEY = "demo-omni-token", "demo-modelslab-key"
local LONG = string.rep("a", 64 * 1024 + 1)

local finalizable = helpers.finalizable

-- Makes each collector step small (a state's work, a few finalizers), so
-- that finalizers left pending run at the next allocations; returns what
-- puts the defaults back.
local function small_gc_steps()
  if pcall(collectgarbage, "incremental", 200, 100, 1) then           -- 5.4
    return function() collectgarbage("incremental", 200, 100, 13) end
  end
  local mul = collectgarbage("setstepmul", 1)                         -- 5.1, 5.3, LuaJIT
  return function() collectgarbage("setstepmul", mul) end
end

local function contains(text, secret)
  return text ~= nil and tostring(text):find(secret, 1, true) ~= nil
end

describe("options adversary", function()
  local srv = server.use()

  local function omni(extra)
    local t = { token = TOKEN, base_url = srv.base, retries = 0, rate_limit = false }
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
  end

  local function ml(extra)
    local t = { key = KEY, base_url = srv.base, retries = 0 }
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
  end

  -- The request targets the mock saw, in arrival order.
  local function targets()
    local out = {}
    for _, r in ipairs(srv:requests()) do out[#out + 1] = r.path end
    return out
  end

  describe("defects", function()
    -- API.md "Bad input": "an option name is unknown (so `modelId = ...` is
    -- caught as a typo instead of being ignored)" raises, naming it.
    -- got: a name with a NUL byte was matched up to the NUL (strcmp), so
    -- { ["token\0x"] = ... } was taken as `token`, ["requests\0"] as
    -- rate_limit.requests, and core.preview, which masks `token` in a copy
    -- of the table, showed "Authorization: Bearer <the token>" from the
    -- alias it left alone.
    it("DEFECT: an option name with a NUL byte ('token\\0x') is taken as the option before the NUL", function()
      local ok, why = pcall(core.omni.list_models, { ["token\0x"] = TOKEN, base_url = srv.base, rate_limit = false })
      assert.is_false(ok)
      assert.matches("unknown option 'token\\0...'", why, 1, true)
      ok, why = pcall(core.omni.list_models, omni{ rate_limit = { ["requests\0"] = 5, per = 60 } })
      assert.is_false(ok)
      assert.matches("'rate_limit' takes only", why, 1, true)
      assert.is_false((pcall(core.check_options, "omni", { ["token\0"] = TOKEN })))
      assert.is_false((pcall(core.check_options, "omni", { ["concurrency\0"] = 2 })))
      assert.is_false((pcall(cachectl.omni.new, { ["instance\0"] = "acme" })))
      local secret = "Tk-" .. helpers.hex(24)
      local t = { token = secret, base_url = srv.base }
      for i = 1, 30 do t["token\0" .. i] = secret end
      local res
      ok, res = pcall(core.preview, "omni", "list_models", t)
      assert.is_false(ok and contains(table.concat(res.headers, "\n"), secret))
      assert.equal(0, srv:count())
    end)

    -- "The call works on what the options table held when it started: a
    -- metamethod or finalizer that changes the table ... changes nothing and
    -- never touches freed memory" (API.md "Fine points").
    -- got: with 40 names "name\0<i>" (each taken as `name`), the list of the
    -- options given (cc_opts.given, one entry per option) was written past
    -- its end (UBSan: "index 32 out of bounds for type 'int [32]'") and
    -- entries were lost, so a text was left pointing into the table: the
    -- token, collected by an on_event, was read again when the next event's
    -- URL was masked (ASan: heap-use-after-free in cc_scrub, from push_url).
    it("DEFECT: many names with a NUL byte overrun the list of options given; a text left uncopied is read freed",
       function()
      srv:fault{ path = "/v1/models", status = 503, times = 1 }
      local t = omni{ retries = 1, timeout = 5 }
      for i = 1, 100 do t["name\0" .. i] = "x" end
      t.token = "tok-" .. helpers.hex(30)            -- a string of its own, collected below
      t.on_event = function()
        t.token = nil
        collectgarbage()
        collectgarbage()
      end
      local ok, why = pcall(core.omni.list_models, t)
      assert.is_false(ok)
      assert.matches("unknown option 'name\\0...'", why, 1, true)
      assert.equal(0, srv:count())
    end)

    -- Same line, for on_event ("Events": the function is the call's option).
    -- got: on_event was looked up in the table again after the rest was read
    -- and checked; a finalizer run meanwhile (by the JSON encoding of the
    -- body) that changed both `path` and `on_event` got the old path sent
    -- and the new function called: "/api/v1/before" with F2, every round.
    it("DEFECT: an on_event changed by a finalizer while the call reads the table is the one called", function()
      local s = core.session()
      s:call("omni", "list_models", omni())               -- its handles opened: no allocation left to do
      local outcomes, during = {}, 0
      for _ = 1, 10 do
        srv:reset()
        local called
        local t = omni{ method = "POST", path = "/v1/before", body = { pad = string.rep("p", 64 * 1024) },
                        on_event = function() called = "F1" end }
        local in_call, ran = false, 0
        local function change()
          ran = ran + 1
          if in_call then
            during = during + 1
            t.path = "/v1/after"
            t.on_event = function() called = "F2" end
          end
        end
        collectgarbage()
        for _ = 1, 200 do finalizable(change) end
        local restore = small_gc_steps()
        while ran == 0 do collectgarbage("step", 0) end   -- finalizers now run a few per step
        in_call = true
        s:call("omni", "request", t)
        in_call = false
        restore()
        local sent = srv:requests()[1].path:match("/v1/(%a+)")
        outcomes[sent .. " " .. tostring(called)] = true
      end
      s:close()
      assert.is_true(during > 0, "no finalizer ran during a call: the test proves nothing")
      -- one table, either as it was or as changed: never half of each
      assert.is_nil(outcomes["before F2"])
      assert.is_nil(outcomes["after F1"])
    end)

    -- API.md "Lua layer": "`tostring(client)` shows the service and base
    -- URL, never the credential" ("Secrets": never in tostring of any
    -- object, as given or percent-encoded).
    -- got: "cachectl.modelslab client (http://127.0.0.1:<port>/api/Sk-...)"
    -- for a key that is also in the base URL (and the same for an Omni
    -- token that is also the instance), while the events of the same
    -- client mask it in their URLs.
    it("DEFECT: tostring(client) shows the credential when the base URL holds it", function()
      local key = "Sk-" .. helpers.hex(24)
      local c = cachectl.modelslab.new{ key = key, base_url = srv.base .. "/" .. key }
      assert.is_false(contains(tostring(c), key), tostring(c))
      assert.matches("^cachectl%.modelslab client %(http://127%.0%.0%.1:%d+/api/%*%*%*%)$", tostring(c))
      c:close()
      local token = "t" .. helpers.hex(20)
      c = cachectl.omni.new{ token = token, instance = token }
      assert.is_false(contains(tostring(c), token), tostring(c))
      c:close()
      assert.equal(0, srv:count())
    end)

    it("DEFECT: core.preview masks the credential where it goes, not where the caller also put it", function()
      local token = "t" .. helpers.hex(20)
      local p = core.preview("omni", "list_models", { token = token, base_url = srv.base .. "/" .. token,
        name = token })
      local key = "sk-" .. helpers.hex(24)
      local q = core.preview("modelslab", "clear_queue", { key = key, base_url = srv.base, deploy_type = key })
      for _, shown in ipairs{ p.url, table.concat(p.headers, "\n"), q.url, q.body } do
        assert.is_false(contains(shown, token) or contains(shown, key), shown)
      end
      assert.matches("name=***", p.url, 1, true)
      assert.equal(0, srv:count())
    end)
  end)

  describe("held", function()
    -- docs/lua.md "Errors": a credential or policy over 64 KiB is invalid,
    -- naming it; the one named when several are too long does not depend on
    -- the order the table was filled in.
    it("several too-long options: the same one named whatever the table's order, nothing sent", function()
      local names = { "user_agent", "proxy", "key", "base_url", "deploy_type" }
      local named
      for shift = 0, #names - 1 do
        for _, reverse in ipairs{ false, true } do
          local t = {}
          for i = 1, #names do
            local k = names[(i + shift - 1) % #names + 1]
            if reverse then k = names[#names - ((i + shift - 1) % #names)] end
            t[k] = LONG
          end
          local res, err = core.modelslab.clear_queue(t)
          assert.is_nil(res)
          assert.equal("invalid", err.kind)
          assert.equal(0, err.attempts)
          named = named or err.field
          assert.equal(named, err.field)
          assert.equal(named .. " is too long (over 64 KiB)", err.message)
        end
      end
      assert.equal(0, srv:count())
    end)

    it("a too-long key, or one with a NUL byte, never shows in the error, preview or identity", function()
      local secret = "Sk-" .. helpers.hex(24)
      for _, key in ipairs{ secret .. LONG, secret .. "\0" .. secret, secret .. "\n" } do
        for _, fn in ipairs{ core.modelslab.clear_cache,
                             function(o) return core.preview("modelslab", "clear_cache", o) end,
                             function(o) return core.identity("modelslab", "clear_cache", o) end } do
          local res, err = fn(ml{ key = key, user_agent = LONG })
          assert.is_nil(res)
          assert.equal("invalid", err.kind)
          assert.is_false(contains(err.message, secret))
          assert.is_false(contains(tostring(err), secret))
        end
      end
      assert.equal(0, srv:count())
    end)

    it("numbers out of range (NaN, infinities, -1, huge, fractions): invalid, naming the option", function()
      local cases = {
        { "timeout", { 0 / 0, 1 / 0, -1 / 0, 0, -0.0, -1, 1e6 + 1 } },
        { "connect_timeout", { 0 / 0, 1 / 0, 0, -1, 1e300 } },
        { "retries", { 0 / 0, 1 / 0, -1, 0.5, 101, 2 ^ 53 } },
        { "max_response_bytes", { 0 / 0, 1 / 0, 0, -1, 1.5 } },
      }
      for _, c in ipairs(cases) do
        for _, n in ipairs(c[2]) do
          local res, err = core.modelslab.clear_cache(ml{ [c[1]] = n })
          assert.is_nil(res, c[1] .. " " .. tostring(n))
          assert.same({ "invalid", c[1], 0 }, { err.kind, err.field, err.attempts })
        end
      end
      for _, n in ipairs{ 0 / 0, 1 / 0, 0, -1, 1.5, 1001 } do
        local _, err = core.omni.list_models(omni{ page_size = n })
        assert.same({ "invalid", "page_size" }, { err.kind, err.field })
      end
      for _, limit in ipairs{ { requests = 0 / 0 }, { requests = 1 / 0 }, { requests = 0 }, { requests = 1.5 },
                              { requests = -1 }, { per = 0 / 0 }, { per = 0 }, { per = -1 }, { per = 1e10 } } do
        local _, err = core.omni.list_models(omni{ rate_limit = limit })
        assert.same({ "invalid", "rate_limit" }, { err.kind, err.field })
      end
      assert.equal(0, srv:count())
      assert.is_table(core.modelslab.clear_cache(ml{ retries = -0.0 }))      -- -0 is 0 retries
    end)

    it("wrong types and unknown fields raise naming the option; rate_limit is read raw", function()
      for k, v in pairs{ timeout = "5", user_agent = 5, verify_tls = 1, rate_limit = "x",
                         on_event = setmetatable({}, { __call = function() end }), reset_at = true } do
        local ok, why = pcall(core.omni.reset_cache, omni{ model_id = UUID, policy = "daily", [k] = v })
        assert.is_false(ok)
        assert.matches("option '" .. k .. "' must be", why, 1, true)
      end
      assert.error_matches(function() core.omni.list_models(omni{ rate_limit = { burst = 5 } }) end,
        "'rate_limit' takes only")
      assert.error_matches(function() core.omni.list_models(omni{ rate_limit = { requests = "5" } }) end,
        "rate_limit.requests' must be a number")
      -- a metatable's __index gives no field (ModelsLab needs both numbers)
      local via_index = setmetatable({}, { __index = { requests = 1, per = 1 } })
      local _, err = core.modelslab.clear_cache(ml{ rate_limit = via_index })
      assert.same({ "invalid", "rate_limit" }, { err.kind, err.field })
      -- nor does the options table's own
      _, err = core.omni.list_models(setmetatable({ base_url = srv.base }, { __index = { token = TOKEN } }))
      assert.same({ "invalid", "token" }, { err.kind, err.field })
      assert.equal(0, srv:count())
    end)

    it("query options: given, absent, false and odd bytes; never carried into the next item of a batch", function()
      assert.is_table(core.omni.list_models(omni{ name = "a b&c=d?e#f%g/h+\255", include_deleted = false }))
      assert.is_table(core.omni.list_models(omni()))
      assert.is_table(core.omni.model_yaml(omni{ model_id = UUID, file_name = ".*\\.yaml$", fully_resolved = true }))
      assert.is_table(core.omni.model_yaml(omni{ model_id = UUID }))
      assert.same({ "/api/v1/models?name=a%20b%26c%3Dd%3Fe%23f%25g%2Fh%2B%FF&includeDeleted=false", "/api/v1/models",
                    "/api/v1/models/" .. UUID .. "/yaml?fileName=.%2A%5C.yaml%24&fullyResolved=true",
                    "/api/v1/models/" .. UUID .. "/yaml" }, targets())
      srv:reset()
      local s = core.session()
      local list = s:batch("omni", "list_models",
        { omni{ name = "Sales", page_size = 3, include_deleted = true }, omni(), omni{ cursor = "c" }, omni() }, 1)
      s:close()
      assert.equal(4, #list)
      local seen = targets()
      table.sort(seen)
      assert.same({ "/api/v1/models", "/api/v1/models", "/api/v1/models?cursor=c",
                    "/api/v1/models?name=Sales&includeDeleted=true&pageSize=3" }, seen)
    end)

    it("prepared requests: kept ones sent again with their query, beside tables without; misuse raises", function()
      local s = core.session()
      local kept = assert(core.prepare("omni", "list_models", omni{ name = "K" }, true))
      assert.is_table(s:call("omni", "list_models", kept))
      local list = s:batch("omni", "list_models", { kept, omni(), kept, omni{ page_size = 2 } }, 2)
      assert.is_table(list[4].result)
      local seen = targets()
      table.sort(seen)
      assert.same({ "/api/v1/models", "/api/v1/models?name=K", "/api/v1/models?name=K", "/api/v1/models?name=K",
                    "/api/v1/models?pageSize=2" }, seen)
      srv:reset()
      local once = assert(core.prepare("omni", "list_models", omni()))
      assert.error_matches(function() s:call("omni", "model_yaml", once) end, "prepared for omni.list_models sent as")
      assert.is_table(s:call("omni", "list_models", once))
      assert.error_matches(function() s:call("omni", "list_models", once) end, "sent already")
      local twice = assert(core.prepare("omni", "list_models", omni()))
      assert.error_matches(function() s:batch("omni", "list_models", { twice, twice }) end, "sent already")
      assert.equal(1, srv:count())
      s:close()
    end)

    it("on_event on some items of a batch, the same table twice, and an on_event changing later items", function()
      local s = core.session()
      local seen = {}
      local items = {}
      for i = 1, 6 do
        items[i] = omni{ name = "n" .. i }
        if i % 2 == 0 then items[i].on_event = function(ev) seen[#seen + 1] = i .. ev.type end end
      end
      -- the first event changes every table: the run goes on with what they held
      items[2].on_event = function(ev)
        seen[#seen + 1] = "2" .. ev.type
        for j = 1, 6 do
          items[j].name, items[j].token, items[j].on_event = "changed", nil, nil
        end
        collectgarbage()
      end
      local list = s:batch("omni", "list_models", items, 1)
      for i = 1, 6 do assert.is_table(list[i].result) end
      table.sort(seen)
      assert.same({ "2attempt", "4attempt", "6attempt" }, seen)
      local names = {}
      for _, p in ipairs(targets()) do names[#names + 1] = p:match("name=(%w+)") end
      table.sort(names)
      assert.same({ "n1", "n2", "n3", "n4", "n5", "n6" }, names)
      local n = 0
      local t = omni{ on_event = function() n = n + 1 end }
      assert.equal(3, #s:batch("omni", "list_models", { t, t, t }, 2))
      assert.equal(3, n)
      s:close()
    end)

    it("an on_event that raises or yields ends the call; the session goes on", function()
      local s = core.session()
      assert.error_matches(function()
        s:batch("omni", "list_models", { omni(), omni{ on_event = function() error("boom", 0) end } }, 1)
      end, "boom")
      local co = coroutine.create(function()
        return s:call("omni", "list_models", omni{ on_event = function() coroutine.yield(1) end })
      end)
      local ok, why = coroutine.resume(co)
      assert.is_false(ok)
      assert.matches("yield across", tostring(why))
      assert.is_table(s:call("omni", "list_models", omni()))
      s:close()
    end)

    it("1,000 items of alternating shapes: each read as given", function()
      local s = core.session()
      local kept = assert(core.prepare("omni", "list_models", omni{ name = "K" }, true))
      local items, events = {}, 0
      for i = 1, 1000 do
        local k = i % 5
        if k == 0 then items[i] = omni{ name = "n" .. i, page_size = 1 + i % 999 }
        elseif k == 1 then items[i] = omni()
        elseif k == 2 then items[i] = omni{ on_event = function() events = events + 1 end }
        elseif k == 3 then items[i] = kept
        else items[i] = omni{ page_size = 0 } end
      end
      local list = s:batch("omni", "list_models", items, 50)
      s:close()
      local shapes = { ok = 0, invalid = 0 }
      for i = 1, 1000 do
        local r = list[i]
        if r.result then
          shapes.ok = shapes.ok + 1
        elseif r.err.field == "page_size" then
          shapes.invalid = shapes.invalid + 1
        end
      end
      assert.same({ ok = 800, invalid = 200 }, shapes)
      assert.equal(200, events)
      local queries = {}
      for _, p in ipairs(targets()) do
        local q = (p:match("%?(.*)") or ""):gsub("n%d+", "n#"):gsub("pageSize=%d+", "pageSize=#")
        queries[q] = (queries[q] or 0) + 1
      end
      assert.same({ [""] = 400, ["name=K"] = 200, ["name=n#&pageSize=#"] = 200 }, queries)
    end)
  end)
end)
