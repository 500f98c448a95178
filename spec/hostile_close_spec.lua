-- Issue 21, bullet 7 (the Lua side): close() from inside a call's on_event
-- raises and changes nothing, for a client as for a session: the call ends
-- normally, the client stays usable and keeps its connection; a to-be-closed
-- client (__close) is closed when the call ends and releases its connection.
-- Connections are counted from /proc/net/tcp and this process's
-- descriptors (established, to the scripted server's port).
local hostile = require "support.hostile_server"
local helpers = require "support.helpers"
local cachectl = require "cachectl"
local core = require "cachectl.core"

local UUID = helpers.UUID

-- How many TCP connections this process holds open to 127.0.0.1:port (the
-- scripted server keeps them alive; a closed client end leaves
-- "established" at once): its own sockets only, as another process of a
-- parallel run may reach a port of the same number.
local connections = helpers.my_connections

describe("close() inside on_event", function()
  local srv

  setup(function()
    srv = hostile.start()
    srv:script{ yaml = { ["*"] = "cache_policies: {daily: {}}\n" }, pages = { [""] = { records = { { id = "a" } } } } }
  end)
  teardown(function() if srv then srv:stop() end end)

  -- A client whose on_event tries to close it once (the outcome in `tried`).
  local function closing_client(tried, how, opts)
    local c
    c = cachectl.omni.new(helpers.merge({ token = helpers.uid("tok-close"), base_url = srv.base, rate_limit = false,
      on_event = function(ev)
        if ev.type == "attempt" and not tried.done then
          tried.done = true
          tried.ok, tried.err = pcall(how, c)
        end
      end }, opts))
    return c
  end

  local calls = {
    { "reset_cache", function(c) return c:reset_cache(UUID, "daily") end },
    { "reset_cache with check_policy", function(c) return c:reset_cache(UUID, "daily", { check_policy = true }) end },
    { "reset_caches", function(c) return c:reset_caches(UUID, { "daily" })[1].result end },
    { "models", function(c) return c:models() end },
    { "cache_policies", function(c) return c:cache_policies(UUID) end },
    { "list_models (straight to the session)", function(c) return c:list_models() end },
  }

  for _, case in ipairs(calls) do
    local name, call = case[1], case[2]
    it("during " .. name .. ": raises, the call ends well, the client stays usable with its connection", function()
      local tried, before = {}, connections(srv.port)
      local c = closing_client(tried, function(self) self:close() end)
      assert.is_table(call(c))
      assert.is_true(tried.done)
      assert.is_false(tried.ok)
      assert.matches("cannot close a %a+ while", tostring(tried.err))
      assert.equal(before + 1, connections(srv.port))
      assert.is_table(call(c))                                   -- still usable
      assert.is_nil(tostring(c):find("closed"))
      c:close()
      assert.equal(before, connections(srv.port))
      assert.error_matches(function() call(c) end, "client is closed")
    end)
  end

  it("__close (a to-be-closed client) during a call: closed when the call ends, connection released", function()
    for _, case in ipairs(calls) do
      local tried, before = {}, connections(srv.port)
      local c = closing_client(tried, function(self) getmetatable(self).__close(self) end)
      assert.is_table(case[2](c), case[1])
      assert.is_true(tried.ok, case[1])
      assert.equal(before, connections(srv.port), case[1])
      assert.error_matches(function() case[2](c) end, "client is closed", nil, true, case[1])
    end
  end)

  it("an on_event that raises leaves the client closable", function()
    local before = connections(srv.port)
    local c = cachectl.omni.new{ token = helpers.uid("tok-raise"), base_url = srv.base, rate_limit = false,
      on_event = function() error("stop here") end }
    assert.error_matches(function() c:reset_cache(UUID, "daily", { check_policy = true }) end, "stop here")
    c:close()
    assert.equal(before, connections(srv.port))
  end)

  it("a session: close() inside its own call raises and changes nothing", function()
    local s, before = core.session(), connections(srv.port)
    local tried = {}
    local opts = { token = helpers.uid("tok-session"), base_url = srv.base, rate_limit = false,
      on_event = function() if not tried.done then tried.done, tried.ok = true, pcall(s.close, s) end end }
    assert.is_table(s:call("omni", "list_models", opts))
    assert.is_false(tried.ok)
    assert.equal(before + 1, connections(srv.port))
    assert.is_table(s:call("omni", "list_models", opts))
    s:close()
    assert.equal(before, connections(srv.port))
  end)

  it("a nested call on the same client from on_event raises; the outer call goes on when it is caught", function()
    local nested = {}
    local c
    c = cachectl.omni.new{ token = helpers.uid("tok-nested"), base_url = srv.base, rate_limit = false,
      on_event = function()
        if not nested.done then nested.done, nested.ok, nested.err = true, pcall(c.models, c) end
      end }
    assert.is_table(c:reset_cache(UUID, "daily"))
    assert.is_false(nested.ok)
    assert.matches("already running a call", tostring(nested.err))
    assert.is_table(c:models())
    c:close()
  end)
end)
