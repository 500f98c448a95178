--- Mock HTTP server for the ModelsLab and Omni cache APIs used by cachectl.
--
-- A single-threaded `socket.select` event loop with one coroutine per
-- connection.  It serves the ModelsLab "Clear User Cache" endpoint, the
-- ModelsLab Enterprise endpoints and the Omni "Reset cache" endpoint, records
-- every API request, exposes a small control API under `/_mock/` and injects
-- faults chosen by directives in the credential (`fault=NAME`, `times=N`,
-- `hold=SECONDS`).  The README describes it in full ("The cachectl mock server").
--
-- Portable Lua: runs under Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT.
-- @module cachectl.mock

local coroutine, debug, io, math, os, string, table =
  coroutine, debug, io, math, os, string, table
local assert, ipairs, pairs, pcall, require, error, tonumber, tostring, type, setmetatable, getmetatable =
  assert, ipairs, pairs, pcall, require, error, tonumber, tostring, type, setmetatable, getmetatable

local socket = require "socket"
local json_ok, json = pcall(require, "cjson")
if not json_ok then json = require "dkjson" end

local mock = {}

local MAX_LINE = 16 * 1024
local MAX_HEADERS = 100
local MAX_BODY = 64 * 1024 * 1024
local CONTROL_TIMEOUT = 10

local USAGE = [[
usage: cachectl-mock [--host HOST] [--port PORT] [--omni-rate-limit N]
                     [--tls-cert PATH --tls-key PATH] [--exit-with-parent] [--help]

Serves the mock ModelsLab / Omni cache APIs.  Prints the listening URL as the
first line of stdout, then serves until killed.

  --host HOST            address to listen on (default 127.0.0.1)
  --port PORT            port to listen on (default 0 = any free port)
  --omni-rate-limit N    Omni requests allowed per token per minute (default off)
  --tls-cert PATH        serve HTTPS with this PEM certificate (needs --tls-key)
  --tls-key PATH         PEM private key for --tls-cert
  --exit-with-parent     exit when the reader of stdout (a pipe) goes away
  --help                 show this help
]]

local REASONS = {
  [100] = "Continue", [200] = "OK", [302] = "Found", [400] = "Bad Request",
  [401] = "Unauthorized", [404] = "Not Found", [405] = "Method Not Allowed",
  [429] = "Too Many Requests", [500] = "Internal Server Error", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

local ENTERPRISE_MESSAGES = {
  clear_queue = "Queue cleared successfully",
  clear_cache = "Cache cleared successfully",
  restart_server = "Server restart initiated successfully",
  update_server = "Server update initiated successfully",
  system_details = "System details fetched successfully",
}

local ZERO_UUID = "00000000-0000-0000-0000-000000000000"
local UUID_PATTERN = "^" .. string.rep("%x", 8) .. "%-" .. string.rep("%x", 4) .. "%-"
  .. string.rep("%x", 4) .. "%-" .. string.rep("%x", 4) .. "%-" .. string.rep("%x", 12) .. "$"

local function log(...)
  io.stderr:write("cachectl-mock: ", table.concat({ ... }), "\n")
end

-- -------------------------------------------------------------------------
-- JSON
-- -------------------------------------------------------------------------

local ARRAY = {}

local function array(t)
  return setmetatable(t or {}, ARRAY)
end

local ESCAPES = {
  ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
}

local function encode_json(v)
  local t = type(v)
  if t == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      return ESCAPES[c] or string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if v == math.floor(v) and math.abs(v) < 1e15 then return string.format("%d", v) end
    return string.format("%.14g", v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    local out = {}
    if getmetatable(v) == ARRAY or #v > 0 then
      for i = 1, #v do out[i] = encode_json(v[i]) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for i, k in ipairs(keys) do out[i] = encode_json(k) .. ":" .. encode_json(v[k]) end
    return "{" .. table.concat(out, ",") .. "}"
  end
  return "null"
end

local function decode_json(s)
  local ok, v = pcall(json.decode, s)
  if ok then return v end
end

--- The body as a decoded JSON object, or nil when it is not one.
local function json_object(body)
  if not body:match("^%s*{") then return nil end
  local v = decode_json(body)
  if type(v) == "table" then return v end
end

-- -------------------------------------------------------------------------
-- Small helpers
-- -------------------------------------------------------------------------

local function now_rfc3339()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }

local function http_date(t)
  local d = os.date("!*t", t)
  return string.format("%s, %02d %s %04d %02d:%02d:%02d GMT",
    DAYS[d.wday], d.day, MONTHS[d.month], d.year, d.hour, d.min, d.sec)
end

local function new_uuid()
  local r = math.random
  return string.format("%04x%04x-%04x-%04x-%04x-%04x%04x%04x",
    r(0, 0xffff), r(0, 0xffff), r(0, 0xffff), 0x4000 + r(0, 0x0fff),
    0x8000 + r(0, 0x3fff), r(0, 0xffff), r(0, 0xffff), r(0, 0xffff))
end

--- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function days_in_month(y, m)
  if m == 2 then
    local leap = (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
    return leap and 29 or 28
  end
  return (m == 4 or m == 6 or m == 9 or m == 11) and 30 or 31
end

--- Parses an RFC 3339 date-time; returns seconds since the epoch or nil.
local function parse_rfc3339(s)
  local y, mo, d, h, mi, se, rest =
    s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  y, mo, d, h, mi, se = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(se)
  if mo < 1 or mo > 12 or d < 1 or d > days_in_month(y, mo) or h > 23 or mi > 59 or se > 60 then
    return nil
  end
  local frac = rest:match("^%.%d+")
  if frac then rest = rest:sub(#frac + 1) end
  local offset = 0
  if rest ~= "Z" and rest ~= "z" then
    local sign, oh, om = rest:match("^([%+%-])(%d%d):(%d%d)$")
    if not sign then return nil end
    oh, om = tonumber(oh), tonumber(om)
    if oh > 23 or om > 59 then return nil end
    offset = (oh * 60 + om) * 60
    if sign == "-" then offset = -offset end
  end
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se
    + (frac and tonumber(frac) or 0) - offset
end

--- Decodes %XX escapes; returns nil for a malformed escape.
local function percent_decode(s)
  if s:find("%%%X") or s:find("%%.%X") or s:find("%%.?$") then return nil end
  return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

local function media_type(req)
  return (req.headers["content-type"] or ""):lower():match("^%s*([^;%s]*)")
end

local function bearer_token(req)
  local auth = req.headers["authorization"]
  local token = auth and auth:match("^%s*[Bb][Ee][Aa][Rr][Ee][Rr]%s+(.-)%s*$")
  if token ~= "" then return token end
end

-- -------------------------------------------------------------------------
-- Responses
-- -------------------------------------------------------------------------

local function response(status, content_type, body, headers)
  headers = headers or {}
  headers["Content-Type"] = content_type
  return { status = status, headers = headers, body = body }
end

local function json_response(status, value, headers)
  return response(status, "application/json", encode_json(value), headers)
end

local function ml_error(status, message, code, headers)
  return json_response(status, { status = "error", message = message, error_code = code }, headers)
end

local function omni_error(status, message, headers)
  return json_response(status, { error = tostring(status), message = message }, headers)
end

local function not_found()
  return omni_error(404, "Not found")
end

--- Status line and headers of a response.
local function format_head(status, headers, length, keep, http10)
  local lines = { "HTTP/1.1 " .. status .. " " .. (REASONS[status] or "Unknown") }
  for name, value in pairs(headers or {}) do lines[#lines + 1] = name .. ": " .. value end
  lines[#lines + 1] = "Server: cachectl-mock"
  if length then lines[#lines + 1] = "Content-Length: " .. length end
  if not keep then
    lines[#lines + 1] = "Connection: close"
  elseif http10 then
    lines[#lines + 1] = "Connection: keep-alive"
  end
  return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

-- -------------------------------------------------------------------------
-- Coroutine I/O (every call here may yield to the event loop)
-- -------------------------------------------------------------------------

local function wait(what, arg)
  coroutine.yield(what, arg)
end

--- Reads more bytes into conn.buf; returns false once the peer is gone.
local function fill(conn)
  while true do
    local data, err, partial = conn.sock:receive(65536)
    local got = data or partial
    if got and #got > 0 then
      conn.buf = conn.buf .. got
      return true
    end
    if err == "timeout" or err == "wantread" then
      wait("read", conn.sock)
    elseif err == "wantwrite" then
      wait("write", conn.sock)
    else
      return false
    end
  end
end

--- Reads one line (without CRLF); returns nil, "eof" or nil, "bad".
local function read_line(conn)
  while true do
    local i = conn.buf:find("\n", 1, true)
    if i then
      local line = conn.buf:sub(1, i - 1):gsub("\r$", "")
      conn.buf = conn.buf:sub(i + 1)
      return line
    end
    if #conn.buf > MAX_LINE then return nil, "bad", "line too long" end
    if not fill(conn) then return nil, "eof" end
  end
end

local function read_bytes(conn, n)
  while #conn.buf < n do
    if not fill(conn) then return nil end
  end
  local data = conn.buf:sub(1, n)
  conn.buf = conn.buf:sub(n + 1)
  return data
end

local function send_all(conn, data)
  local i = 1
  while i <= #data do
    local last, err, partial = conn.sock:send(data, i)
    if last then return true end
    i = (partial or i - 1) + 1
    if err == "timeout" or err == "wantwrite" then
      wait("write", conn.sock)
    elseif err == "wantread" then
      wait("read", conn.sock)
    else
      return false
    end
  end
  return true
end

--- Sleeps without blocking other connections; returns false if the client left.
local function sleep(conn, seconds)
  local deadline = socket.gettime() + seconds
  while true do
    local left = deadline - socket.gettime()
    if left <= 0 or coroutine.yield("sleep", left, conn.sock) == "timeout" then return true end
    local data, err, partial = conn.sock:receive(65536)
    local got = data or partial
    if got and #got > 0 then
      conn.buf = conn.buf .. got
    elseif err ~= "timeout" and err ~= "wantread" and err ~= "wantwrite" then
      return false
    end
  end
end

--- Reads and discards everything until the client goes away.
local function wait_until_closed(conn)
  repeat conn.buf = "" until not fill(conn)
end

--- Closes the connection with a TCP reset (SO_LINGER 0).
local function reset_connection(conn)
  local sock = conn.sock
  if sock.setoption then
    pcall(sock.setoption, sock, "linger", { on = true, timeout = 0 })
    return
  end
  -- LuaSec connection: set the option through a borrowed LuaSocket object.
  local raw = socket.tcp()
  raw:close()
  raw:setfd(sock:getfd())
  pcall(raw.setoption, raw, "linger", { on = true, timeout = 0 })
  raw:setfd(-1)
end

local function send_response(conn, req, res, keep)
  local body = res.body or ""
  local head = format_head(res.status, res.headers, #body, keep, req and req.http10)
  if req and req.method == "HEAD" then body = "" end
  return send_all(conn, head .. body)
end

-- -------------------------------------------------------------------------
-- Request parsing
-- -------------------------------------------------------------------------

local function read_chunked_body(conn)
  local parts, total = {}, 0
  while true do
    local line, err = read_line(conn)
    if not line then return nil, err end
    local size = tonumber(line:match("^%s*(%x+)") or "", 16)
    if not size then return nil, "bad", "bad chunk size" end
    if size == 0 then break end
    total = total + size
    if total > MAX_BODY then return nil, "bad", "body too large" end
    local data = read_bytes(conn, size)
    if not data then return nil, "eof" end
    parts[#parts + 1] = data
    line = read_line(conn)
    if line ~= "" then return nil, "bad", "bad chunk" end
  end
  repeat
    local line, err = read_line(conn)
    if not line then return nil, err end
  until line == ""
  return table.concat(parts)
end

--- Reads one request; returns it, or nil, "eof" | "bad", message.
local function read_request(conn)
  local line, err, msg
  repeat
    line, err, msg = read_line(conn)
    if not line then return nil, err, msg end
  until line ~= ""
  local method, target, major, minor = line:match("^(%u+) (%S+) HTTP/(%d)%.(%d)$")
  if not method then return nil, "bad", "malformed request line" end
  local abs_path = target:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/]*(/.*)$")
  if target:sub(1, 1) ~= "/" and not abs_path then return nil, "bad", "bad request target" end
  local req = {
    method = method, target = target, path = (abs_path or target):match("^[^?]*"),
    headers = {}, http10 = (major .. minor) == "10",
  }
  local count = 0
  while true do
    line, err, msg = read_line(conn)
    if not line then return nil, err, msg end
    if line == "" then break end
    local name, value = line:match("^([^%s:]+):%s*(.-)%s*$")
    count = count + 1
    if not name or count > MAX_HEADERS then return nil, "bad", "malformed header" end
    name = name:lower()
    req.headers[name] = req.headers[name] and (req.headers[name] .. ", " .. value) or value
  end
  local h = req.headers
  local chunked = h["transfer-encoding"] and h["transfer-encoding"]:lower():find("chunked")
  local length = 0
  if not chunked and h["content-length"] then
    if not h["content-length"]:match("^%d+$") then return nil, "bad", "bad Content-Length" end
    length = tonumber(h["content-length"])
    if length > MAX_BODY then return nil, "bad", "body too large" end
  end
  if (chunked or length > 0) and not req.http10
    and (h["expect"] or ""):lower() == "100-continue" then
    if not send_all(conn, "HTTP/1.1 100 Continue\r\n\r\n") then return nil, "eof" end
  end
  if chunked then
    req.body, err, msg = read_chunked_body(conn)
    if not req.body then return nil, err, msg end
  else
    req.body = read_bytes(conn, length)
    if not req.body then return nil, "eof" end
  end
  local connection = (h["connection"] or ""):lower()
  if req.http10 then
    req.keep_alive = connection:find("keep%-alive") ~= nil
  else
    req.keep_alive = connection:find("close") == nil
  end
  return req
end

-- -------------------------------------------------------------------------
-- Faults
-- -------------------------------------------------------------------------

local HUGE_BODY
local function huge_body()
  HUGE_BODY = HUGE_BODY or
    ('{"status":"success","success":true,"pad":"' .. string.rep("x", 2 * 1024 * 1024) .. '"}')
  return HUGE_BODY
end

local function padded_json(size)
  local prefix = '{"status":"success","message":"Cache cleared","success":true,"pad":"'
  return prefix .. string.rep("x", size - #prefix - 2) .. '"}'
end

local HTML_500 = "<html><head><title>500 Internal Server Error</title></head>"
  .. "<body><h1>Internal Server Error</h1></body></html>"
local HTML_200 = "<html><head><title>Welcome</title></head><body><h1>Welcome</h1></body></html>"

local STATUS_MESSAGES = {
  [429] = "Too many requests", [500] = "Internal server error", [502] = "Bad gateway",
  [503] = "Service unavailable", [504] = "Gateway timeout",
}

--- The service's error response for an HTTP status.
local function service_error(service, status, headers, extra)
  local body
  if service == "omni" then
    body = { error = tostring(status), message = STATUS_MESSAGES[status] }
  elseif status == 429 then
    body = { status = "error", message = "Rate limit exceeded", error_code = "rate_limited" }
  else
    body = { status = "error", message = STATUS_MESSAGES[status], error_code = "http_" .. status }
  end
  for k, v in pairs(extra or {}) do body[k] = v end
  return json_response(status, body, headers)
end

--- Sends a 200 head announcing `length` bytes and the first `sent` bytes of it.
local function send_partial(conn, req, length, sent)
  local head = format_head(200, { ["Content-Type"] = "application/json" }, length, req.keep_alive, req.http10)
  return send_all(conn, head .. padded_json(length):sub(1, sent))
end

-- Each fault returns a response table, "close" (end the connection now) or
-- "done" (the response was sent by the fault itself).
local FAULTS = {
  refuse = function(conn) reset_connection(conn); return "close" end,
  drop = function() return "close" end,
  drop_mid_body = function(conn, req) send_partial(conn, req, 1000, 100); return "close" end,
  stall = function(conn) wait_until_closed(conn); return "close" end,
  stall_mid_body = function(conn, req)
    if send_partial(conn, req, 1000, 100) then wait_until_closed(conn) end
    return "close"
  end,
  trickle = function(conn, req)
    local body = padded_json(200)
    local head = format_head(200, { ["Content-Type"] = "application/json" }, #body, req.keep_alive, req.http10)
    if not send_all(conn, head) then return "close" end
    for i = 1, #body do
      if not sleep(conn, 0.5) or not send_all(conn, body:sub(i, i)) then return "close" end
    end
    return "done"
  end,
  ["429"] = function(_, _, service) return service_error(service, 429, { ["Retry-After"] = "1" }) end,
  ["429_no_retry_after"] = function(_, _, service) return service_error(service, 429) end,
  ["429_retry_after_body"] = function(_, _, service)
    if service == "omni" then return service_error(service, 429, nil, { retry_after = 1 }) end
    return json_response(429, { status = "error", message = "Rate limit exceeded", retry_after = 1 })
  end,
  ["429_http_date"] = function(_, _, service)
    return service_error(service, 429, { ["Retry-After"] = http_date(os.time() + 2) })
  end,
  ["500_html"] = function() return response(500, "text/html; charset=utf-8", HTML_500) end,
  ["502"] = function(_, _, service) return service_error(service, 502) end,
  ["503"] = function(_, _, service) return service_error(service, 503) end,
  ["504"] = function(_, _, service) return service_error(service, 504) end,
  ["503_retry_after"] = function(_, _, service) return service_error(service, 503, { ["Retry-After"] = "1" }) end,
  invalid_json = function() return response(200, "application/json", '{"status": "success",') end,
  empty = function() return response(200, "application/json", "") end,
  huge = function() return response(200, "application/json", huge_body()) end,
  redirect = function(_, _, _, srv)
    return json_response(302, { status = "redirect", message = "Found" },
      { Location = srv.url .. "/redirect-target" })
  end,
  api_error = function(_, _, service)
    if service == "omni" then
      return json_response(200, { success = false, message = "Something failed", error = "E42" })
    end
    return json_response(200, { status = "error", message = "Something failed", error_code = "E42" })
  end,
  html200 = function() return response(200, "text/html; charset=utf-8", HTML_200) end,
}

--- Applies the credential's hold/fault directives; nil means "answer normally".
local function apply_directives(srv, conn, req, service, credential)
  local fault = credential:match("fault=([%w_%-]+)")
  local times = tonumber(credential:match("times=(%d+)") or "")
  local hold = tonumber(credential:match("hold=([%d%.]+)") or "")
  if not fault and not hold then return nil end
  local count = (srv.fault_counts[credential] or 0) + 1
  srv.fault_counts[credential] = count
  if times and count > times then return nil end
  if hold and not sleep(conn, hold) then return "close" end
  if not fault then return nil end
  local run = FAULTS[fault]
  if not run then
    log("unknown fault '", fault, "'")
    return omni_error(400, "cachectl-mock: unknown fault '" .. fault .. "'")
  end
  return run(conn, req, service, srv)
end

-- -------------------------------------------------------------------------
-- Endpoints
-- -------------------------------------------------------------------------

--- Shared ModelsLab validation; returns an error response or nil, key.
local function check_modelslab(req, bad_key_response)
  if req.method ~= "POST" then
    return ml_error(405, "Method not allowed", "method_not_allowed", { Allow = "POST" })
  end
  if media_type(req) ~= "application/json" then
    return ml_error(400, "Content-Type must be application/json", "invalid_content_type")
  end
  local body = json_object(req.body)
  if not body then
    return ml_error(400, "The request body must be a JSON object.", "invalid_body")
  end
  if type(body.key) ~= "string" or body.key == "" then
    return ml_error(400, "The key field is required.", "key_required")
  end
  if body.key:sub(1, 3) == "bad" then return bad_key_response end
end

local function handle_clear_cache(_, req)
  local err = check_modelslab(req,
    json_response(200, { status = "error", message = "Invalid API key", error_code = "invalid_key" }))
  return err or json_response(200, { status = "success", message = "Cache cleared" })
end

local function handle_enterprise(_, req, route)
  local err = check_modelslab(req, ml_error(401, "Invalid or missing API key", "unauthorized"))
  if err then return err end
  if not route.product:match("^[a-z0-9%-]+$") then
    return ml_error(400, "Invalid product.", "invalid_product")
  end
  local body = { status = "success", message = ENTERPRISE_MESSAGES[route.action] }
  if route.action == "system_details" then
    body.details = { product = route.product, status = "running", gpu = "mock-gpu", queue_length = 0 }
  end
  return json_response(200, body)
end

local function rate_limited(srv, token)
  if not srv.omni_rate_limit then return false end
  local now, kept = socket.gettime(), {}
  for _, t in ipairs(srv.rate[token] or {}) do
    if now - t < 60 then kept[#kept + 1] = t end
  end
  srv.rate[token] = kept
  if #kept >= srv.omni_rate_limit then return true end
  kept[#kept + 1] = now
  return false
end

local function handle_omni(srv, req, route)
  if req.method ~= "POST" then return omni_error(405, "Method not allowed", { Allow = "POST" }) end
  local token = bearer_token(req)
  if not token or token:sub(1, 3) == "bad" then
    return omni_error(401, "Invalid or missing bearer token")
  end
  if rate_limited(srv, token) then return omni_error(429, "Too many requests") end
  local body = {}
  if #req.body > 0 then
    if media_type(req) ~= "application/json" then
      return omni_error(400, "Content-Type must be application/json")
    end
    body = json_object(req.body)
    if not body then return omni_error(400, "Request body must be a JSON object") end
  end
  local model_id = percent_decode(route.model)
  if not model_id or not model_id:match(UUID_PATTERN) then
    return omni_error(400, "modelId must be a UUID")
  end
  local policy = percent_decode(route.policy)
  if not policy then return omni_error(400, "cachePolicyName is not correctly percent-encoded") end
  local reset_at = body.resetAt
  if reset_at == json.null then reset_at = nil end
  if reset_at ~= nil then
    local t = type(reset_at) == "string" and parse_rfc3339(reset_at)
    if not t then return omni_error(400, "resetAt must be an RFC 3339 date-time") end
    if t > socket.gettime() + 1 then return omni_error(400, "resetAt cannot be future dated") end
  end
  if model_id == ZERO_UUID then
    return omni_error(404, "Model with id " .. model_id .. " does not exist")
  end
  local now = now_rfc3339()
  return json_response(200, {
    success = true,
    cache_reset = {
      id = new_uuid(), model_id = model_id, policy_name = policy,
      created_at = now, updated_at = now, reset_at = reset_at or now,
    },
  })
end

--- Finds the endpoint of a path; any prefix (such as "/api") is accepted.
local function match_route(path)
  local model, policy = path:match("/v1/models/([^/]+)/cache_reset/([^/]+)$")
  if model then return { service = "omni", handler = handle_omni, model = model, policy = policy } end
  local product, action = path:match("/v1/enterprise/([^/]+)/([^/]+)$")
  if product and ENTERPRISE_MESSAGES[action] then
    return { service = "modelslab", handler = handle_enterprise, product = product, action = action }
  end
  if path:match("/v5/clear_cache$") then
    return { service = "modelslab", handler = handle_clear_cache }
  end
end

local function credential_of(route, req)
  if route.service == "omni" then return bearer_token(req) end
  local body = json_object(req.body)
  if body and type(body.key) == "string" then return body.key end
end

-- -------------------------------------------------------------------------
-- Control API and dispatch
-- -------------------------------------------------------------------------

local function reset_state(srv)
  srv.log, srv.seen, srv.seen_count = {}, {}, 0
  srv.fault_counts, srv.rate = {}, {}
end

local function record(srv, conn, req)
  srv.log[#srv.log + 1] = {
    method = req.method, path = req.target, headers = req.headers,
    body = req.body, connection = conn.id,
  }
  if not srv.seen[conn.id] then
    srv.seen[conn.id] = true
    srv.seen_count = srv.seen_count + 1
  end
end

local function control(srv, req)
  local path = req.path
  local want = (path == "/_mock/reset") and "POST" or "GET"
  if path ~= "/_mock/requests" and path ~= "/_mock/stats" and path ~= "/_mock/reset" then
    return not_found()
  end
  if req.method ~= want then return omni_error(405, "Method not allowed", { Allow = want }) end
  if path == "/_mock/requests" then
    local list = array()
    for i, entry in ipairs(srv.log) do list[i] = entry end
    return json_response(200, list)
  elseif path == "/_mock/stats" then
    -- The connection asking is not counted as open.
    return json_response(200, { connections = srv.seen_count, requests = #srv.log, open = srv.open - 1 })
  end
  reset_state(srv)
  return json_response(200, { ok = true })
end

local function dispatch(srv, conn, req)
  if req.path:sub(1, 7) == "/_mock/" then return control(srv, req) end
  record(srv, conn, req)
  if req.path:sub(1, 16) == "/redirect-target" then
    return json_response(200, { status = "success", redirected = true, success = true })
  end
  local route = match_route(req.path)
  if not route then return not_found() end
  local credential = credential_of(route, req)
  if credential then
    local faulted = apply_directives(srv, conn, req, route.service, credential)
    if faulted then return faulted end
  end
  return route.handler(srv, req, route)
end

local function tls_handshake(srv, conn)
  local ssl = require "ssl"
  local s = ssl.wrap(conn.sock, srv.tls)
  if not s then return false end
  conn.sock = s
  s:settimeout(0)
  while true do
    local ok, err = s:dohandshake()
    if ok then return true end
    if err == "wantread" or err == "timeout" then
      wait("read", s)
    elseif err == "wantwrite" then
      wait("write", s)
    else
      return false
    end
  end
end

--- Body of each connection's coroutine.
local function serve_connection(srv, conn)
  if srv.tls and not tls_handshake(srv, conn) then return end
  while true do
    local req, err, msg = read_request(conn)
    if not req then
      if err == "bad" then
        send_response(conn, nil, omni_error(400, "Bad request: " .. (msg or "malformed")), false)
      end
      return
    end
    local result = dispatch(srv, conn, req)
    if result == "close" then return end
    if result ~= "done" and not send_response(conn, req, result, req.keep_alive) then return end
    if not req.keep_alive then return end
  end
end

-- -------------------------------------------------------------------------
-- Event loop
-- -------------------------------------------------------------------------

local function close_connection(srv, conn)
  pcall(conn.sock.close, conn.sock)
  srv.open = srv.open - 1
end

local function run_loop(srv, server_sock, watch)
  local waiting = { read = {}, write = {} }
  local sleepers = {}

  -- Yields are ("read", sock), ("write", sock) or ("sleep", seconds, sock): a
  -- sleep ends with "timeout", or early with "readable" when sock is readable.
  local function resume(conn, why)
    local ok, what, arg, sock = coroutine.resume(conn.co, why)
    if not ok then log("connection ", conn.id, ": ", debug.traceback(conn.co, tostring(what))) end
    if coroutine.status(conn.co) == "dead" then
      close_connection(srv, conn)
    elseif what == "sleep" then
      conn.sleeping = { at = socket.gettime() + arg, conn = conn, sock = sock }
      sleepers[#sleepers + 1] = conn.sleeping
      waiting.read[sock] = conn
    else
      waiting[what][arg] = conn
    end
  end

  local function wake(conn, why)
    if conn.sleeping then
      waiting.read[conn.sleeping.sock] = nil
      conn.sleeping.cancelled = true
      conn.sleeping = nil
    end
    resume(conn, why)
  end

  local function accept_all()
    while true do
      local client = server_sock:accept()
      if not client then return end
      client:settimeout(0)
      client:setoption("tcp-nodelay", true)
      srv.next_id = srv.next_id + 1
      srv.open = srv.open + 1
      local conn = { id = srv.next_id, sock = client, buf = "" }
      conn.co = coroutine.create(function() serve_connection(srv, conn) end)
      resume(conn)
    end
  end

  local function step()
    local recvt, sendt = { server_sock }, {}
    if watch then recvt[#recvt + 1] = watch end
    for s in pairs(waiting.read) do recvt[#recvt + 1] = s end
    for s in pairs(waiting.write) do sendt[#sendt + 1] = s end
    local timeout
    for _, sl in ipairs(sleepers) do
      local left = sl.at - socket.gettime()
      if not sl.cancelled and (not timeout or left < timeout) then timeout = left end
    end
    if timeout and timeout < 0 then timeout = 0 end
    local readable, writable = socket.select(recvt, sendt, timeout)
    if watch and readable[watch] then os.exit(0) end
    -- Existing connections first, so a client's close is seen before its next connection.
    for _, s in ipairs(readable) do
      local conn = waiting.read[s]
      if conn then waiting.read[s] = nil; wake(conn, "readable") end
    end
    for _, s in ipairs(writable) do
      local conn = waiting.write[s]
      if conn then waiting.write[s] = nil; wake(conn) end
    end
    local now, due, later = socket.gettime(), {}, {}
    for _, sl in ipairs(sleepers) do
      if not sl.cancelled then
        if sl.at <= now then due[#due + 1] = sl.conn else later[#later + 1] = sl end
      end
    end
    sleepers = later
    for _, conn in ipairs(due) do wake(conn, "timeout") end
    if readable[server_sock] then accept_all() end
  end

  while true do
    local ok, err = pcall(step)
    if not ok then log("event loop: ", tostring(err)) end
  end
end

--- Runs the mock server in this process until it is killed.
-- @param opts table (optional) with fields:
--   `host` (default "127.0.0.1"), `port` (default 0 = any free port),
--   `on_listen` function called with the URL once listening,
--   `omni_rate_limit` Omni requests per token per minute (nil = off),
--   `tls` `{ certificate = PATH, key = PATH }` to serve HTTPS,
--   `exit_with_parent` exit when stdout (a pipe) loses its reader.
-- @return never returns; raises an error if it cannot listen
function mock.serve(opts)
  opts = opts or {}
  local server_sock = assert(socket.bind(opts.host or "127.0.0.1", opts.port or 0, 128))
  server_sock:settimeout(0)
  local ip, port = server_sock:getsockname()
  if ip:find(":", 1, true) then ip = "[" .. ip .. "]" end
  local srv = {
    url = (opts.tls and "https" or "http") .. "://" .. ip .. ":" .. tostring(port),
    omni_rate_limit = opts.omni_rate_limit, open = 0, next_id = 0,
  }
  reset_state(srv)
  if opts.tls then
    local ssl = require "ssl"
    srv.tls = assert(ssl.newcontext({
      mode = "server", protocol = "any", options = "all",
      certificate = opts.tls.certificate, key = opts.tls.key,
    }))
  end
  math.randomseed(math.floor(socket.gettime() * 1000) % 2147483647)
  if opts.on_listen then opts.on_listen(srv.url) end
  -- When stdout is a pipe, its write end turns "readable" once the reader closes it.
  local watch = opts.exit_with_parent and { getfd = function() return 1 end } or nil
  run_loop(srv, server_sock, watch)
end

-- -------------------------------------------------------------------------
-- Command line
-- -------------------------------------------------------------------------

local function parse_args(argv)
  local opts, i = {}, 1
  local function value(name)
    i = i + 1
    if argv[i] == nil then error(name .. " needs a value", 0) end
    return argv[i]
  end
  while argv[i] ~= nil do
    local a = argv[i]
    local name, inline = a:match("^(%-%-[%w%-]+)=(.*)$")
    if name then a = name; table.insert(argv, i + 1, inline) end
    if a == "--help" or a == "-h" then
      opts.help = true
    elseif a == "--host" then
      opts.host = value(a)
    elseif a == "--port" then
      opts.port = tonumber(value(a))
      if not opts.port or opts.port < 0 or opts.port > 65535 or opts.port % 1 ~= 0 then
        error("--port needs a number from 0 to 65535", 0)
      end
    elseif a == "--omni-rate-limit" then
      opts.omni_rate_limit = tonumber(value(a))
      if not opts.omni_rate_limit or opts.omni_rate_limit < 1 or opts.omni_rate_limit % 1 ~= 0 then
        error("--omni-rate-limit needs a positive integer", 0)
      end
    elseif a == "--tls-cert" then
      opts.tls = opts.tls or {}
      opts.tls.certificate = value(a)
    elseif a == "--tls-key" then
      opts.tls = opts.tls or {}
      opts.tls.key = value(a)
    elseif a == "--exit-with-parent" then
      opts.exit_with_parent = true
    else
      error("unknown argument '" .. a .. "'", 0)
    end
    i = i + 1
  end
  if opts.tls and not (opts.tls.certificate and opts.tls.key) then
    error("--tls-cert and --tls-key go together", 0)
  end
  return opts
end

--- Command-line entry point of `cachectl-mock`.
-- Prints the listening URL as the first line of stdout, then serves forever.
-- Exits with status 2 on bad usage, 1 when the server cannot start.
-- @param argv array of command-line arguments (as the global `arg`)
function mock.main(argv)
  local args = {}
  for i = 1, #(argv or {}) do args[i] = argv[i] end
  local ok, opts = pcall(parse_args, args)
  if not ok then
    io.stderr:write("cachectl-mock: ", tostring(opts), "\n", USAGE)
    os.exit(2)
  end
  if opts.help then
    io.stdout:write(USAGE)
    return
  end
  opts.on_listen = function(url)
    io.stdout:write(url, "\n")
    io.stdout:flush()
  end
  local _, err = pcall(mock.serve, opts)
  io.stderr:write("cachectl-mock: ", tostring(err), "\n")
  os.exit(1)
end

-- -------------------------------------------------------------------------
-- Out-of-process handle (mock.start)
-- -------------------------------------------------------------------------

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

--- The directory holding the `cachectl/` folder this file was loaded from.
local function module_root()
  local source = debug.getinfo(1, "S").source
  if source:sub(1, 1) ~= "@" then return nil end
  local root = source:sub(2):match("^(.-)cachectl[/\\]mock%.lua$")
  if root == "" then root = "./" end
  return root
end

--- One control request on a fresh connection; returns status, body.
local function control_request(url, method, path)
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
  local _, serr = sock:send(method .. " " .. path .. " HTTP/1.1\r\nHost: " .. host
    .. "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
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

function Handle:_control(method, path)
  if self.stopped then error("cachectl.mock: server already stopped", 2) end
  local status, body = control_request(self.url, method, path)
  if status ~= 200 then
    error("cachectl.mock: " .. method .. " " .. path .. " failed: " .. tostring(body), 3)
  end
  return decode_json(body)
end

--- The API requests recorded since the last reset, in arrival order.
-- @return array of `{method, path, headers, body, connection}` tables
function Handle:requests()
  return self:_control("GET", "/_mock/requests")
end

--- Counters since the last reset.
-- @return table `{connections = N, requests = N, open = N}`
function Handle:stats()
  return self:_control("GET", "/_mock/stats")
end

--- Clears the request log, the counters and the per-credential fault counters.
-- @return true
function Handle:reset()
  self:_control("POST", "/_mock/reset")
  return true
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

--- Starts a mock server in a separate process (for tests).
-- @param opts table (optional): `host`, `port`, `omni_rate_limit`,
--   `tls` `{ certificate = PATH, key = PATH }`, `lua` (interpreter command,
--   default "lua5.4")
-- @return handle with fields `url`, `pid` and methods `requests()`,
--   `stats()`, `reset()`, `stop()`
function mock.start(opts)
  opts = opts or {}
  local args = { "--host", opts.host or "127.0.0.1", "--port", tostring(opts.port or 0), "--exit-with-parent" }
  if opts.omni_rate_limit then
    args[#args + 1] = "--omni-rate-limit"
    args[#args + 1] = tostring(opts.omni_rate_limit)
  end
  if opts.tls then
    args[#args + 1] = "--tls-cert"
    args[#args + 1] = opts.tls.certificate
    args[#args + 1] = "--tls-key"
    args[#args + 1] = opts.tls.key
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
  local cmd = "echo $$; exec env " .. table.concat(env, " ") .. " " .. (opts.lua or "lua5.4")
    .. " -e " .. shell_quote(code)
  local proc = assert(io.popen(cmd, "r"))
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

return mock
