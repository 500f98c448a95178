--- The mock server itself: its state, the dispatch of a request (control API,
-- recording, routes of both vendors, faults) and the life of a connection.
-- @module cachectl.mock.server

local coroutine, math = coroutine, math
local assert, error, ipairs, setmetatable, tostring, type, require =
  assert, error, ipairs, setmetatable, tostring, type, require

local socket = require "socket"
local control = require "cachectl.mock.control"
local faults = require "cachectl.mock.faults"
local http = require "cachectl.mock.http"
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
  self.log, self.seen, self.seen_count, self.fault_counts, self.rules = {}, {}, 0, {}, {}
  if self.rate then self.rate:clear() end
  self.models:reset()
end

function State:record(c, req)
  self.log[#self.log + 1] = {
    method = req.method, path = req.target, headers = req.headers,
    body = req.body, connection = c.id, at = req.at,
  }
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
  return type(v) == "number" and v >= 1 and v == math.floor(v)
end

--- Raises an error naming the first bad option of serve().
-- @return the models file's definitions (`cachectl.mock.modelsfile`), or nil
function server.check(opts)
  local function need(ok, message)
    if not ok then error("cachectl.mock: " .. message, 4) end
  end
  need(opts.omni_rate_limit == nil or positive_integer(opts.omni_rate_limit),
    "omni_rate_limit must be a positive integer")
  need(opts.omni_rate_limit_per == nil or (type(opts.omni_rate_limit_per) == "number" and opts.omni_rate_limit_per > 0),
    "omni_rate_limit_per must be a number of seconds > 0")
  need(opts.page_size == nil or positive_integer(opts.page_size), "page_size must be a positive integer")
  need(opts.omni_error_shape == nil or opts.omni_error_shape == "detail" or opts.omni_error_shape == "error",
    "omni_error_shape must be \"detail\" or \"error\"")
  need(opts.max_body == nil or positive_integer(opts.max_body), "max_body must be a positive integer")
  need(opts.max_connections == nil or (positive_integer(opts.max_connections) and opts.max_connections <= 1000),
    "max_connections must be an integer from 1 to 1000")
  if opts.models ~= nil then
    need(type(opts.models) == "string", "models must be the path of a .json, .yaml or .yml file")
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
    srv.rate = ratelimit.new(opts.omni_rate_limit, opts.omni_rate_limit_per, opts.omni_rate_limit_grace)
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
  local initial = server.check(opts)
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
