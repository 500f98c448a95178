--- A small scripted Omni for the hostile specs, in its own lua5.4 process:
-- it answers the model list, the model YAML and the reset from what the
-- spec scripts (pages by cursor, a YAML text or a raw `files` object per
-- model), keeps connections alive (so that a client's connections can be
-- counted), and logs every arrival as soon as its request line is read (so
-- that "nothing was sent" is seen from the server's side).
--
-- Usage: `local srv = hostile.start()`, `srv:script{ yaml = { ["*"] = text } }`,
-- `srv:log()`, `srv:reset()`, `srv:stop()`; `srv.base` is the API root.
local debug, io, os, string, table = debug, io, os, string, table
local assert, error, ipairs, select, setmetatable, tonumber =
  assert, error, ipairs, select, setmetatable, tonumber

local socket = require "socket"

local M = {}

-- ---- the server --------------------------------------------------------

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function query(path)
  local out = {}
  for k, v in (path:match("%?(.*)$") or ""):gmatch("([^&=]+)=([^&]*)") do out[unescape(k)] = unescape(v) end
  return out
end

-- Reads one request; nil when the connection is gone. `arrived` is called
-- with the request line as soon as it is read.
local function read_request(c, arrived)
  local line = c:receive("*l")
  if not line then return nil end
  local method, path = line:match("^(%u+) (%S+) HTTP")
  if not method then return nil end
  arrived(method, path)
  local headers = {}
  while true do
    local h = c:receive("*l")
    if not h then return nil end
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name:lower()] = value end
  end
  local n = tonumber(headers["content-length"] or "0") or 0
  local body = n > 0 and c:receive(n) or ""
  return { method = method, path = path, headers = headers, body = body }
end

-- The answer to an Omni request, from the script.
local function answer(req, script, json)
  local path = req.path:match("^[^?]*")
  if req.method == "GET" and path == "/api/v1/models" then
    local cursor = query(req.path).cursor or ""
    local page = script.pages and (script.pages[cursor] or script.pages["*"])
    return 200, page and json.encode(page) or '{"records":[],"pageInfo":{"hasNextPage":false}}'
  end
  local id = path:match("^/api/v1/models/([^/]+)/yaml$")
  if req.method == "GET" and id then
    local files = script.files and (script.files[id] or script.files["*"])
    local text = script.yaml and (script.yaml[id] or script.yaml["*"])
    if not files and text then files = { ["model.yaml"] = text } end
    if not files then return 404, '{"detail":"Model not found","status":404}' end
    return 200, json.encode({ files = files, version = 1 })
  end
  local model, policy = path:match("^/api/v1/models/([^/]+)/cache_reset/([^/]+)$")
  if req.method == "POST" and model then
    return 200, json.encode({ success = true, cache_reset = { model_id = model, policy_name = unescape(policy) } })
  end
  return 404, '{"detail":"no such route","status":404}'
end

-- The control routes (never logged): /_script, /_log, /_reset.
local function control(req, state, json)
  if req.path == "/_script" then
    state.script = json.decode(req.body)
  elseif req.path == "/_log" then
    return json.encode(state.log)
  elseif req.path == "/_reset" then
    state.log = {}
  end
  return "{}"
end

local function serve_one(c, state, json)
  local req = read_request(c, function(method, path)
    if path:sub(1, 2) ~= "/_" then state.log[#state.log + 1] = { method = method, path = path } end
  end)
  if not req then return false end
  local status, body
  if req.path:sub(1, 2) == "/_" then
    status, body = 200, control(req, state, json)
  else
    status, body = answer(req, state.script, json)
  end
  local closing = (req.headers.connection or ""):lower() == "close"
  local ok = c:send(string.format("HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s",
    status, #body, closing and "Connection: close\r\n" or "", body))
  return ok ~= nil and not closing
end

--- Serves until killed, keeping connections alive; prints its URL first.
function M.serve()
  local json = require "cjson"
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  io.stdout:write("http://127.0.0.1:", port, "\n")
  io.stdout:flush()
  local state, conns = { log = {}, script = {} }, {}
  while true do
    local ready = socket.select({ server, table.unpack(conns) }, nil, nil)
    for _, s in ipairs(ready) do
      if s == server then
        local c = server:accept()
        if c then
          c:settimeout(10)
          conns[#conns + 1] = c
        end
      elseif not serve_one(s, state, json) then
        s:close()
        for i, c in ipairs(conns) do
          if c == s then table.remove(conns, i) break end
        end
      end
    end
  end
end

-- ---- the handle the specs use ------------------------------------------

local Handle = {}
Handle.__index = Handle

local function request(self, method, path, body)
  local c = assert(socket.connect("127.0.0.1", self.port))
  c:settimeout(10)
  body = body or ""
  assert(c:send(method .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
    .. #body .. "\r\n\r\n" .. body))
  local data = c:receive("*a")
  c:close()
  return require("cjson").decode(data:match("\r\n\r\n(.*)$"))
end

--- Sets what the server answers: `pages` (cursor -> page, "" the first,
-- "*" any other), `yaml` (model id or "*" -> the text of model.yaml),
-- `files` (model id or "*" -> the whole `files` object). Forgets the log.
function Handle:script(script)
  request(self, "POST", "/_script", require("cjson").encode(script))
  self:reset()
end

--- The arrivals since the last reset: `{ method, path }` in order.
function Handle:log() return request(self, "GET", "/_log") end

--- Forgets the arrivals.
function Handle:reset() request(self, "POST", "/_reset") end

--- The arrivals whose path (without the query) ends with `tail`.
function Handle:arrivals(method, tail)
  local out = {}
  for _, r in ipairs(self:log()) do
    local p = r.path:match("^[^?]*")
    if r.method == method and p:sub(-#tail) == tail then out[#out + 1] = r end
  end
  return out
end

--- Stops the server process, by its pid.
function Handle:stop()
  if self.pid then
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    self.proc:close()
    self.pid = nil
  end
end

--- Starts the server in a separate lua5.4 process.
-- @return handle with `url`, `base` (url .. "/api"), `port`, `pid`
function M.start()
  local file = debug.getinfo(1, "S").source:sub(2)
  local proc = assert(io.popen("echo $$; exec lua5.4 " .. file .. " serve", "r"))
  local pid = tonumber(proc:read("*l") or "")
  local url = proc:read("*l")
  if not pid or not url then error("hostile server did not start") end
  local port = tonumber(url:match(":(%d+)$"))
  return setmetatable({ url = url, base = url .. "/api", port = port, pid = pid, proc = proc }, Handle)
end

-- run as a script (`lua5.4 hostile_server.lua serve`): serve
if select(1, ...) == "serve" then M.serve() end

return M
