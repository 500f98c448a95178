--- Shared helpers for the specs: unique credentials, a free port, a deep
-- search for secrets, percent-decoding, events, a fresh cachectl with a
-- given environment, files and shell commands, and running a snippet of Lua
-- under valgrind. No assertions here: the specs assert.
local io, math, os, string, table = io, math, os, string, table
local assert, error, ipairs, pairs, pcall, require, tostring, type, getmetatable, tonumber, package =
  assert, error, ipairs, pairs, pcall, require, tostring, type, getmetatable, tonumber, package

local socket = require "socket"

local M = {}

--- `require(name)` for a dependency that .ci/deps installs: raises, naming
-- the Debian package, when it cannot be loaded (the spec fails, never pends).
function M.need(name, debian_package)
  local ok, mod = pcall(require, name)
  if not ok then
    error(name .. " cannot be loaded: install the Debian package " .. debian_package
      .. " (.ci/deps does)\n" .. tostring(mod), 2)
  end
  return mod
end

--- A model id the mock accepts, and the one it answers 404 for.
M.UUID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
M.MISSING_UUID = "00000000-0000-0000-0000-000000000000"

local function hex(n)
  local out = {}
  for i = 1, n do out[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(out)
end
M.hex = hex

local counter = 0

--- A credential no other test uses (the mock counts faults per credential).
-- Directives for the mock can be appended: uid("k") .. ";fault=503;times=1".
function M.uid(prefix)
  counter = counter + 1
  return (prefix or "id") .. "-" .. counter .. "-" .. hex(8)
end

--- A recognisable secret: "SECRETKEY-" followed by 24 random hex digits.
function M.secret(prefix)
  return (prefix or "SECRETKEY") .. "-" .. hex(24)
end

--- `base` with every field of `over` (may be nil) set on top; returns base.
function M.merge(base, over)
  for k, v in pairs(over or {}) do base[k] = v end
  return base
end

--- An on_event function that appends each event to `list`.
function M.recorder(list)
  return function(ev) list[#list + 1] = ev end
end

--- A new list of events and an on_event function that appends to it.
function M.collector()
  local events = {}
  return events, M.recorder(events)
end

--- The events of `events` whose type is `t`, in order.
function M.of_type(events, t)
  local out = {}
  for _, ev in ipairs(events) do
    if ev.type == t then out[#out + 1] = ev end
  end
  return out
end

--- "attempt" or "wait/<reason>" for each event, in order.
function M.shape(events)
  local out = {}
  for i, ev in ipairs(events) do out[i] = ev.type .. (ev.reason and ("/" .. ev.reason) or "") end
  return out
end

--- Calls fn(cachectl) with a fresh copy of the Lua layer whose os.getenv
-- answers from `env` alone: a name absent from `env` (or false there) reads
-- as unset. os.getenv and the loaded module are restored afterwards, also
-- when fn raises (the error is raised again).
function M.with_env(env, fn)
  local real = os.getenv
  os.getenv = function(name) return env[name] or nil end -- luacheck: ignore 122
  package.loaded.cachectl = nil
  local ok, err = pcall(function() fn(require "cachectl") end)
  os.getenv = real -- luacheck: ignore 122
  package.loaded.cachectl = nil
  if not ok then error(err, 0) end
end

--- A TCP port on 127.0.0.1 that nothing listens on (bound, read, closed).
function M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

--- Where `secret` occurs inside `value` (strings, table keys and values,
-- metatables, recursively), as a readable path; nil when it occurs nowhere.
function M.find_secret(value, secret, path, seen)
  path = path or "value"
  seen = seen or {}
  local t = type(value)
  if t == "string" then
    if value:find(secret, 1, true) then return path end
  elseif t == "table" then
    if seen[value] then return nil end
    seen[value] = true
    for k, v in pairs(value) do
      local where = M.find_secret(k, secret, path .. "<key " .. tostring(k) .. ">", seen)
        or M.find_secret(v, secret, path .. "." .. tostring(k), seen)
      if where then return where end
    end
    local mt = getmetatable(value)
    if type(mt) == "table" then
      return M.find_secret(mt, secret, path .. "<metatable>", seen)
    end
  end
  return nil
end

--- Decodes %XX escapes; nil when an escape is malformed.
function M.percent_decode(s)
  if s:find("%%%X") or s:find("%%.%X") or s:find("%%.?$") then return nil end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Escapes the magic characters of a Lua pattern.
function M.literal(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

--- The recorded requests whose raw path starts with `prefix`.
function M.requests_under(requests, prefix)
  local out = {}
  for _, r in ipairs(requests) do
    if r.path:sub(1, #prefix) == prefix then out[#out + 1] = r end
  end
  return out
end

--- The URL of `srv` with its host replaced (for loopback spellings).
function M.url_with_host(srv, host)
  local port = srv.url:match(":(%d+)$")
  return "http://" .. host .. ":" .. port .. "/api"
end

--- Calls fn (which returns done, value) until it is done, up to `tries`
-- times with a short pause between; returns the last value.
function M.eventually(fn, tries)
  local done, value
  for _ = 1, tries or 100 do
    done, value = fn()
    if done then break end
    socket.sleep(0.02)
  end
  return value
end

--- `s` quoted for sh.
function M.sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Runs a shell command; true when it exited 0 (os.execute returns true in
-- 5.2+, 0 in 5.1).
function M.succeeds(cmd)
  local r = os.execute(cmd)
  return r == true or r == 0
end

--- The whole content of a file, or nil when it cannot be opened.
function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

--- How many established TCP connections this process holds to 127.0.0.1:`port`
-- (its socket descriptors matched with /proc/net/tcp: the other processes
-- of a parallel run, which may reach a port of the same number, never count).
function M.my_connections(port)
  local pid = assert((M.read_file("/proc/self/stat") or ""):match("^(%d+)"))
  local p = assert(io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null"))
  local mine = {}
  for inode in p:read("*a"):gmatch("socket:%[(%d+)%]") do mine[inode] = true end
  p:close()
  local n = 0
  for line in (M.read_file("/proc/net/tcp") or ""):gmatch("[^\n]+") do
    local remote, state, inode = line:match("^%s*%d+: %x+:%x+ 0100007F:(%x+) (%x%x) %S+ %S+ %S+ +%d+ +%d+ +(%d+)")
    if remote and tonumber(remote, 16) == port and state == "01" and mine[inode] then n = n + 1 end
  end
  return n
end

--- Writes a file, then gives it `mode` (e.g. "600") when one is given.
function M.write_file(path, text, mode)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  if mode then assert(M.succeeds("chmod " .. mode .. " " .. M.sh_quote(path))) end
end

local function command_exists(name)
  local p = io.popen("command -v " .. name .. " 2>/dev/null")
  local out = p:read("*a")
  p:close()
  return out ~= ""
end

--- Runs `code` in a fresh lua5.4 under valgrind, with this process's
-- package paths. Returns nil when valgrind is missing or this is not Lua 5.4
-- (the paths would lead to another ABI's build); otherwise
-- clean (true when valgrind reported no error and Lua exited 0), output.
function M.valgrind_lua(code)
  if _VERSION ~= "Lua 5.4" or not command_exists("valgrind") then return nil end
  -- under AddressSanitizer the module needs the ASan runtime, valgrind can't run both
  if (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) then return nil end
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(string.format("package.path = %q\npackage.cpath = %q\n", package.path, package.cpath))
  f:write(code)
  f:close()
  local p = io.popen("valgrind -q --error-exitcode=99 lua5.4 " .. file .. " 2>&1")
  local out = p:read("*a")
  local ok, _, status = p:close()
  os.remove(file)
  return ok == true and status == 0, out
end

-- An object whose finalizer is fn: a table in 5.2+, a proxy in 5.1 and
-- LuaJIT (only userdata have __gc there).
function M.finalizable(fn)
  local newproxy = rawget(_G, "newproxy")
  if newproxy then
    local p = newproxy(true)
    getmetatable(p).__gc = fn
    return p
  end
  return setmetatable({}, { __gc = fn })
end

return M
