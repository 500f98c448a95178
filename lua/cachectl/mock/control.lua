--- The control API of the mock server, under `/_mock/` (neither recorded nor
-- counted): the request log and its filters, counters, reset, the Omni
-- models and the fault rules.
-- @module cachectl.mock.control

local ipairs, pairs, tonumber, type = ipairs, pairs, tonumber, type
local math, table = math, table

local http = require "cachectl.mock.http"
local json = require "cachectl.mock.json"
local rules = require "cachectl.mock.rules"
local util = require "cachectl.mock.util"

local control = {}

local function bad(message)
  return http.json(400, { error = "400", message = message })
end

local FILTERS = { method = true, path = true, since = true }

-- The filter of a `GET /_mock/requests` query, or nil and a message.
local function filter_of(target)
  local q, malformed = util.parse_query(target)
  if not q then return nil, "malformed query parameter '" .. malformed .. "'" end
  for name in pairs(q) do
    if not FILTERS[name] then return nil, "unknown filter '" .. name .. "' (known: method, path, since)" end
  end
  local f = {}
  if q.method then
    if not q.method:match("^%a+$") then return nil, "method must be an HTTP method such as POST" end
    f.method = q.method:upper()
  end
  if q.path then
    if q.path:sub(1, 1) ~= "/" or q.path:find("[?#%c]") or q.path:find("**", 1, true) then
      return nil, "path must start with '/' and hold no '?', '#', '**' or control characters"
    end
    f.match_path = util.path_glob(q.path)
  end
  if q.since then
    f.since = tonumber(q.since)
    if not f.since or f.since ~= f.since or math.abs(f.since) == math.huge then
      return nil, "since must be a number of epoch seconds"
    end
  end
  return f
end

local function requests(srv, req)
  local f, err = filter_of(req.target)
  if not f then return bad(err) end
  local list = json.array()
  for _, entry in ipairs(srv.log) do
    if (not f.method or entry.method == f.method) and (not f.since or entry.at >= f.since)
      and (not f.match_path or f.match_path(util.path_of(entry.path))) then
      list[#list + 1] = entry
    end
  end
  return http.json(200, list)
end

local function stats(srv)
  -- The connection asking is not counted as open.
  return http.json(200, { connections = srv.seen_count, requests = #srv.log, open = srv.loop.open - 1 })
end

local function reset(srv)
  srv:reset()
  return http.json(200, { ok = true })
end

local function define_models(srv, req)
  local body = json.object(req.body)
  if not body then return bad('the body must be a JSON object {"models": [...], "replace": false}') end
  local replace = body.replace
  if replace == json.null then replace = nil end
  if replace ~= nil and type(replace) ~= "boolean" then return bad("replace must be true or false") end
  local ok, err = srv.models:define(body.models, replace)
  if not ok then return bad(err) end
  return http.json(200, { ok = true, models = #srv.models.list })
end

local function list_faults(srv)
  return http.json(200, rules.list(srv.rules))
end

local function add_fault(srv, req)
  local d = json.object(req.body)
  local rule, err = rules.parse(d)
  if not rule then return bad(err) end
  if #srv.rules >= rules.MAX_RULES then
    return bad("too many rules (at most " .. rules.MAX_RULES .. "); a reset or DELETE /_mock/faults clears them")
  end
  srv.rules[#srv.rules + 1] = rule
  return http.json(200, { ok = true, id = #srv.rules })
end

local function clear_faults(srv)
  rules.clear(srv.rules)
  srv.rules = {}
  return http.json(200, { ok = true })
end

local CALLS = {
  ["/_mock/requests"] = { GET = requests },
  ["/_mock/stats"] = { GET = stats },
  ["/_mock/reset"] = { POST = reset },
  ["/_mock/models"] = { POST = define_models },
  ["/_mock/faults"] = { GET = list_faults, POST = add_fault, DELETE = clear_faults },
}

--- Answers a control request.
-- @param srv the server state
-- @param req the request (its path starts with "/_mock/")
-- @return a response table
function control.handle(srv, req)
  local call = CALLS[req.path]
  if not call then return http.json(404, { error = "404", message = "Not found" }) end
  local run = call[req.method]
  if not run then
    local allowed = {}
    for method in pairs(call) do allowed[#allowed + 1] = method end
    table.sort(allowed)
    return http.json(405, { error = "405", message = "Method not allowed" }, { Allow = table.concat(allowed, ", ") })
  end
  return run(srv, req)
end

return control
