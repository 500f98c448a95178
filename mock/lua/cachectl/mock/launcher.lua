--- Starting the mock server in a separate process for tests (`mock.start`),
-- and the handle that talks to its control API over plain LuaSocket (and
-- LuaSec for HTTPS), not cachectl.
-- @module cachectl.mock.launcher

local debug, io, math, os, string, table = debug, io, math, os, string, table
local assert, error, ipairs, pairs, pcall, setmetatable, tonumber, tostring, type, require =
  assert, error, ipairs, pairs, pcall, setmetatable, tonumber, tostring, type, require

local socket = require "socket"
local json = require "cachectl.mock.json"
local server = require "cachectl.mock.server"

local launcher = {}

local CONTROL_TIMEOUT = 10

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- The directory holding the `cachectl/` folder this file was loaded from.
local function module_root()
  local source = debug.getinfo(1, "S").source
  if source:sub(1, 1) ~= "@" then return nil end
  local root = source:sub(2):match("^(.-)cachectl[/\\]mock[/\\]launcher%.lua$")
  if root == "" then root = "./" end
  return root
end

-- Connects to the server of `url`, with TLS for https.
local function connect(url)
  local scheme, host, port = url:match("^(https?)://%[?([^%]/]-)%]?:(%d+)$")
  local sock, err = socket.connect(host, tonumber(port))
  if not sock then return nil, err end
  sock:settimeout(CONTROL_TIMEOUT)
  if scheme == "https" then
    local ssl = require "ssl"
    sock, err = ssl.wrap(sock, { mode = "client", protocol = "any", verify = "none" })
    if not sock then return nil, err end
    local ok, herr = sock:dohandshake()
    if not ok then sock:close(); return nil, herr end
  end
  return sock, host
end

--- One control request on a fresh connection.
-- @return status, body; or nil, message
local function control_request(url, method, path, body)
  local sock, host = connect(url)
  if not sock then return nil, host end
  body = body or ""
  local _, serr = sock:send(method .. " " .. path .. " HTTP/1.1\r\nHost: " .. host
    .. "\r\nContent-Type: application/json\r\nContent-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body)
  if serr then sock:close(); return nil, serr end
  local data, rerr, partial = sock:receive("*a")
  sock:close()
  data = data or partial or ""
  local status = tonumber(data:match("^HTTP/1%.%d (%d%d%d)") or "")
  if not status then return nil, rerr or "no response" end
  return status, data:match("\r\n\r\n(.*)$") or ""
end

local Handle = {}
Handle.__index = Handle

function Handle:_control(method, path, body)
  if self.stopped then error("cachectl.mock: server already stopped", 3) end
  local status, answer = control_request(self.url, method, path, body)
  if status ~= 200 then
    local decoded = status and json.decode(answer)
    local why = type(decoded) == "table" and decoded.message or answer
    error("cachectl.mock: " .. method .. " " .. path .. " failed: " .. tostring(why), 3)
  end
  return json.decode(answer)
end

local function percent_encode(s)
  return (s:gsub("[^%w%-%._~/%*]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

-- The query string of a filter of requests(): method, path, since.
local function filter_query(filter)
  if filter == nil then return "" end
  if type(filter) ~= "table" then error("cachectl.mock: the filter must be a table {method, path, since}", 4) end
  local parts = {}
  for _, name in ipairs({ "method", "path", "since" }) do
    local v = filter[name]
    if v ~= nil then
      if type(v) ~= "string" and type(v) ~= "number" then
        error("cachectl.mock: filter." .. name .. " must be a string or a number", 4)
      end
      parts[#parts + 1] = name .. "=" .. percent_encode(type(v) == "number" and string.format("%.17g", v) or v)
    end
  end
  for name in pairs(filter) do
    if name ~= "method" and name ~= "path" and name ~= "since" then
      error("cachectl.mock: unknown filter '" .. tostring(name) .. "' (known: method, path, since)", 4)
    end
  end
  return #parts > 0 and ("?" .. table.concat(parts, "&")) or ""
end

--- The API requests recorded since the last reset, in arrival order; with a
-- filter, only those of a method, a path (a glob matched against the end of
-- the path, as in fault rules) and arrived at or after `since` (epoch seconds).
-- @param filter table (optional): `method`, `path`, `since`
-- @return array of `{method, path, headers, body, connection, at}` tables
function Handle:requests(filter)
  return self:_control("GET", "/_mock/requests" .. filter_query(filter))
end

--- How many recorded requests pass a filter (as in `requests`), counted by
-- the server (`GET /_mock/requests/count`): no request is fetched.
-- @param filter table (optional): `method`, `path`, `since`
-- @return a number
function Handle:count(filter)
  return math.floor(self:_control("GET", "/_mock/requests/count" .. filter_query(filter)).count)   -- an integer
end

--- Adds a fault rule (see docs/mock.md, "Fault rules").
-- @param rule table `{ method =, path =, fault =, hold =, times =, status =, body =, headers = }`
-- @return the rule's id (its position in the list); raises naming a bad field
function Handle:fault(rule)
  if type(rule) ~= "table" then error("cachectl.mock: fault{...} takes a table", 2) end
  local ok, body = pcall(json.encode, rule)
  if not ok then error("cachectl.mock: the rule cannot be sent as JSON: " .. tostring(body), 2) end
  return self:_control("POST", "/_mock/faults", body).id
end

--- The fault rules, in order, each with its `id` and `uses`.
-- @return array of rule tables
function Handle:faults()
  return self:_control("GET", "/_mock/faults")
end

--- Counters since the last reset.
-- @return table `{connections = N, requests = N, open = N}`
function Handle:stats()
  return self:_control("GET", "/_mock/stats")
end

--- Clears the request log, the counters, the fault rules, the
-- per-credential fault counters and the rate windows, and restores the
-- models of the start.
-- @return true
function Handle:reset()
  self:_control("POST", "/_mock/reset")
  return true
end

--- Defines Omni models (see docs/mock.md, "POST /_mock/models").
-- @param list array of `{ id = UUID, name = "...", modelKind = "SHARED", yaml = "<text>" | forbidden = true, ... }`
-- @param replace true to drop every other model (the default set included)
-- @return the number of models the server now holds; raises on a bad definition
function Handle:define_models(list, replace)
  if type(list) ~= "table" then
    error("cachectl.mock: define_models(list [, replace]): list must be an array of models, got " .. type(list), 2)
  end
  if replace ~= nil and type(replace) ~= "boolean" then
    error("cachectl.mock: define_models(list [, replace]): replace must be true, false or nil", 2)
  end
  local models = json.array()
  for i, m in ipairs(list) do models[i] = m end
  return self:_control("POST", "/_mock/models", json.encode({ models = models, replace = replace == true })).models
end

--- Stops the server process and waits until it is gone. Idempotent.
-- @return true
function Handle:stop()
  if not self.stopped then
    self.stopped = true
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    self.proc:close()
  end
  return true
end

-- Option of start() -> flag of cachectl-mock.
local FLAGS = {
  { "omni_rate_limit", "--omni-rate-limit" }, { "omni_rate_limit_per", "--omni-rate-limit-per" },
  { "omni_error_shape", "--omni-error-shape" }, { "page_size", "--page-size" },
  { "max_body", "--max-body" }, { "max_connections", "--max-connections" }, { "models", "--models" },
}

-- The command that runs the server with `opts`, its stdout a pipe to us.
local function command(opts)
  local args = { "--host", opts.host or "127.0.0.1", "--port", tostring(opts.port or 0), "--exit-with-parent" }
  for _, f in ipairs(FLAGS) do
    if opts[f[1]] ~= nil then
      args[#args + 1] = f[2]
      args[#args + 1] = tostring(opts[f[1]])
    end
  end
  if opts.tls then
    for _, a in ipairs({ "--tls-cert", opts.tls.certificate, "--tls-key", opts.tls.key }) do args[#args + 1] = a end
  end
  for i, a in ipairs(args) do args[i] = string.format("%q", a) end
  local code = 'require("cachectl.mock").main({' .. table.concat(args, ",") .. '})'
  local env = {}
  local root = module_root()
  if root then
    local mine = root .. "?.lua;" .. root .. "?/init.lua"
    for _, var in ipairs({ "LUA_PATH", "LUA_PATH_5_2", "LUA_PATH_5_3", "LUA_PATH_5_4" }) do
      local old = os.getenv(var) or os.getenv("LUA_PATH")
      env[#env + 1] = var .. "=" .. shell_quote(mine .. (old and (";" .. old) or ";;"))
    end
  end
  return "echo $$; exec env " .. table.concat(env, " ") .. " " .. (opts.lua or "lua5.4") .. " -e " .. shell_quote(code)
end

--- Starts a mock server in a separate process (see `cachectl.mock.start`).
function launcher.start(opts)
  opts = opts or {}
  server.check(opts)
  local proc = assert(io.popen(command(opts), "r"))
  local pid = tonumber(proc:read("*l") or "")
  local url = proc:read("*l")
  if not pid or not url then
    proc:close()
    error("cachectl.mock: the server did not start (see stderr)", 2)
  end
  local handle = setmetatable({ url = url, pid = pid, proc = proc }, Handle)
  local deadline = socket.gettime() + CONTROL_TIMEOUT
  while control_request(url, "GET", "/_mock/stats") ~= 200 do
    if socket.gettime() > deadline then
      handle:stop()
      error("cachectl.mock: the server at " .. url .. " does not answer", 2)
    end
    socket.sleep(0.05)
  end
  return handle
end

return launcher
