--- HTTP/1.1 for the mock server: reading a request (with bounds on lines,
-- headers, chunk sizes and bodies) and writing a response.
-- @module cachectl.mock.http

local math, table, tostring, tonumber, pairs = math, table, tostring, tonumber, pairs

local socket = require "socket"
local json = require "cachectl.mock.json"

local http = {}

http.MAX_LINE = 16 * 1024
http.MAX_HEADERS = 100
http.MAX_BODY = 64 * 1024 * 1024   -- default bound of a request body, bytes

-- The reason phrases of RFC 9110 (and 429, 431 of RFC 6585).
local REASONS = {
  [100] = "Continue", [101] = "Switching Protocols",
  [200] = "OK", [201] = "Created", [202] = "Accepted", [203] = "Non-Authoritative Information",
  [204] = "No Content", [205] = "Reset Content", [206] = "Partial Content",
  [300] = "Multiple Choices", [301] = "Moved Permanently", [302] = "Found", [303] = "See Other",
  [304] = "Not Modified", [305] = "Use Proxy", [307] = "Temporary Redirect", [308] = "Permanent Redirect",
  [400] = "Bad Request", [401] = "Unauthorized", [402] = "Payment Required", [403] = "Forbidden",
  [404] = "Not Found", [405] = "Method Not Allowed", [406] = "Not Acceptable",
  [407] = "Proxy Authentication Required", [408] = "Request Timeout", [409] = "Conflict", [410] = "Gone",
  [411] = "Length Required", [412] = "Precondition Failed", [413] = "Content Too Large",
  [414] = "URI Too Long", [415] = "Unsupported Media Type", [416] = "Range Not Satisfiable",
  [417] = "Expectation Failed", [421] = "Misdirected Request", [422] = "Unprocessable Content",
  [426] = "Upgrade Required", [428] = "Precondition Required", [429] = "Too Many Requests",
  [431] = "Request Header Fields Too Large", [451] = "Unavailable For Legal Reasons",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout", [505] = "HTTP Version Not Supported",
  [511] = "Network Authentication Required",
}

-- Statuses whose answer has no body (RFC 9110 6.4.1): sent without one, and without Content-Length.
local NO_BODY = { [204] = true, [304] = true }

--- Whether an answer of this status carries no body (204, 304).
function http.no_body(status)
  return NO_BODY[status] == true
end

--- A response table.
function http.response(status, content_type, body, headers)
  headers = headers or {}
  headers["Content-Type"] = content_type
  return { status = status, headers = headers, body = body }
end

--- A JSON response table.
function http.json(status, value, headers)
  return http.response(status, "application/json", json.encode(value), headers)
end

--- Status line and headers of a response.
function http.format_head(status, headers, length, keep, http10)
  local lines = { "HTTP/1.1 " .. status .. " " .. (REASONS[status] or "Unknown") }
  if NO_BODY[status] then length = nil end
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

--- Sends a response table on connection `c`.
-- @param req the request answered, or nil when it could not be read
-- @return true, or false once the peer is gone
function http.send(c, req, res, keep)
  local body = res.body or ""
  local head = http.format_head(res.status, res.headers, #body, keep, req and req.http10)
  if (req and req.method == "HEAD") or NO_BODY[res.status] then body = "" end
  return c:send_all(head .. body)
end

-- Reads one line; a failure is nil, "eof" or nil, 431|400, message.
local function line_of(c, what)
  local line, err = c:read_line(http.MAX_LINE)
  if line then return line end
  if err == "eof" then return nil, "eof" end
  return nil, what == "header" and 431 or 400, what .. " line too long"
end

-- Header lines up to the blank line, into `headers` (lower-case names).
local function read_headers(c, headers)
  local count = 0
  while true do
    local line, err, msg = line_of(c, "header")
    if not line then return nil, err, msg end
    if line == "" then return true end
    count = count + 1
    if count > http.MAX_HEADERS then return nil, 431, "too many header lines" end
    local name, value = line:match("^([^%s:]+):%s*(.-)%s*$")
    if not name then return nil, 400, "malformed header" end
    name = name:lower()
    headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
  end
end

-- The size of a chunk from its size line, or nil, status, message.
local function chunk_size(line)
  local hex, rest = line:match("^%s*(%x+)[ \t]*(.*)$")
  if not hex or (rest ~= "" and rest:sub(1, 1) ~= ";") then return nil, 400, "bad chunk size" end
  hex = hex:gsub("^0+", "")
  if #hex > 8 then return nil, 413, "chunk too large" end
  return tonumber(hex == "" and "0" or hex, 16)
end

local function read_chunked_body(c, max_body)
  local parts, total = {}, 0
  while true do
    local line, err, msg = line_of(c, "chunk size")
    if not line then return nil, err, msg end
    local size
    size, err, msg = chunk_size(line)
    if not size then return nil, err, msg end
    if size == 0 then break end
    total = total + size
    if total > max_body then return nil, 413, "body too large" end
    local data = c:read_exact(size)
    if not data then return nil, "eof" end
    parts[#parts + 1] = data
    line, err, msg = line_of(c, "chunk end")
    if not line then return nil, err, msg end
    if line ~= "" then return nil, 400, "bad chunk end" end
  end
  local ok, err, msg = read_headers(c, {})   -- trailers, ignored
  if not ok then return nil, err, msg end
  return table.concat(parts)
end

-- The declared body: chunked, a length, or nil, status, message.
local function body_framing(h, max_body)
  local te = h["transfer-encoding"]
  if te then
    if te:lower():match("chunked%s*$") then return "chunked" end
    return nil, 501, "unsupported Transfer-Encoding"
  end
  local cl = h["content-length"]
  if not cl then return 0 end
  if not cl:match("^%d+$") then return nil, 400, "bad Content-Length" end
  if #cl > 15 or tonumber(cl) > max_body then return nil, 413, "body too large" end
  return tonumber(cl)
end

-- Reads the body into req.body; true or nil, "eof" | status, message.
local function read_body(c, req, max_body)
  local h = req.headers
  local framing, err, msg = body_framing(h, max_body)
  if not framing then return nil, err, msg end
  if framing ~= 0 and not req.http10 and (h["expect"] or ""):lower() == "100-continue" then
    if not c:send_all("HTTP/1.1 100 Continue\r\n\r\n") then return nil, "eof" end
  end
  if framing == "chunked" then
    req.body, err, msg = read_chunked_body(c, max_body)
    if not req.body then return nil, err, msg end
  else
    req.body = c:read_exact(framing)
    if not req.body then return nil, "eof" end
  end
  return true
end

-- The request line into a new request table, or nil, "eof" | 400, message.
local function read_request_line(c)
  local line, err, msg
  repeat
    line, err, msg = line_of(c, "request")
    if not line then return nil, err, msg end
  until line ~= ""
  local method, target, major, minor = line:match("^(%u+) (%S+) HTTP/(%d)%.(%d)$")
  if not method then return nil, 400, "malformed request line" end
  local abs_path = target:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/]*(/.*)$")
  if target:sub(1, 1) ~= "/" and not abs_path then return nil, 400, "bad request target" end
  return {
    method = method, target = target, path = (abs_path or target):match("^[^?]*"),
    headers = {}, http10 = (major .. minor) == "10",
  }
end

--- Reads one request from connection `c`.
-- @param max_body largest body accepted, in bytes
-- @return the request `{method, target, path, headers, body, http10, keep_alive, at}`,
--   or nil, "eof", or nil, status (400, 413, 431, 501), message
function http.read_request(c, max_body)
  local req, err, msg = read_request_line(c)
  if not req then return nil, err, msg end
  local ok
  ok, err, msg = read_headers(c, req.headers)
  if not ok then return nil, err, msg end
  ok, err, msg = read_body(c, req, max_body or http.MAX_BODY)
  if not ok then return nil, err, msg end
  local connection = (req.headers["connection"] or ""):lower()
  if req.http10 then
    req.keep_alive = connection:find("keep%-alive") ~= nil
  else
    req.keep_alive = connection:find("close") == nil
  end
  -- To 0.1 ms: what lua-cjson's 14 digits show in the log is then the very value
  -- that `since` filters and the rate limit compare.
  req.at = math.floor(socket.gettime() * 10000 + 0.5) / 10000
  return req
end

--- The status text of a status code.
function http.reason(status)
  return REASONS[status] or tostring(status)
end

return http
