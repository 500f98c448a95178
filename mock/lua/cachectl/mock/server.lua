--- The mock server itself: its state, the dispatch of a request (control API,
-- recording, routes of both vendors, faults) and the life of a connection.
-- @module cachectl.mock.server

local coroutine, math, table = coroutine, math, table
local assert, error, ipairs, pairs, setmetatable, tostring, type, require =
  assert, error, ipairs, pairs, setmetatable, tostring, type, require

local socket = require "socket"
local control = require "cachectl.mock.control"
local faults = require "cachectl.mock.faults"
local http = require "cachectl.mock.http"
local log = require "cachectl.mock.log"
local loop = require "cachectl.mock.loop"
local models = require "cachectl.mock.models"
local modelsfile = require "cachectl.mock.modelsfile"
local modelslab = require "cachectl.mock.modelslab"
local omni = require "cachectl.mock.omni"
local openapi = require "cachectl.mock.openapi"
local ratelimit = require "cachectl.mock.ratelimit"
local rules = require "cachectl.mock.rules"

local server = {}

server.PAGE_SIZE = 2   -- default page size of the Omni model list

-- Every route of both vendors, in the order they are tried.
local ROUTES = {}
for _, vendor in ipairs({ omni, modelslab }) do
  for _, r in ipairs(vendor.ROUTES) do
    ROUTES[#ROUTES + 1] = setmetatable({ vendor = vendor }, { __index = r })
  end
end

-- The route of a path (any prefix, such as "/api", is accepted), with its captures.
local function match_route(path)
  for _, r in ipairs(ROUTES) do
    local found = { path:match(r.pattern) }
    if found[1] then
      local route = setmetatable({}, { __index = r })
      for i, name in ipairs(r.captures) do route[name] = found[i] end
      if not r.accept or r.accept(route) then return route end
    end
  end
end

local State = {}
State.__index = State

--- Forgets the log, the counters, the fault rules, the rate windows;
-- restores the models of the start.
function State:reset()
  rules.clear(self.rules or {})
  self.log, self.seen, self.seen_count, self.fault_counts, self.rules = log.new(), {}, 0, {}, {}
  if self.rate then self.rate:clear() end
  self.models:reset()
end

function State:record(c, req)
  self.log:add(req, c.id)
  if not self.seen[c.id] then
    self.seen[c.id] = true
    self.seen_count = self.seen_count + 1
  end
end

local function dispatch(srv, c, req)
  if req.path:sub(1, 7) == "/_mock/" then return control.handle(srv, req) end
  srv:record(c, req)
  if req.path:sub(1, 16) == "/redirect-target" then
    return http.json(200, { status = "success", redirected = true, success = true })
  end
  local route = match_route(req.path)
  if not route then return http.json(404, { error = "404", message = "Not found" }) end
  req.error_shape = srv.omni_error_shape or route.shape
  local ruled = rules.apply(srv, c, req, route.vendor)
  if ruled ~= nil then return ruled end
  local credential = route.vendor.credential(req)
  if credential then
    local faulted = faults.apply(srv, c, req, route.vendor, credential)
    if faulted then return faulted end
  end
  return route.handler(srv, req, route)
end

local function tls_handshake(srv, c)
  local ssl = require "ssl"
  local s = ssl.wrap(c.sock, srv.tls)
  if not s then return false end
  c.sock = s
  s:settimeout(0)
  while true do
    local ok, err = s:dohandshake()
    if ok then return true end
    if err == "wantread" or err == "timeout" then
      coroutine.yield("read", s)
    elseif err == "wantwrite" then
      coroutine.yield("write", s)
    else
      return false
    end
  end
end

-- The life of one connection, in its own coroutine.
local function serve_connection(srv, c)
  if srv.tls and not tls_handshake(srv, c) then return end
  while true do
    local req, err, msg = http.read_request(c, srv.max_body)
    if not req then
      if err ~= "eof" then
        http.send(c, nil, http.json(err, { error = tostring(err), message = http.reason(err) .. ": " .. msg }), false)
        c:linger()
      end
      return
    end
    local result = dispatch(srv, c, req)
    if result == "close" then return end
    if result ~= "done" and not http.send(c, req, result, req.keep_alive) then return end
    if not req.keep_alive then return end
  end
end

local function positive_integer(v)
  return type(v) == "number" and v >= 1 and v < math.huge and v == math.floor(v)
end

-- The options, and where each may be given ("start": mock.start and the busted
-- helper; "serve": mock.serve), with a check of the value: nil or a message.
local OPTIONS = {
  host = { function(v)
    if type(v) ~= "string" or not v:match("^[^%s%c]+$") then
      return "host must be an address or a host name such as \"127.0.0.1\""
    end
  end },
  port = { function(v)
    if type(v) ~= "number" or v ~= math.floor(v) or v < 0 or v > 65535 then
      return "port must be an integer from 0 to 65535 (0: any free port)"
    end
  end },
  omni_rate_limit = { function(v)
    if not positive_integer(v) then return "omni_rate_limit must be a positive integer" end
  end },
  omni_rate_limit_per = { function(v)
    if type(v) ~= "number" or not (v > 0 and v < math.huge) then
      return "omni_rate_limit_per must be a number of seconds > 0"
    end
  end },
  page_size = { function(v) if not positive_integer(v) then return "page_size must be a positive integer" end end },
  omni_error_shape = { function(v)
    if v ~= "detail" and v ~= "error" then return "omni_error_shape must be \"detail\" or \"error\"" end
  end },
  max_body = { function(v) if not positive_integer(v) then return "max_body must be a positive integer" end end },
  max_connections = { function(v)
    if not positive_integer(v) or v > 1000 then return "max_connections must be an integer from 1 to 1000" end
  end },
  tls = { function(v)
    if type(v) ~= "table" or type(v.certificate) ~= "string" or type(v.key) ~= "string" then
      return "tls must be a table { certificate = PATH, key = PATH }"
    end
  end },
  models = { function(v)
    if type(v) ~= "string" then return "models must be the path of a .json, .yaml or .yml file" end
  end },
  lua = { function(v)
    if type(v) ~= "string" or v == "" then return "lua must be the command of a Lua interpreter" end
  end, only = "start" },
  on_listen = { function(v)
    if type(v) ~= "function" then return "on_listen must be a function" end
  end, only = "serve" },
  exit_with_parent = { function(v)
    if type(v) ~= "boolean" then return "exit_with_parent must be true or false" end
  end, only = "serve" },
}

local function known(kind)
  local names = {}
  for name, o in pairs(OPTIONS) do
    if not o.only or o.only == kind then names[#names + 1] = name end
  end
  table.sort(names)
  return table.concat(names, ", ")
end

--- Raises an error naming the first bad option of serve() or start().
-- @param opts the options
-- @param kind "start" (mock.start, the busted helper; the default) or "serve"
-- @return the models file's definitions (`cachectl.mock.modelsfile`), or nil
function server.check(opts, kind)
  kind = kind or "start"
  local function need(ok, message)
    if not ok then error("cachectl.mock: " .. message, 4) end
  end
  need(type(opts) == "table", "the options must be a table")
  local names = {}
  for name in pairs(opts) do names[#names + 1] = tostring(name) end
  table.sort(names)
  for _, name in ipairs(names) do
    local o = OPTIONS[name]
    need(o and (not o.only or o.only == kind), "unknown option '" .. name .. "' (known: " .. known(kind) .. ")")
    local problem = o[1](opts[name])
    need(not problem, problem)
  end
  if opts.models ~= nil then
    local initial, err = modelsfile.load(opts.models)
    need(initial, "models: " .. tostring(err))
    return initial
  end
end

local function new_state(opts, url, initial)
  openapi.load()   -- the vendors' documents: a missing one stops the start
  local srv = setmetatable({
    url = url, models = models.new(initial), page_size = opts.page_size or server.PAGE_SIZE,
    omni_error_shape = opts.omni_error_shape, max_body = opts.max_body or http.MAX_BODY,
  }, State)
  if opts.omni_rate_limit then
    srv.rate = ratelimit.new(opts.omni_rate_limit, opts.omni_rate_limit_per)
  end
  if opts.tls then
    local ssl = require "ssl"
    srv.tls = assert(ssl.newcontext({
      mode = "server", protocol = "any", options = "all",
      certificate = opts.tls.certificate, key = opts.tls.key,
    }))
  end
  srv:reset()
  return srv
end

--- Runs the mock server in this process until it is killed (see `cachectl.mock.serve`).
function server.serve(opts)
  opts = opts or {}
  local initial = server.check(opts, "serve")
  local listener = assert(socket.bind(opts.host or "127.0.0.1", opts.port or 0, 512))
  listener:settimeout(0)
  local ip, port = listener:getsockname()
  if ip:find(":", 1, true) then ip = "[" .. ip .. "]" end
  local srv = new_state(opts, (opts.tls and "https" or "http") .. "://" .. ip .. ":" .. tostring(port), initial)
  math.randomseed(math.floor(socket.gettime() * 1000) % 2147483647)
  -- When stdout is a pipe, its write end turns "readable" once the reader closes it.
  local watch = opts.exit_with_parent and { getfd = function() return 1 end } or nil
  srv.loop = loop.new(listener, function(c) serve_connection(srv, c) end,
    { watch = watch, max_connections = opts.max_connections })
  if opts.on_listen then opts.on_listen(srv.url) end
  srv.loop:run()
end

return server
