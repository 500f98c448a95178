-- Descriptors follow use: a session opens libcurl's handles (and their
-- descriptors) on its first call, not when made; sessions and clients
-- dropped without close() are collected before the process runs out of
-- descriptors; running out is reported as such; and a child process holds
-- none of the descriptors the library opened (libcurl's wakeup pair
-- included). The scripts that need a descriptor limit run as child
-- processes (`ulimit -n`) of their own.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local lua_child = require "support.lua_child"
local core = require "cachectl.core"
local cachectl = require "cachectl"

local uid, read_file = helpers.uid, helpers.read_file

local function my_pid()
  return assert((read_file("/proc/self/stat") or ""):match("^(%d+)"))
end

-- This process's descriptors: { [fd] = what it points to }, pipes left out
-- (the listing's own pipe is one; the library opens none on Linux).
local function descriptors()
  local p = assert(io.popen("ls -l /proc/" .. my_pid() .. "/fd 2>/dev/null"))
  local out = {}
  for fd, target in p:read("*a"):gmatch("%s(%d+) %-> ([^\n]+)") do
    if not target:find("^pipe:") then out[tonumber(fd)] = target end
  end
  p:close()
  return out
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

describe("descriptors", function()
  local srv = server.use()

  local function ml(over)
    return helpers.merge({ key = uid("key"), base_url = srv.base, retries = 0 }, over)
  end

  it("a session or client holds none before its first call, and gives back what it opened on close", function()
    collectgarbage()
    local before = descriptors()
    local sessions, clients = {}, {}
    for i = 1, 100 do
      sessions[i] = core.session()
      clients[i] = cachectl.modelslab.new{ key = uid("key"), base_url = srv.base }
    end
    assert.same(before, descriptors())
    assert.is_table((sessions[1]:call("modelslab", "clear_cache", ml())))
    local during = count(descriptors())
    assert.is_true(during > count(before), "the first call opened nothing")
    assert.is_true(during <= count(before) + 3, "one call holds more than its wakeup pair and connection")
    sessions[1]:close()
    for i = 1, 100 do sessions[i]:close(); clients[i]:close() end
    assert.same(before, descriptors())
  end)

  it("an io.popen child holds none of the library's descriptors (libcurl's wakeup pair included)", function()
    collectgarbage()
    local before = descriptors()
    local s, c = core.session(), cachectl.modelslab.new{ key = uid("key"), base_url = srv.base }
    assert.is_table((s:call("modelslab", "clear_cache", ml())))
    assert.is_table((c:clear_cache()))
    local items = s:batch("modelslab", "clear_cache", { ml(), ml(), ml() }, 3)
    for i = 1, 3 do assert.is_table(items[i].result) end
    local opened = {}
    for fd, target in pairs(descriptors()) do
      if before[fd] ~= target then opened[fd] = target end
    end
    assert.is_true(count(opened) >= 3, "the calls opened no descriptor to look for")
    local p = assert(io.popen("ls -l /proc/self/fd"))
    local listing = p:read("*a")
    p:close()
    for fd, target in listing:gmatch("%s(%d+) %-> ([^\n]+)") do
      assert.are_not.equal(opened[tonumber(fd)], target, "the child holds descriptor " .. fd .. " (" .. target .. ")")
    end
    s:close()
    c:close()
  end)

  it("4,000 calls on sessions and clients dropped without close() all succeed under ulimit -n 1024", function()
    local out, ok = lua_child.run(([[
local core = require "cachectl.core"
local cachectl = require "cachectl"
local BASE = %q
local ballast = {}
for i = 1, 20 do ballast[i] = string.rep(string.char(64 + i), 1024 * 1024) end   -- 20 MB live
local stat = io.open("/proc/self/stat")
local pid = stat:read("*l"):match("^%%d+")
stat:close()
local function fds()
  local p, n = io.popen("ls /proc/" .. pid .. "/fd"), 0
  if not p then return 1024 end           -- none left for the pipe
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end
local ok, peak, first = 0, 0, nil
for i = 1, 4000 do
  local res, err
  if i %% 2 == 0 then
    res, err = core.session():call("modelslab", "clear_cache", { key = "k" .. i, base_url = BASE, retries = 0 })
  else
    res, err = cachectl.modelslab.new{ key = "k" .. i, base_url = BASE, retries = 0 }:clear_cache()
  end
  if res then ok = ok + 1 else first = first or tostring(err) end
  if i %% 100 == 0 then peak = math.max(peak, fds()) end
end
print("ok " .. ok)
print("peak " .. peak)
print("first " .. tostring(first))
print("ballast " .. #ballast)
]]):format(srv.base), { ulimit = 1024 })
    assert.is_true(ok, out)
    print("\n  descriptors: 4,000 dropped sessions and clients under ulimit -n 1024: "
      .. (out:match("peak (%d+)") or "?") .. " descriptors at most")
    assert.equal("4000", out:match("ok (%d+)"), out)
    assert.is_true(tonumber(out:match("peak (%d+)")) < 1024, out)
  end)

  it("running out of descriptors is reported as too many open files, not as a refused connection", function()
    local out, ok = lua_child.run(([[
local core = require "cachectl.core"
local held = {}
while true do
  local f = io.open("/dev/null")
  if not f then break end
  held[#held + 1] = f
end
local res, err = core.session():call("modelslab", "clear_cache", { key = "k", base_url = %q, retries = 0 })
print("res " .. tostring(res))
print("kind " .. tostring(err and err.kind))
print("message " .. tostring(err and err.message))
print("held " .. #held)
]]):format(srv.base), { ulimit = 64 })
    assert.is_true(ok, out)
    assert.equal("nil", out:match("res (%S+)"), out)
    assert.equal("connect", out:match("kind (%S+)"), out)
    assert.matches("too many open files", out:match("message ([^\n]+)"), 1, true)
    assert.matches("EMFILE", out:match("message ([^\n]+)"), 1, true)
    assert.equal(0, #srv:requests())
  end)
end)
