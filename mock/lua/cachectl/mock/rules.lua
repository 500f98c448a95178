--- Fault rules of the mock server, set through the control API
-- (`POST /_mock/faults`): `{method, path, fault, hold, times, status, body,
-- headers}`. The first rule that matches a request (method, the end of its
-- path) and has uses left answers it; every use is counted when the request
-- arrives. `GET /_mock/faults` lists the rules with their uses; a reset
-- clears them.
-- @module cachectl.mock.rules

local math, table = math, table
local ipairs, pairs, pcall, tostring, type = ipairs, pairs, pcall, tostring, type

local faults = require "cachectl.mock.faults"
local http = require "cachectl.mock.http"
local json = require "cachectl.mock.json"
local util = require "cachectl.mock.util"

local rules = {}

rules.MAX_RULES = 1000
local MAX_HOLD = 3600
local MAX_PATH = 1024
local FIELD_LIST = "method, path, fault, hold, times, status, body, headers"
local FIELDS = {}
for name in FIELD_LIST:gmatch("%a+") do FIELDS[name] = true end
-- Headers the mock frames the answer with itself.
local FRAMING = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true }

local function whole(v, low, high)
  return type(v) == "number" and v == math.floor(v) and v >= low and v <= high
end

local function check_headers(h)
  if type(h) ~= "table" or h[1] ~= nil or json.is_array(h) then
    return "headers must be an object of names to values"
  end
  for name, value in pairs(h) do
    if type(name) ~= "string" or not name:match("^[%w!#%$%%&'%*%+%.%^_`|~%-]+$") then
      return "headers: '" .. tostring(name) .. "' is not a header name"
    end
    if FRAMING[name:lower()] then return "headers may not set " .. name .. ": the mock frames the answer" end
    if type(value) ~= "string" or value:find("%c") then
      return "headers." .. name .. " must be a string without control characters"
    end
  end
end

local function check_path(path)
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then return "path must be a string that starts with '/'" end
  if #path > MAX_PATH then return "path must be at most " .. MAX_PATH .. " bytes" end
  if path:find("[%c%s]") then return "path must not hold spaces or control characters" end
  if path:find("[?#]") then return "path must not hold '?' or '#': a rule matches the path without its query" end
  if path:find("**", 1, true) then
    return "path must not hold '**': a path matches the end of the request's path, whatever comes before"
  end
end

-- The first problem of a rule's fields, or nil.
local function problem(r)
  for k in pairs(r) do
    if not FIELDS[k] then return "unknown field '" .. tostring(k) .. "' (known: " .. FIELD_LIST .. ")" end
  end
  if r.method ~= nil and (type(r.method) ~= "string" or not r.method:match("^%a+$")) then
    return "method must be an HTTP method such as \"POST\""
  end
  if r.path ~= nil then
    local bad = check_path(r.path)
    if bad then return bad end
  end
  if r.fault ~= nil and (type(r.fault) ~= "string" or not faults.known(r.fault)) then
    return "fault '" .. tostring(r.fault) .. "' is unknown (known: " .. table.concat(faults.names(), ", ") .. ")"
  end
  if r.hold ~= nil and not (type(r.hold) == "number" and r.hold >= 0 and r.hold <= MAX_HOLD) then
    return "hold must be a number of seconds from 0 to " .. MAX_HOLD
  end
  if r.times ~= nil and not whole(r.times, 1, 2 ^ 31) then
    return "times must be a whole number >= 1 (leave it out for every request)"
  end
  if r.status ~= nil and not whole(r.status, 200, 599) then return "status must be a whole number from 200 to 599" end
  if r.headers ~= nil then
    local bad = check_headers(r.headers)
    if bad then return bad end
  end
  local answers = r.status ~= nil or r.body ~= nil
  if r.fault ~= nil and (answers or r.headers ~= nil) then
    return "give fault, or status/body/headers, not both: a fault answers in its own way"
  end
  if r.headers ~= nil and not answers then return "headers go with status or body" end
  if r.status ~= nil and http.no_body(r.status) then
    if r.body ~= nil then return "body: a " .. math.floor(r.status) .. " answer carries no body (leave body out)" end
  elseif r.status ~= nil and r.status < 400 and r.body == nil then
    return "a status below 400 needs a body"
  end
  if r.fault == nil and r.hold == nil and not answers then return "a rule needs fault, hold, status or body" end
end

--- The message for a body that is not a rule's JSON object.
-- @param why what is wrong with the text (json.object's message), or nil
function rules.not_an_object(why)
  local message = "the body must be a JSON object {" .. FIELD_LIST .. "}"
  if why and why ~= "not a JSON object" then message = message .. ": " .. why end
  return message
end

--- A checked rule from its decoded JSON definition (null fields count as absent).
-- @return the rule, or nil and a message naming what is wrong
function rules.parse(d)
  if type(d) ~= "table" or d[1] ~= nil or json.is_array(d) then return nil, rules.not_an_object() end
  local def = {}
  for k, v in pairs(d) do
    if v ~= json.null then def[k] = v end
  end
  local bad = problem(def)
  if bad then return nil, bad end
  if def.method then def.method = def.method:upper() end
  -- whole numbers as integers (lua-cjson may decode 503 as 503.0)
  if def.status then def.status = math.floor(def.status) end
  if def.times then def.times = math.floor(def.times) end
  local rule = { def = def, uses = 0, match_path = def.path and util.path_glob(def.path) }
  -- the answer's body as sent, encoded once: what cannot be sent is refused here
  if def.body ~= nil and type(def.body) ~= "string" then
    local ok, text = pcall(json.encode, def.body)
    if not ok then return nil, "body cannot be sent as JSON: " .. tostring(text) end
    rule.body = text
  else
    rule.body = def.body
  end
  return rule
end

--- Whether a rule matches a method and a request path (without its query).
function rules.matches(rule, method, path)
  return (not rule.def.method or rule.def.method == method) and (not rule.match_path or rule.match_path(path))
end

--- The rules as `GET /_mock/faults` lists them: each definition with `id` and `uses`.
function rules.list(list)
  local out = json.array()
  for i, r in ipairs(list) do
    local view = { id = i, uses = r.uses }
    for k, v in pairs(r.def) do view[k] = v end
    out[i] = view
  end
  return out
end

-- The answer of a rule with status and/or body.
local function answer(r, req, vendor)
  local headers, content_type = {}, nil
  for name, value in pairs(r.def.headers or {}) do
    if name:lower() == "content-type" then content_type = value else headers[name] = value end
  end
  if http.no_body(r.def.status) then return http.response(r.def.status, content_type, "", headers) end
  if r.body == nil then
    local res = vendor.status_error(req, r.def.status, headers)
    if content_type then res.headers["Content-Type"] = content_type end
    return res
  end
  return http.response(r.def.status or 200, content_type or "application/json", r.body, headers)
end

--- Applies the first matching rule with uses left to a request of a vendor's route.
-- @param srv the server state (`rules`)
-- @param c the connection
-- @param req the request
-- @param vendor the route's vendor module
-- @return nil to go on (no rule, or a rule that only holds), else a response table, "close" or "done"
function rules.apply(srv, c, req, vendor)
  local rule
  for _, r in ipairs(srv.rules) do
    if rules.matches(r, req.method, req.path) and (not r.def.times or r.uses < r.def.times) then
      rule = r
      break
    end
  end
  if not rule then return nil end
  rule.uses = rule.uses + 1
  if rule.def.hold and not c:sleep(rule.def.hold) then return "close" end
  if rule.cleared then return nil end   -- a reset came during the hold
  if rule.def.fault then return faults.run(rule.def.fault, c, req, vendor, srv) end
  if rule.def.status or rule.def.body ~= nil then return answer(rule, req, vendor) end
end

--- Marks every rule of a list as cleared (a request held by one answers normally).
function rules.clear(list)
  for _, r in ipairs(list) do r.cleared = true end
end

return rules
