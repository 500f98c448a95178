--- Faults of the mock server, chosen per request by directives in the
-- credential (`fault=NAME`, `times=N`, `hold=SECONDS`) or by a fault rule
-- (`cachectl.mock.rules`).
--
-- A fault returns a response table, "close" (end the connection now) or
-- "done" (it sent its answer itself). The service's own error bodies come
-- from the vendor module of the route (`status_error`, `api_error`,
-- `retry_after_body`).
-- @module cachectl.mock.faults

local os, string, table = os, string, table
local pairs, tonumber = pairs, tonumber

local http = require "cachectl.mock.http"
local util = require "cachectl.mock.util"

local faults = {}

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

local JSON_TYPE = { ["Content-Type"] = "application/json" }

--- Sends a 200 head announcing `length` bytes and the first `sent` bytes of it.
local function send_partial(c, req, length, sent)
  local head = http.format_head(200, JSON_TYPE, length, req.keep_alive, req.http10)
  return c:send_all(head .. padded_json(length):sub(1, sent))
end

local function trickle(c, req)
  local body = padded_json(200)
  local head = http.format_head(200, JSON_TYPE, #body, req.keep_alive, req.http10)
  if not c:send_all(head) then return "close" end
  for i = 1, #body do
    if not c:sleep(0.5) or not c:send_all(body:sub(i, i)) then return "close" end
  end
  return "done"
end

local function status_fault(status, retry_after)
  return function(_, req, vendor)
    return vendor.status_error(req, status, retry_after and { ["Retry-After"] = retry_after } or nil)
  end
end

-- Each takes (c, req, vendor, srv).
local FAULTS = {
  refuse = function(c) c:set_reset(); return "close" end,
  drop = function() return "close" end,
  drop_mid_body = function(c, req) send_partial(c, req, 1000, 100); return "close" end,
  stall = function(c) c:wait_until_closed(); return "close" end,
  stall_mid_body = function(c, req)
    if send_partial(c, req, 1000, 100) then c:wait_until_closed() end
    return "close"
  end,
  trickle = trickle,
  ["429"] = status_fault(429, "1"),
  ["429_no_retry_after"] = status_fault(429),
  ["429_retry_after_body"] = function(_, req, vendor) return vendor.retry_after_body(req) end,
  ["429_http_date"] = function(_, req, vendor)
    return vendor.status_error(req, 429, { ["Retry-After"] = util.http_date(os.time() + 2) })
  end,
  ["500_html"] = function() return http.response(500, "text/html; charset=utf-8", HTML_500) end,
  ["502"] = status_fault(502),
  ["503"] = status_fault(503),
  ["504"] = status_fault(504),
  ["503_retry_after"] = status_fault(503, "1"),
  invalid_json = function() return http.response(200, "application/json", '{"status": "success",') end,
  empty = function() return http.response(200, "application/json", "") end,
  huge = function() return http.response(200, "application/json", huge_body()) end,
  redirect = function(_, _, _, srv)
    return http.json(302, { status = "redirect", message = "Found" }, { Location = srv.url .. "/redirect-target" })
  end,
  api_error = function(_, req, vendor) return vendor.api_error(req) end,
  html200 = function() return http.response(200, "text/html; charset=utf-8", HTML_200) end,
}

--- Whether NAME is a fault.
function faults.known(name)
  return FAULTS[name] ~= nil
end

--- The names of the faults, sorted.
function faults.names()
  local out = {}
  for name in pairs(FAULTS) do out[#out + 1] = name end
  table.sort(out)
  return out
end

--- Answers a request with the fault NAME (the caller checked that it exists).
-- @return a response table, "close" or "done"
function faults.run(name, c, req, vendor, srv)
  return FAULTS[name](c, req, vendor, srv)
end

--- Applies the credential's hold and fault directives.
-- @param srv the server state (`fault_counts`, `url`)
-- @param c the connection
-- @param req the request
-- @param vendor the route's vendor module
-- @param credential the request's key or token
-- @return nil to answer normally, else a response table, "close" or "done"
function faults.apply(srv, c, req, vendor, credential)
  local fault = credential:match("fault=([%w_%-]+)")
  local times = tonumber(credential:match("times=(%d+)") or "")
  local hold = tonumber(credential:match("hold=([%d%.]+)") or "")
  if not fault and not hold then return nil end
  local count = (srv.fault_counts[credential] or 0) + 1
  srv.fault_counts[credential] = count
  if times and count > times then return nil end
  if hold and not c:sleep(hold) then return "close" end
  if not fault then return nil end
  if not FAULTS[fault] then
    util.log("unknown fault '", fault, "'")
    return http.json(400, { error = "400", message = "cachectl-mock: unknown fault '" .. fault .. "'" })
  end
  return faults.run(fault, c, req, vendor, srv)
end

return faults
