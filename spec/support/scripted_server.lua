--- A small scripted HTTP server for the specs, in a separate lua5.4 process
-- (LuaSocket, one connection at a time, every answer with Connection: close).
-- It answers what the mock cannot: bodies that are JSON but not objects, each
-- of Omni's error shapes, and error messages that echo the caller's
-- credential percent-encoded or JSON-escaped.
--
-- The first path segment names the scenario: with base_url = srv.url ..
-- "/detail_404", a call to {base}/v1/models/... gets that scenario's answer;
-- "/echo_<form>" echoes the credential in that form (M.FORMS);
-- "/503_then_ok" (any status) answers it once per credential, then success.
-- `GET /_log` returns the requests seen since the last `POST /_reset`
-- (method, path, headers, body), in order.
--
-- Usage: `local srv = scripted.start()` ... `srv:log()`, `srv:reset()`, `srv:stop()`.
local debug, io, os, string = debug, io, os, string
local assert, error, pcall, select, setmetatable, tonumber, type =
  assert, error, pcall, select, setmetatable, tonumber, type

local socket = require "socket"

local M = {}

-- ---- the credential in other forms -------------------------------------

local function pct(s, hex_fmt, keep)
  return (s:gsub("[^%w%-%._~" .. (keep or "") .. "]", function(c)
    return "%" .. string.format(hex_fmt, c:byte())
  end))
end

--- The forms a service may echo a credential in, by name.
M.FORMS = {
  pct_upper = function(s) return pct(s, "%02X", "/") end,       -- Zq7%2BxY2/pL9%3DmK4
  pct_lower = function(s) return pct(s, "%02x", "/") end,       -- Zq7%2bxY2/pL9%3dmK4
  pct_slash = function(s) return pct(s, "%02X") end,            -- '/' as %2F too
  pct_every = function(s)                                        -- every byte, alnum included
    return (s:gsub(".", function(c) return string.format("%%%02X", c:byte()) end))
  end,
  json_slash = function(s) return (s:gsub("/", "\\/")) end,      -- \/ as JSON encoders write it
  json_u = function(s)                                           -- \u00XX, lower-case hex
    return (s:gsub("[^%w]", function(c) return string.format("\\u%04x", c:byte()) end))
  end,
  json_u_every = function(s)                                     -- every byte, upper-case hex
    return (s:gsub(".", function(c) return string.format("\\u%04X", c:byte()) end))
  end,
}

-- ---- the server --------------------------------------------------------

local function fixed(status, body, headers)
  return function() return status, body, headers end
end

local SCENARIOS = {
  -- 2xx bodies that are JSON but not an object
  array = fixed(200, '[{"status":"success","success":true}]'),
  empty_array = fixed(200, "[]"),
  number = fixed(200, "42"),
  string = fixed(200, '"success"'),
  null = fixed(200, "null"),
  boolean = fixed(200, "true"),
  -- an object after blanks is still an object
  blank_object = fixed(200, ' \r\n\t{"status":"success","success":true,"records":[]}'),
  -- Omni's three error shapes (vendors.md)
  detail_404 = fixed(404, '{"detail": "Model 770e8400-e29b-41d4-a716-446655440000 not found", "status": 404}'),
  error_422 = fixed(422, '{"error": "resetAt must not be in the future"}'),
  error_message_400 = fixed(400, '{"error": "invalid_reset_at", "message": "Invalid reset timestamp"}'),
  -- which field wins
  all_four = fixed(400, '{"detail": "D", "error": "E", "messege": "M2", "message": "M1", "error_code": 7}'),
  no_message = fixed(400, '{"detail": "D", "error": "E", "messege": "M2"}'),
  detail_error = fixed(400, '{"detail": "D", "error": "E"}'),
  empty_detail = fixed(400, '{"detail": "", "error": "E"}'),
  detail_object = fixed(400, '{"detail": {"loc": ["body"]}, "error": "E"}'),
  array_error = fixed(400, '[{"message": "not read: not an object"}]'),
}

local function credential_of(req, json)
  local token = (req.headers["authorization"] or ""):match("^Bearer (.+)$")
  if token then return token end
  local ok, body = pcall(json.decode, req.body)
  if ok and type(body) == "table" and type(body.key) == "string" then return body.key end
  return ""
end

-- echo_<form>: a 401 whose message, detail and error all echo the credential.
local function echo(form, req, json)
  local enc = M.FORMS[form](req.cred)
  return 401, json.encode({ message = "invalid key " .. enc, error = enc, detail = "got " .. enc })
end

-- <status>_then_ok: the first request of each credential gets that status
-- (Omni's {detail, status} body, Retry-After: 0), the next ones a success.
local function then_ok(status, req, state, json)
  local seen = state.count[req.cred] or 0
  state.count[req.cred] = seen + 1
  if seen == 0 then
    return status, json.encode({ detail = "try again", status = status }), "Retry-After: 0\r\n"
  end
  return 200, '{"records": [], "pageInfo": {"hasNextPage": false}, "files": {}, "success": true}'
end

local function read_request(c)
  local line = c:receive("*l")
  if not line then return nil end
  local method, path = line:match("^(%u+) (%S+) HTTP")
  local req = { method = method, path = path, headers = {}, body = "" }
  while true do
    local h = c:receive("*l")
    if not h then return nil end
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name then req.headers[name:lower()] = value end
  end
  local n = tonumber(req.headers["content-length"] or "0") or 0
  if n > 0 then req.body = c:receive(n) or "" end
  return req
end

local function answer(req, state, json)
  if req.path == "/_log" then return 200, json.encode(state.log) end
  if req.path == "/_reset" then state.log, state.count = {}, {}; return 200, "{}" end
  state.log[#state.log + 1] = req
  req.cred = credential_of(req, json)
  local scenario = req.path:match("^/([^/?]+)") or ""
  local form = scenario:match("^echo_(.+)$")
  if form and M.FORMS[form] then return echo(form, req, json) end
  local status = tonumber(scenario:match("^(%d%d%d)_then_ok$") or "")
  if status then return then_ok(status, req, state, json) end
  local fn = SCENARIOS[scenario]
  if fn then return fn(req) end
  return 404, '{"detail": "no scenario ' .. scenario .. '", "status": 404}'
end

--- Serves until killed; prints its URL on stdout first.
function M.serve()
  local json = require "cjson"
  local server = assert(socket.bind("127.0.0.1", 0))
  local _, port = server:getsockname()
  io.stdout:write("http://127.0.0.1:", port, "\n")
  io.stdout:flush()
  local state = { log = {}, count = {} }
  while true do
    local c = server:accept()
    if c then
      c:settimeout(5)
      local req = read_request(c)
      if req then
        local status, body, extra = answer(req, state, json)
        c:send(string.format("HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
          .. "%sConnection: close\r\n\r\n%s", status, #body, extra or "", body))
      end
      c:close()
    end
  end
end

-- ---- the handle the specs use ------------------------------------------

local Handle = {}
Handle.__index = Handle

local function control(self, method, path)
  local host, port = self.url:match("^http://([^:]+):(%d+)$")
  local c = assert(socket.connect(host, tonumber(port)))
  c:settimeout(5)
  c:send(method .. " " .. path .. " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
  local data = c:receive("*a")
  c:close()
  return require("cjson").decode(data:match("\r\n\r\n(.*)$"))
end

--- The requests seen since the last reset: { method, path, headers, body }.
function Handle:log() return control(self, "GET", "/_log") end

--- Forgets the requests seen.
function Handle:reset() control(self, "POST", "/_reset") end

--- Stops the server process (by its pid).
function Handle:stop()
  if self.pid then
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    self.proc:close()
    self.pid = nil
  end
end

--- Starts the server in a separate lua5.4 process.
-- @return handle with `url` and the methods above
function M.start()
  local file = debug.getinfo(1, "S").source:sub(2)
  local proc = assert(io.popen("echo $$; exec lua5.4 " .. file .. " serve", "r"))
  local pid = tonumber(proc:read("*l") or "")
  local url = proc:read("*l")
  if not pid or not url then error("scripted server did not start") end
  return setmetatable({ url = url, pid = pid, proc = proc }, Handle)
end

-- run as a script (`lua5.4 scripted_server.lua serve`): serve
if select(1, ...) == "serve" then M.serve() end

return M
