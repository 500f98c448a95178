--- Test harness: a real nginx (Debian's nginx + lua-nginx-module, LuaJIT)
-- in a temp folder, started as a process and stopped by its own pid, and a
-- small HTTP/1.0 client over LuaSocket to talk to it.
-- Usage: `local n = nginx_server.start{ conf = function(dir, port) ... end,
-- files = { ["x.lua"] = "..." }, env = { NAME = value } }` in `setup`,
-- `n:stop()` in `teardown`. No assertions about the code under test here.
local io, table = io, table
local assert, error, ipairs, pairs, setmetatable, tonumber, tostring, pcall =
  assert, error, ipairs, pairs, setmetatable, tonumber, tostring, pcall

local socket = require "socket"
local cjson = require "cjson"
local helpers = require "support.helpers"
local sh_quote, read_file, write_file, run = helpers.sh_quote, helpers.read_file, helpers.write_file,
  helpers.succeeds

local M = {}

--- Whether process `pid` is there and not a zombie.
function M.alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end

-- ---- HTTP/1.0 over LuaSocket ---------------------------------------------

--- Sends a request on connection `c` (nothing is read).
function M.send_on(c, method, path, body, headers)
  local lines = { method .. " " .. path .. " HTTP/1.0", "Host: 127.0.0.1" }
  if body then
    lines[#lines + 1] = "Content-Type: application/json"
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")))
  return c
end

local function connect(port)
  local c = assert(socket.tcp())
  c:settimeout(30)
  assert(c:connect("127.0.0.1", port))
  return c
end

--- Opens a connection and sends one request on it (one request per connection).
function M.send(port, method, path, body, headers)
  return M.send_on(connect(port), method, path, body, headers)
end

--- Reads an answer to the end of the connection and closes it:
-- `{ status, headers (lower-case names), body, json (when JSON) }`.
function M.receive(c)
  local all, err, partial = c:receive("*a")
  c:close()
  all = all or partial
  assert(all and all ~= "", "no answer: " .. tostring(err))
  local head, body = all:match("^(.-)\r\n\r\n(.*)$")
  local res = { status = tonumber(head:match("^HTTP/%d%.%d (%d%d%d)")), headers = {}, body = body }
  for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do res.headers[k:lower()] = v end
  if (res.headers["content-type"] or ""):find("json", 1, true) then res.json = cjson.decode(body) end
  return res
end

--- One request on its own connection, its answer.
function M.request(port, method, path, body, headers)
  return M.receive(M.send(port, method, path, body, headers))
end

--- Whether an answer (or the close) has arrived on `c`, without waiting.
function M.answered(c)
  local readable = socket.select({ c }, nil, 0)
  return readable[1] == c
end

-- The pid of the worker that holds a new keep-alive connection (asked with
-- GET /pid, which must answer `return 200 $pid;`); the connection stays open.
local function worker_of(port)
  local c = connect(port)
  M.send_on(c, "GET", "/pid", nil, { Connection = "keep-alive" })
  local len
  while true do
    local line = assert(c:receive("*l"))
    if line == "" then break end
    len = tonumber(line:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)$")) or len
  end
  assert(len, "GET /pid: no Content-Length")
  return assert(c:receive(len)), c
end

--- Connections held by each worker: opens keep-alive connections until each
-- of `workers` worker processes holds `each` of them (a connection stays
-- with the worker that accepted it). Returns `{ [pid] = { conn, ... } }`;
-- requests sent on these connections (`send_on`, HTTP/1.0 without
-- keep-alive: the last one) are served by that worker.
function M.connections_per_worker(port, workers, each)
  local by_pid, full = {}, 0
  for _ = 1, 50 * workers * each do
    local pid, c = worker_of(port)
    local list = by_pid[pid] or {}
    by_pid[pid] = list
    if #list < each then
      list[#list + 1] = c
      if #list == each then full = full + 1 end
    else
      c:close()
    end
    if full == workers then return by_pid end
  end
  error("could not reach " .. workers .. " workers with " .. each .. " connections each")
end

-- ---- configuration ---------------------------------------------------------

--- The start of a spec's nginx.conf, in `dir` (the server's folder): the
-- Lua module loaded, one master and `workers` worker processes (default 1),
-- the `env` names passed on to the workers, the thread pool `cachectl`
-- (`threads`, default 8), `connections` per worker (default 256), and an
-- http block opened with every temp path in `dir` and the Lua paths of the
-- repository at `root` (its lua/ tree and LuaJIT build) and of `dir` (the
-- files the spec writes there). The caller adds its server blocks (and any
-- other http directive) and closes the http block.
function M.conf_head(dir, root, opts)
  opts = opts or {}
  local env = {}
  for i, name in ipairs(opts.env or {}) do env[i] = "env " .. name .. ";\n" end
  return ([[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
master_process on;
worker_processes %d;
error_log %s/error.log notice;
pid %s/nginx.pid;
%sthread_pool cachectl threads=%d;
events { worker_connections %d; }
http {
    access_log off;
    client_body_temp_path %s/body;
    proxy_temp_path %s/proxy;
    fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi;
    scgi_temp_path %s/scgi;
    lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;;";
    lua_package_cpath "%s/build/luajit/?.so;;";
]]):format(opts.workers or 1, dir, dir, table.concat(env), opts.threads or 8, opts.connections or 256,
    dir, dir, dir, dir, dir, root, root, dir, root)
end

-- ---- windows -----------------------------------------------------------------

--- The most of `times` (seconds) that lie within one window of `per` seconds:
-- two times less than `per - tolerance` apart count as one window.
function M.busiest_window(times, per, tolerance)
  local sorted = {}
  for i = 1, #times do sorted[i] = times[i] end
  table.sort(sorted)
  local most, j = 0, 1
  for i = 1, #sorted do
    while sorted[i] - sorted[j] >= per - tolerance do j = j + 1 end
    if i - j + 1 > most then most = i - j + 1 end
  end
  return most
end

-- ---- the server ----------------------------------------------------------------

local Nginx = {}
Nginx.__index = Nginx

--- Stops nginx by its pid (TERM, then KILL after 10 s) and removes its folder.
function Nginx:stop()
  if self.stopped then return end
  self.stopped = true
  local pid = self.pid
  if pid then
    run("kill -TERM " .. pid .. " 2>/dev/null")
    local deadline = socket.gettime() + 10
    while M.alive(pid) and socket.gettime() < deadline do socket.sleep(0.05) end
    if M.alive(pid) then run("kill -KILL " .. pid .. " 2>/dev/null") end
  end
  self.proc:close()    -- reaps the master; it has waited for its workers
  run("rm -rf " .. sh_quote(self.dir))
end

--- nginx's logs so far (stderr and error.log).
function Nginx:logs()
  return (read_file(self.dir .. "/stderr.log") or "") .. (read_file(self.dir .. "/error.log") or "")
end

local function ready(self, port)
  self.pid = self.pid or tonumber(read_file(self.dir .. "/nginx.pid") or "")
  if not self.pid then return false end
  local c = socket.tcp()
  c:settimeout(1)
  local up = c:connect("127.0.0.1", port)
  c:close()
  if not up then return false end
  local ok, res = pcall(M.request, port, "GET", "/ping")
  return ok and res.status == 200
end

--- Starts nginx in a fresh temp folder (mode 755: workers run as nobody).
-- `o.conf(dir, port)` returns nginx.conf (it must serve GET /ping with 200
-- and write its pid to dir/nginx.pid); `o.files` are written into the folder;
-- `o.env` is nginx's environment. Returns once /ping answers.
function M.start(o)
  local p = assert(io.popen("mktemp -d /tmp/cachectl-nginx.XXXXXX"))
  local dir = p:read("*l")
  p:close()
  run("chmod 755 " .. sh_quote(dir))
  local port = helpers.free_port()
  write_file(dir .. "/nginx.conf", o.conf(dir, port))
  for name, text in pairs(o.files or {}) do write_file(dir .. "/" .. name, text) end
  local env = {}
  for k, v in pairs(o.env or {}) do env[#env + 1] = k .. "=" .. sh_quote(v) end
  -- LD_PRELOAD goes: under `make spec-asan` it would load ASan into nginx.
  local proc = assert(io.popen("exec env -u LD_PRELOAD " .. table.concat(env, " ") .. " nginx -p "
    .. sh_quote(dir) .. " -c " .. sh_quote(dir .. "/nginx.conf") .. " >" .. sh_quote(dir .. "/stderr.log")
    .. " 2>&1", "r"))
  local self = setmetatable({ dir = dir, port = port, proc = proc }, Nginx)
  local deadline = socket.gettime() + 10
  while not ready(self, port) do
    if socket.gettime() > deadline then
      local log = self:logs()
      self:stop()
      error("nginx did not start:\n" .. log, 2)
    end
    socket.sleep(0.05)
  end
  return self
end

--- Builds the LuaJIT module of the checkout at `root` (the one nginx loads)
-- and checks that nginx is installed; raises saying what is missing.
function M.prepare(root)
  -- LD_PRELOAD goes: under `make spec-asan` the build would load ASan into make
  if not run("cd " .. sh_quote(root) .. " && env -u LD_PRELOAD make -s LUA=luajit >/dev/null") then
    error("make LUA=luajit failed", 2)
  end
  if not read_file(root .. "/build/luajit/cachectl/core.so") then
    error("no build/luajit/cachectl/core.so after make LUA=luajit", 2)
  end
  if not run("command -v nginx >/dev/null") then
    error("nginx is not installed: install the Debian packages nginx and libnginx-mod-http-lua (.ci/deps does)", 2)
  end
end

--- The checkout's root, absolute, from a spec file's `debug.getinfo(1, "S").source`.
function M.root_dir(spec_source)
  local p = assert(io.popen("pwd"))
  local cwd = p:read("*l")
  p:close()
  local dir = spec_source:sub(2):match("^(.*)/spec/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then dir = cwd .. "/" .. dir end
  return (dir:gsub("/%./", "/"):gsub("/%.$", ""))
end

return M
