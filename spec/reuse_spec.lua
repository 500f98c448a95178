-- Sessions of cachectl.core: kept-alive connections (counted by the mock),
-- closing, and batches (input order, per-item errors).
local server = require "support.mock_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"

local uid, UUID = helpers.uid, helpers.UUID

describe("core sessions", function()
  local srv = server.use()

  local function ml(over)
    return helpers.merge({ key = uid("key"), base_url = srv.base, retries = 0 }, over)
  end

  local function omni(over)
    return helpers.merge({ token = uid("tok"), base_url = srv.base, retries = 0,
      model_id = UUID, policy = "daily" }, over)
  end

  local function connections_of(reqs)
    local seen, n = {}, 0
    for _, r in ipairs(reqs) do
      if not seen[r.connection] then seen[r.connection], n = true, n + 1 end
    end
    return n
  end

  describe("keep-alive", function()
    it("sends 20 sequential calls of one session over one connection", function()
      local s = core.session()
      for i = 1, 20 do
        local res, err = s:call("modelslab", "clear_cache", ml())
        assert.is_nil(err, "call " .. i)
        assert.equal("success", res.status)
      end
      local stats = srv:stats()
      assert.equal(20, stats.requests)
      assert.equal(1, stats.connections)
      assert.equal(1, connections_of(srv:requests()))
      s:close()
    end)

    it("shares the connection between the calls and services of a session", function()
      local s = core.session()
      for _ = 1, 5 do
        assert.is_table((s:call("modelslab", "clear_cache", ml())))
        assert.is_table((s:call("modelslab", "clear_queue", ml())))
        assert.is_table((s:call("omni", "reset_cache", omni())))
      end
      assert.equal(15, srv:stats().requests)
      assert.equal(1, srv:stats().connections)
      s:close()
    end)

    it("keeps the connection after an error answer", function()
      local s = core.session()
      assert.equal("http", select(2, s:call("modelslab", "clear_queue", ml{ key = "bad-" .. uid("k") })).kind)
      assert.equal("api", select(2, s:call("modelslab", "clear_cache", ml{ key = "bad-" .. uid("k") })).kind)
      assert.is_table((s:call("modelslab", "clear_cache", ml())))
      assert.equal(3, srv:stats().requests)
      assert.equal(1, srv:stats().connections)
      s:close()
    end)

    it("runs a bound call (s:bind) on the session's connection, as s:call would", function()
      local s = core.session()
      local clear_cache = s:bind("modelslab", "clear_cache")
      assert.is_function(clear_cache)
      assert.is_table((s:call("modelslab", "clear_cache", ml())))
      for _ = 1, 3 do
        local res, err = clear_cache(ml())
        assert.is_nil(err)
        assert.equal("success", res.status)
      end
      local reqs = srv:requests()
      assert.equal(4, #reqs)
      assert.equal("/api/v5/clear_cache", reqs[4].path)
      assert.equal(1, connections_of(reqs))
      assert.equal("invalid", select(2, clear_cache(ml{ key = "" })).kind)
      assert.has_error(function() clear_cache("not a table") end,
        "bad argument #1 to 'modelslab.clear_cache' (options table expected, got string)")
      assert.has_error(function() s:bind("modelslab", "no_such_call") end,
        "cachectl: no endpoint modelslab.no_such_call")
      assert.equal(4, #srv:requests())
      s:close()
    end)

    it("reuses connections across the module functions too", function()
      for _ = 1, 10 do
        assert.is_table((core.modelslab.clear_cache(ml())))
        assert.is_table((core.omni.reset_cache(omni())))
      end
      assert.equal(20, srv:stats().requests)
      assert.equal(1, srv:stats().connections)
    end)

    it("gives each session its own connection", function()
      local a, b = core.session(), core.session()
      assert.is_table((a:call("modelslab", "clear_cache", ml())))
      assert.is_table((b:call("modelslab", "clear_cache", ml())))
      assert.is_table((a:call("modelslab", "clear_cache", ml())))
      local reqs = srv:requests()
      assert.equal(2, connections_of(reqs))
      assert.equal(reqs[1].connection, reqs[3].connection)
      a:close()
      b:close()
    end)

    it("closes its connection on close()", function()
      collectgarbage()
      collectgarbage()
      local s = core.session()
      assert.is_table((s:call("modelslab", "clear_cache", ml())))
      local before = srv:stats().open
      s:close()
      -- The mock may accept the next control connection before it reads the
      -- close of the old one: ask until it has (a bounded wait, not a timing).
      local open = helpers.eventually(function()
        local n = srv:stats().open
        return n == before - 1, n
      end)
      assert.equal(before - 1, open)
    end)
  end)

  describe("close", function()
    -- f(...) raises an error whose text matches pattern.
    local function assert_raises(pattern, f, ...)
      local ok, msg = pcall(f, ...)
      assert.is_false(ok)
      assert.matches(pattern, tostring(msg))
    end

    it("makes a later call raise a clear error", function()
      local s = core.session()
      assert.is_table((s:call("modelslab", "clear_cache", ml())))
      s:close()
      srv:reset()
      assert.has_error(function() s:call("modelslab", "clear_cache", ml()) end)
      assert_raises("closed", s.call, s, "modelslab", "clear_cache", ml())
      assert_raises("closed", s.batch, s, "modelslab", "clear_cache", { ml() })
      assert_raises("closed", s.bind, s, "modelslab", "clear_cache")
      assert.equal(0, #srv:requests())
    end)

    it("makes a call bound before the close raise the same error", function()
      local s = core.session()
      local clear_cache = s:bind("modelslab", "clear_cache")
      assert.is_table((clear_cache(ml())))
      s:close()
      srv:reset()
      assert_raises("session is closed", clear_cache, ml())
      assert.equal(0, #srv:requests())
    end)

    it("can be called twice", function()
      local s = core.session()
      assert.is_table((s:call("omni", "reset_cache", omni())))
      assert.has_no.errors(function() s:close() end)
      assert.has_no.errors(function() s:close() end)
    end)

    it("happens at the end of a <close> block", function()
      if _VERSION ~= "Lua 5.4" then
        return pending("to-be-closed variables need Lua 5.4")
      end
      -- compiled at run time: the syntax would not even parse under 5.1-5.3
      local outer = assert(load([[
        local core, call, opts = ...
        local outer
        do
          local s <close> = core.session()
          outer = s
          assert(type((s:call("modelslab", "clear_cache", opts))) == "table")
        end
        return outer
      ]]))(core, nil, ml())
      assert.has_error(function() outer:call("modelslab", "clear_cache", ml()) end)
    end)

    -- Lua code runs inside a call: an on_event function, and whatever
    -- finalizer the collector runs then. Closing the session there must not
    -- free the run in progress.
    local finalizer = helpers.finalizable

    for _, how in ipairs{ "__close", "__gc" } do
      it("by " .. how .. " from a finalizer run during a batch waits for the batch's end", function()
        local s = core.session()
        local list = {}
        for i = 1, 3 do list[i] = ml() end
        list[2].on_event = function()
          finalizer(function() getmetatable(s)[how](s) end)
          collectgarbage()
          collectgarbage()
        end
        local items = s:batch("modelslab", "clear_cache", list, 3)
        for i = 1, 3 do
          assert.is_nil(items[i].err, items[i].err and tostring(items[i].err))
          assert.equal("success", items[i].result.status)
        end
        assert.equal(3, #srv:requests())
        assert.error_matches(function() s:call("modelslab", "clear_cache", ml()) end, "closed")
        assert.equal(3, #srv:requests())
      end)

      it("by " .. how .. " from on_event during a batch waits for the batch's end", function()
        local s = core.session()
        local list = {}
        for i = 1, 4 do
          list[i] = ml{ key = uid("key") .. " hold=" .. (0.02 * i),
                        on_event = function() getmetatable(s)[how](s) end }
        end
        local items = s:batch("modelslab", "clear_cache", list, 2)
        for i = 1, 4 do assert.equal("success", items[i].result.status) end
        assert.equal(4, #srv:requests())
        assert.error_matches(function() s:batch("modelslab", "clear_cache", { ml() }) end, "closed")
      end)
    end

    it("by close() from inside a call raises there, and the session stays open", function()
      local s = core.session()
      local ok, msg = pcall(s.call, s, "modelslab", "clear_cache", ml{ on_event = function() s:close() end })
      assert.is_false(ok)
      assert.matches("while a call runs", msg)
      local res, err = s:call("modelslab", "clear_cache", ml())
      assert.is_nil(err)
      assert.equal("success", res.status)
      s:close()
    end)

    it("of one session leaves the module functions working", function()
      local s = core.session()
      s:close()
      local res, err = core.modelslab.clear_cache(ml())
      assert.is_nil(err)
      assert.equal("success", res.status)
    end)
  end)

  describe("batch", function()
    it("returns results in input order, even when earlier items finish later", function()
      local s = core.session()
      local policies = { "first", "second", "third", "fourth", "fifth" }
      local list = {}
      for i, p in ipairs(policies) do
        -- the mock holds earlier items longer, so they complete in reverse
        list[i] = omni{ policy = p, token = uid("tok") .. " hold=" .. (0.1 * (#policies - i)) }
      end
      local items = s:batch("omni", "reset_cache", list, 5)
      s:close()
      assert.equal(#policies, #items)
      for i, p in ipairs(policies) do
        assert.is_nil(items[i].err)
        assert.equal(p, items[i].result.cache_reset.policy_name)
      end
      assert.equal(#policies, #srv:requests())
    end)

    it("gives a bad item an 'invalid' error while the others still run", function()
      local s = core.session()
      local policies = { "one", "two", "..", "four", "" }
      local list = {}
      for i, p in ipairs(policies) do list[i] = omni{ policy = p } end
      local items = s:batch("omni", "reset_cache", list, 3)
      s:close()
      assert.equal(5, #items)
      for _, i in ipairs{ 1, 2, 4 } do
        assert.is_nil(items[i].err)
        assert.equal(policies[i], items[i].result.cache_reset.policy_name)
      end
      for _, i in ipairs{ 3, 5 } do
        assert.is_nil(items[i].result)
        assert.equal("invalid", items[i].err.kind)
        assert.equal("policy", items[i].err.field)
        assert.equal(0, items[i].err.attempts)
      end
      local paths = {}
      for _, r in ipairs(srv:requests()) do paths[#paths + 1] = r.path:match("[^/]*$") end
      table.sort(paths)
      assert.same({ "four", "one", "two" }, paths)
    end)

    it("reports each item's own service error", function()
      local s = core.session()
      local items = s:batch("modelslab", "clear_cache", {
        ml(), ml{ key = "bad-" .. uid("k") }, ml{ key = uid("k") .. " fault=invalid_json" }, ml(),
      })
      s:close()
      assert.equal(4, #items)
      assert.equal("success", items[1].result.status)
      assert.equal("api", items[2].err.kind)
      assert.equal("Invalid API key", items[2].err.message)
      assert.equal("decode", items[3].err.kind)
      assert.equal("success", items[4].result.status)
      assert.equal(4, #srv:requests())
    end)

    it("with concurrency 1 runs the items over one connection", function()
      local s = core.session()
      local list = {}
      for i = 1, 6 do list[i] = ml() end
      local items = s:batch("modelslab", "clear_queue", list, 1)
      s:close()
      for i = 1, 6 do assert.equal("success", items[i].result.status) end
      assert.equal(6, srv:stats().requests)
      assert.equal(1, srv:stats().connections)
    end)

    it("that raises on a bad item sends nothing and leaves the session usable", function()
      local s = core.session()
      assert.error_matches(function()
        s:batch("modelslab", "clear_cache", { ml(), 42, ml() })
      end, "item 2 is not an options table")
      assert.error_matches(function()
        s:batch("modelslab", "clear_cache", { ml(), ml{ modelId = "x" } })
      end, "unknown option 'modelId'")
      assert.equal(0, #srv:requests())
      assert.is_table((s:call("modelslab", "clear_cache", ml())))
      local items = s:batch("modelslab", "clear_cache", { ml(), ml() })
      assert.is_table(items[1].result)
      assert.is_table(items[2].result)
      s:close()
      assert.equal(3, #srv:requests())
    end)

    it("of an empty list returns an empty list", function()
      local s = core.session()
      local items = s:batch("omni", "reset_cache", {})
      assert.same({}, items)
      assert.is_table((s:call("omni", "reset_cache", omni())))
      s:close()
      assert.equal(1, #srv:requests())
    end)

    -- An empty batch used to leave the session pointing at the freed run;
    -- closing the session then read freed memory.
    it("of an empty list leaves the session safe to close (valgrind)", function()
      local clean, out = helpers.valgrind_lua([[
        local core = require "cachectl.core"
        local s = core.session()
        assert(#s:batch("omni", "reset_cache", {}) == 0)
        collectgarbage(); collectgarbage()
        s:close()
      ]])
      if clean == nil then
        pending("needs valgrind, Lua 5.4 and no AddressSanitizer")
        return
      end
      local report = {}
      for line in out:gmatch("[^\n]+") do
        if #report < 8 then report[#report + 1] = line end
      end
      assert.is_true(clean, table.concat(report, "\n"))
    end)
  end)
end)
