--- The control API of the mock server, under `/_mock/` (neither recorded nor
-- counted): the request log and its filters, counters, reset, the Omni
-- models and the fault rules.
-- @module cachectl.mock.control

local pairs, tonumber, tostring, type = pairs, tonumber, tostring, type
local coroutine, math, table = coroutine, math, table

local http = require "cachectl.mock.http"
local json = require "cachectl.mock.json"
local rules = require "cachectl.mock.rules"
local util = require "cachectl.mock.util"

local control = {}

-- A 400 naming the problem (which may quote what the client sent: kept UTF-8).
local function bad(message)
  return http.json(400, { error = "400", message = (util.utf8_repair(message)) })
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

-- The filter of a query as a function of a log entry, or nil and a message.
local function entry_filter(target)
  local f, err = filter_of(target)
  if not f then return nil, err end
  return function(e)
    return (not f.method or e.method == f.method) and (not f.since or e.at >= f.since)
      and (not f.match_path or f.match_path(util.path_of(e.target)))
  end
end

-- What the log dropped, as headers of its answers.
local function dropped_headers(srv)
  return { ["X-Mock-Dropped"] = tostring(srv.log.dropped),
           ["X-Mock-Bodies-Dropped"] = tostring(srv.log.bodies_dropped) }
end

local function pause()
  coroutine.yield("ready")
end

local function requests(srv, req)
  local f, err = entry_filter(req.target)
  if not f then return bad(err) end
  return http.response(200, "application/json", srv.log:json(f, pause), dropped_headers(srv))
end

local function count(srv, req)
  local f, err = entry_filter(req.target)
  if not f then return bad(err) end
  return http.json(200, { count = srv.log:count(f), dropped = srv.log.dropped }, dropped_headers(srv))
end

local function stats(srv)
  -- The connection asking is not counted as open.
  return http.json(200, { connections = srv.seen_count, requests = srv.log.total, open = srv.loop.open - 1,
                          dropped = srv.log.dropped, bodies_dropped = srv.log.bodies_dropped })
end

local function reset(srv)
  srv:reset()
  return http.json(200, { ok = true })
end

local function define_models(srv, req)
  local body, err = json.object(req.body)
  if not body then
    local message = 'the body must be a JSON object {"models": [...], "replace": false}'
    return bad(err == "not a JSON object" and message or (message .. ": " .. err))
  end
  local replace = body.replace
  if replace == json.null then replace = nil end
  if replace ~= nil and type(replace) ~= "boolean" then return bad("replace must be true or false") end
  local ok, problem = srv.models:define(body.models, replace)
  if not ok then return bad(problem) end
  return http.json(200, { ok = true, models = srv.models:size() })
end

local function list_faults(srv)
  return http.json(200, rules.list(srv.rules))
end

local function add_fault(srv, req)
  local d, err = json.object(req.body)
  if not d then return bad(rules.not_an_object(err)) end
  local rule
  rule, err = rules.parse(d)
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
  ["/_mock/requests/count"] = { GET = count },
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
