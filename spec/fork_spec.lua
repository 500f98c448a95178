-- fork(): a client used in a process other than the one that opened its
-- connections never reuses them. Parent and child each get their own
-- answers, and whatever the child does with the inherited client (use it,
-- close it) leaves the parent's kept-alive connection alone. Each scenario
-- runs as a script in a fresh interpreter that forks itself (through a tiny
-- C helper compiled here), so busted's own process is never forked.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local lua_child = require "support.lua_child"

local uid = helpers.uid
local UUID = helpers.UUID

-- The script's preamble: the fork helper, cachectl, and a client `c` of
-- the mock at `base` (with the CA file `ca` for HTTPS), used once before
-- anything forks so that its connection is open and kept.
local function preamble(base, token, ca)
  return ([[
local fork = require "fork_helper"
local cachectl = require "cachectl"
local UUID, BASE, TOKEN, CA = %q, %q, %q, %s
local function client()
  return cachectl.omni.new{ token = TOKEN, base_url = BASE, ca_file = CA, rate_limit = false, retries = 0 }
end
local function ask(cl, name)
  local res, err = cl:reset_cache(UUID, name)
  if not res then return "error: " .. tostring(err) end
  return res.cache_reset.policy_name
end
local c = client()
assert(ask(c, "before-fork") == "before-fork")
]]):format(UUID, base, token, ca and ("%q"):format(ca) or "nil")
end

-- Lines of the script's output that start with `who`, as a list.
local function lines_of(out, who)
  local list = {}
  for line in out:gmatch("[^\n]+") do
    if line:sub(1, #who + 1) == who .. " " then list[#list + 1] = line:sub(#who + 2) end
  end
  return list
end

describe("fork()", function()
  local spec_dir = lua_child.spec_dir(debug.getinfo(1, "S").source)
  local cpath, remove_helper

  setup(function() cpath, remove_helper = lua_child.fork_helper(spec_dir) end)
  teardown(function() if remove_helper then remove_helper() end end)

  describe("over HTTP", function()
    local srv = server.use()

    it("a client used on both sides of a fork: every answer is the caller's own", function()
      local out, ok = lua_child.run(preamble(srv.base, uid("tok-fork")) .. [[
local pid = fork.fork()
local who = pid == 0 and "child" or "parent"
local own, first_wrong = 0, nil
for i = 1, 50 do
  local name = who .. "-" .. i
  local got = ask(c, name)
  if got == name then own = own + 1 else first_wrong = first_wrong or ("asked " .. name .. ", got " .. got) end
end
io.write(who, " ", own, " ", first_wrong or "-", "\n")
io.stdout:flush()
if pid == 0 then fork._exit(0) end
io.write("waited ", tostring(fork.wait(pid)), "\n")
]], { cpath = cpath })
      assert.is_true(ok, out)
      assert.same({ "0" }, lines_of(out, "waited"), out)
      assert.same({ "50 -" }, lines_of(out, "child"), out)
      assert.same({ "50 -" }, lines_of(out, "parent"), out)
      -- each name asked once, on the wire too
      local seen = {}
      for _, r in ipairs(srv:requests()) do
        local name = r.path:match("/cache_reset/(.+)$")
        seen[name] = (seen[name] or 0) + 1
      end
      for i = 1, 50 do
        assert.equal(1, seen["parent-" .. i], "parent-" .. i)
        assert.equal(1, seen["child-" .. i], "child-" .. i)
      end
    end)

    it("a session forked before its first call opens its own handles on each side", function()
      local out, ok = lua_child.run(([[
local fork = require "fork_helper"
local core = require "cachectl.core"
local s = core.session()
local pid = fork.fork()
local who = pid == 0 and "child" or "parent"
for i = 1, 20 do
  local res, err = s:call("omni", "reset_cache", { token = %q, base_url = %q, model_id = %q,
    policy = who .. "-" .. i, rate_limit = false })
  io.write(who, " ", res and res.cache_reset.policy_name or tostring(err), "\n")
end
io.stdout:flush()
if pid == 0 then fork._exit(0) end
fork.wait(pid)
]]):format(uid("tok-fork"), srv.base, UUID), { cpath = cpath })
      assert.is_true(ok, out)
      local child, parent = lines_of(out, "child"), lines_of(out, "parent")
      assert.equal(20, #child, out)
      assert.equal(20, #parent, out)
      for i = 1, 20 do
        assert.equal("child-" .. i, child[i])
        assert.equal("parent-" .. i, parent[i])
      end
    end)
  end)

  describe("over HTTPS", function()
    local srv = server.use_tls()

    -- libcurl ends a TLS connection it closes with a close_notify: sent by
    -- a child on a connection it shares with its parent, it would end the
    -- parent's connection too.
    it("the child closing the inherited client leaves the parent's kept-alive connection open", function()
      local out, ok = lua_child.run(preamble(srv.base, uid("tok-fork"), srv.ca) .. [[
local pid = fork.fork()
if pid == 0 then
  c:close()
  local fresh = client()
  io.write("child ", ask(fresh, "child-fresh"), "\n")
  fresh:close()
  io.stdout:flush()
  fork._exit(0)
end
fork.wait(pid)
io.write("parent ", ask(c, "parent-after"), "\n")
]], { cpath = cpath })
      assert.is_true(ok, out)
      assert.same({ "child-fresh" }, lines_of(out, "child"), out)
      assert.same({ "parent-after" }, lines_of(out, "parent"), out)
      local conn = {}
      for _, r in ipairs(srv:requests()) do conn[r.path:match("/cache_reset/(.+)$")] = r.connection end
      assert.equal(conn["before-fork"], conn["parent-after"], "the parent had to connect again")
      assert.are_not.equal(conn["before-fork"], conn["child-fresh"])
    end)

    it("a child that drops the inherited client (collected) leaves the parent's connection open", function()
      local out, ok = lua_child.run(preamble(srv.base, uid("tok-fork"), srv.ca) .. [[
local pid = fork.fork()
if pid == 0 then
  c = nil
  collectgarbage()
  collectgarbage()
  io.write("child collected\n")
  io.stdout:flush()
  fork._exit(0)
end
fork.wait(pid)
io.write("parent ", ask(c, "parent-after"), "\n")
]], { cpath = cpath })
      assert.is_true(ok, out)
      assert.same({ "collected" }, lines_of(out, "child"), out)
      assert.same({ "parent-after" }, lines_of(out, "parent"), out)
      local conn = {}
      for _, r in ipairs(srv:requests()) do conn[r.path:match("/cache_reset/(.+)$")] = r.connection end
      assert.equal(conn["before-fork"], conn["parent-after"], "the parent had to connect again")
    end)
  end)
end)
