--- Test harness: a tiny HTTP server in its own lua5.4 process that gives
-- fixed answers, for what the mock never sends (model records without an
-- id, text with control characters in an error message). It answers
-- `routes["METHOD /path"]` (the path without its query) with `{ status,
-- body }` (a table body is JSON-encoded), anything else 404, each with
-- Connection: close. Started on port 0, stopped by its own pid.
--
-- Usage: `local srv = fixed.start{ ["GET /api/v1/models"] = { 200, { records = {...} } } }`
-- ... `srv.base` (its `/api`) ... `srv:stop()`.
local assert, error, pairs, setmetatable, tonumber, type = assert, error, pairs, setmetatable, tonumber, type
local io, os = io, os

local cjson = require "cjson"
local helpers = require "support.helpers"

local M = {}

local SCRIPT = [[
local socket, cjson = require "socket", require "cjson"
local f = assert(io.open(..., "rb"))
local routes = cjson.decode(f:read("*a"))
f:close()
local s = assert(socket.bind("127.0.0.1", 0))
local _, port = s:getsockname()
print(port)
io.stdout:flush()
while true do
  local c = s:accept()
  c:settimeout(5)
  local line = c:receive("*l") or ""
  local len = 0
  repeat
    local h = c:receive("*l")
    len = tonumber(h and h:lower():match("^content%-length:%s*(%d+)")) or len
  until not h or h == ""
  if len > 0 then c:receive(len) end
  local method, path = line:match("^(%u+) ([^?%s]*)")
  local r = routes[(method or "") .. " " .. (path or "")] or { 404, '{"error":"not found"}' }
  c:send("HTTP/1.1 " .. r[1] .. " X\r\nContent-Type: application/json\r\nContent-Length: " .. #r[2]
    .. "\r\nConnection: close\r\n\r\n" .. r[2])
  c:close()
end
]]

local Server = {}
Server.__index = Server

--- Stops the server by its pid and removes its files.
function Server:stop()
  if self.stopped then return end
  self.stopped = true
  helpers.succeeds("kill " .. self.pid)
  self.proc:close()
  os.remove(self.script)
  os.remove(self.routes)
end

--- Starts a server answering `routes`.
function M.start(routes)
  local encoded = {}
  for k, r in pairs(routes) do
    encoded[k] = { r[1], type(r[2]) == "table" and cjson.encode(r[2]) or r[2] }
  end
  local script, file = os.tmpname(), os.tmpname()
  helpers.write_file(script, SCRIPT)
  helpers.write_file(file, cjson.encode(encoded))
  local proc = assert(io.popen("echo $$; exec lua5.4 " .. helpers.sh_quote(script) .. " " .. helpers.sh_quote(file)))
  local self = setmetatable({ proc = proc, script = script, routes = file }, Server)
  self.pid = assert(tonumber(proc:read("*l")))
  local port = tonumber(proc:read("*l"))
  if not port then
    self:stop()
    error("the fixed server did not start", 2)
  end
  self.base = "http://127.0.0.1:" .. port .. "/api"
  return self
end

return M
