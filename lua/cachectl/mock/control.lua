--- The control API of the mock server, under `/_mock/` (neither recorded nor
-- counted): the request log, counters, reset, and the Omni models.
-- @module cachectl.mock.control

local ipairs, type = ipairs, type

local http = require "cachectl.mock.http"
local json = require "cachectl.mock.json"

local control = {}

local function requests(srv)
  local list = json.array()
  for i, entry in ipairs(srv.log) do list[i] = entry end
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

local function bad(message)
  return http.json(400, { error = "400", message = message })
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

local CALLS = {
  ["/_mock/requests"] = { method = "GET", run = requests },
  ["/_mock/stats"] = { method = "GET", run = stats },
  ["/_mock/reset"] = { method = "POST", run = reset },
  ["/_mock/models"] = { method = "POST", run = define_models },
}

--- Answers a control request.
-- @param srv the server state
-- @param req the request (its path starts with "/_mock/")
-- @return a response table
function control.handle(srv, req)
  local call = CALLS[req.path]
  if not call then return http.json(404, { error = "404", message = "Not found" }) end
  if req.method ~= call.method then
    return http.json(405, { error = "405", message = "Method not allowed" }, { Allow = call.method })
  end
  return call.run(srv, req)
end

return control
