--- Test harness: a real redis-server for one spec file, on a free loopback
-- port, with no persistence (no RDB, no AOF, its files in a temp directory),
-- stopped by its own pid.
-- Usage: `local srv = redis_server.start{ password = "..." }` in `setup`,
-- `srv:stop()` in `teardown`; `srv:url()`, `srv:client()` for an admin
-- connection (redis-lua), `srv:restart()`.
local io, os, string, table = io, os, string, table
local assert, error, ipairs, pcall, require, setmetatable, tonumber, tostring, package, loadfile =
  assert, error, ipairs, pcall, require, setmetatable, tonumber, tostring, package, loadfile

local socket = require "socket"
local helpers = require "support.helpers"

local M = {}

-- Debian's lua-redis installs redis.lua for Lua 5.1-5.3 only; the file works
-- unchanged under 5.4. Where `require "redis"` fails, this is the file.
local function redis_file()
  for _, dir in ipairs{ "/usr/share/lua/5.3", "/usr/share/lua/5.1" } do
    if helpers.read_file(dir .. "/redis.lua") then return dir .. "/redis.lua" end
  end
  return nil
end

--- Makes `require "redis"` work in this process (a preload of Debian's file
-- when the interpreter's own path lacks it). Returns true when it does.
function M.use_redis_lua()
  if pcall(require, "redis") then return true end
  local file = redis_file()
  if not file then return false end
  package.preload.redis = assert(loadfile(file))
  return pcall(require, "redis")
end

--- As use_redis_lua, but raises, naming the Debian package, when redis-lua
-- cannot be loaded (a spec that needs it fails, never pends).
function M.need_redis_lua()
  if not M.use_redis_lua() then
    error("redis-lua cannot be loaded: install the Debian package lua-redis (.ci/deps does)", 2)
  end
end

--- Lua source that gives a child process this process's package paths and
-- the same access to redis-lua.
function M.prelude()
  local lines = {
    string.format("package.path = %q", package.path),
    string.format("package.cpath = %q", package.cpath),
  }
  local file = redis_file()
  if file then
    lines[#lines + 1] = string.format(
      "if not pcall(require, 'redis') then package.preload.redis = assert(loadfile(%q)) end", file)
  end
  return table.concat(lines, "\n") .. "\n"
end

local function alive(pid)
  return helpers.succeeds("kill -0 " .. pid .. " 2>/dev/null")
end

-- true once something on the port answers PING (+PONG, or -NOAUTH).
local function answers(port)
  local c = socket.tcp()
  c:settimeout(0.5)
  if not c:connect("127.0.0.1", port) then
    c:close()
    return false
  end
  c:send("PING\r\n")
  local line = c:receive("*l")
  c:close()
  return line ~= nil
end

local Server = {}
Server.__index = Server

local function launch(srv)
  local conf = srv.dir .. "/redis.conf"
  local lines = {
    "port " .. srv.port, "bind 127.0.0.1", "save \"\"", "appendonly no", "daemonize no",
    "dir " .. srv.dir, "logfile " .. srv.dir .. "/redis.log",
  }
  if srv.password then lines[#lines + 1] = "requirepass " .. srv.password end
  helpers.write_file(conf, table.concat(lines, "\n") .. "\n", "600")
  local p = assert(io.popen("redis-server " .. helpers.sh_quote(conf) .. " >/dev/null 2>&1 & echo $!"))
  srv.pid = tonumber(p:read("*l"))
  p:close()
  for _ = 1, 250 do
    if answers(srv.port) then return true end
    if not alive(srv.pid) then return false end
    socket.sleep(0.02)
  end
  return false
end

--- Starts a redis-server.
-- @tparam[opt] table opts `{ password = "...", port = n }`
-- @return a handle: `port`, `pid`, `password`, and the methods below
function M.start(opts)
  opts = opts or {}
  if not helpers.succeeds("command -v redis-server >/dev/null 2>&1") then
    error("redis-server is not installed: install the Debian package redis-server (.ci/deps does)", 2)
  end
  local dir = os.tmpname()
  os.remove(dir)
  assert(helpers.succeeds("mkdir -m 700 " .. helpers.sh_quote(dir)))
  local srv = setmetatable({ dir = dir, password = opts.password }, Server)
  for _ = 1, 5 do
    srv.port = opts.port or helpers.free_port()
    if launch(srv) then return srv end
    if alive(srv.pid) then helpers.succeeds("kill " .. srv.pid) end
  end
  error("redis-server did not start: " .. tostring(helpers.read_file(dir .. "/redis.log")))
end

--- The URL of this server, e.g. `srv:url{ password = true, db = 2 }`.
-- @tparam[opt] table opts `password` (true: the server's, or a string),
-- `user`, `db`
function Server:url(opts)
  opts = opts or {}
  local auth = ""
  local password = opts.password == true and self.password or opts.password
  if password then auth = (opts.user or "") .. ":" .. password .. "@" end
  return "redis://" .. auth .. "127.0.0.1:" .. self.port .. (opts.db and "/" .. opts.db or "")
end

--- An admin connection (redis-lua), logged in, on database `db` (default 0).
function Server:client(db)
  M.need_redis_lua()
  local c = require("redis").connect("127.0.0.1", self.port)
  if self.password then c:auth(self.password) end
  if db then c:select(db) end
  return c
end

--- Stops the server by its pid and waits until it is gone.
function Server:stop(keep_dir)
  if self.pid and alive(self.pid) then
    helpers.succeeds("kill " .. self.pid)
    for _ = 1, 250 do
      if not alive(self.pid) then break end
      socket.sleep(0.02)
    end
  end
  self.pid = nil
  if not keep_dir then helpers.succeeds("rm -rf " .. helpers.sh_quote(self.dir)) end
end

--- Stops the server and starts a new one on the same port (empty: no persistence).
function Server:restart()
  self:stop(true)
  assert(launch(self), "redis-server did not start again on port " .. self.port)
end

return M
