-- Close-on-exec sockets: a child process started during or after a call
-- (io.popen, os.execute) inherits none of the client's kept-alive
-- connections, so the server sees a connection closed when the client
-- closes it, whatever the child is still doing.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"

local uid, sh_quote = helpers.uid, helpers.sh_quote

local function my_pid()
  return assert((helpers.read_file("/proc/self/stat") or ""):match("^(%d+)"))
end

-- The socket inodes in a `ls -l /proc/.../fd` listing, as a set.
local function sockets_in(listing)
  local set = {}
  for inode in listing:gmatch("socket:%[(%d+)%]") do set[inode] = true end
  return set
end

-- The inodes of the TCP sockets connected to `port` on this machine.
local function tcp_to(port)
  local set = {}
  for _, file in ipairs{ "/proc/net/tcp", "/proc/net/tcp6" } do
    for line in (helpers.read_file(file) or ""):gmatch("[^\n]+") do
      local remote, inode = line:match("^%s*%d+: %x+:%x+ %x+:(%x+) %x+ %S+ %S+ %S+ +%d+ +%d+ +(%d+)")
      if remote and tonumber(remote, 16) == port then set[inode] = true end
    end
  end
  return set
end

-- The client's connections to the mock: the sockets this process holds
-- whose other end is the mock's port.
local function connections(srv)
  local p = assert(io.popen("ls -l /proc/" .. my_pid() .. "/fd 2>/dev/null"))
  local mine = sockets_in(p:read("*a"))
  p:close()
  local out, n = {}, 0
  for inode in pairs(tcp_to(tonumber(srv.url:match(":(%d+)$")))) do
    if mine[inode] then out[inode], n = true, n + 1 end
  end
  return out, n
end

describe("a child process", function()
  local srv = server.use()

  local function ml(over)
    return helpers.merge({ key = uid("key"), base_url = srv.base, retries = 0 }, over)
  end

  it("started after a call holds none of the session's sockets, and the server sees close()", function()
    local s = core.session()
    assert.is_table((s:call("modelslab", "clear_cache", ml())))
    local mine, n = connections(srv)
    assert.equal(1, n, "the kept-alive connection was not found among the descriptors")
    assert.equal(1, srv:stats().open)
    -- the child lists its descriptors, then lives on (reading its stdin)
    -- until the spec has seen the server's side
    local listing = os.tmpname()
    local child = assert(io.popen("ls -l /proc/self/fd > " .. sh_quote(listing) .. " 2>&1; exec cat >/dev/null", "w"))
    local text = helpers.eventually(function()
      local t = helpers.read_file(listing) or ""
      return t:find("\n", 1, true) ~= nil, t
    end)
    for inode in pairs(mine) do
      assert.is_nil(sockets_in(text)[inode], "the child holds the client's socket " .. inode)
    end
    s:close()
    local open = helpers.eventually(function()
      local now = srv:stats().open
      return now == 0, now
    end)
    child:close()
    os.remove(listing)
    assert.equal(0, open)
  end)

  it("started during a call (from on_event) holds none of the call's sockets", function()
    local listing = os.tmpname()
    local s = core.session()
    assert.is_table((s:call("modelslab", "clear_cache", ml{ on_event = function()
      assert(helpers.succeeds("ls -l /proc/self/fd > " .. sh_quote(listing) .. " 2>&1"))
    end })))
    local text = helpers.read_file(listing) or ""
    os.remove(listing)
    local mine, n = connections(srv)
    assert.equal(1, n, "the call's connection was not found among the descriptors")
    for inode in pairs(mine) do
      assert.is_nil(sockets_in(text)[inode], "the child held the call's socket " .. inode)
    end
    s:close()
  end)
end)
