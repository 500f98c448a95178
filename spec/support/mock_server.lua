--- Test harness: the cachectl mock server for a spec file.
-- Most files: `local srv = server.use()` inside their top `describe`
-- (`server.use_tls()` for HTTPS). Files that need more in their `setup`:
-- `srv = server.start()` there and `srv:stop()` in `teardown`.
local mock = require "cachectl.mock"
local helpers = require "support.helpers"
local tls = require "support.tls"
local pairs, getmetatable, setmetatable = pairs, getmetatable, setmetatable
local busted = require "busted"
local luassert = require "luassert"

local M = {}

--- Starts a mock server process.
-- @param opts table (optional) passed to `mock.start`
-- @return the `mock.start` handle, plus `base` = url .. "/api"
function M.start(opts)
  local srv = mock.start(opts)
  srv.base = srv.url .. "/api"
  return srv
end

-- One server from `start()` for the enclosing describe block (busted's
-- setup), stopped after it (teardown, then `after()`), its log and faults
-- cleared before each test (before_each). Returns the handle, filled in by
-- setup.
local function use(start, after)
  local srv = {}
  busted.setup(function()
    local started = start()
    for k, v in pairs(started) do srv[k] = v end
    setmetatable(srv, getmetatable(started))
  end)
  busted.teardown(function()
    if srv.pid then srv:stop() end
    if after then after() end
  end)
  busted.before_each(function() srv:reset() end)
  return srv
end

--- The preamble every spec file of the mock shared: one mock for the
-- enclosing describe block (busted's setup), stopped after it (teardown),
-- its log and faults cleared before each test (before_each).
-- @param opts table (optional) passed to `mock.start`
-- @return the handle, filled in by setup: use it inside tests only
function M.use(opts)
  return use(function() return M.start(opts) end)
end

--- As `use`, for a mock that serves HTTPS with a certificate of a
-- throw-away CA (support.tls) for 127.0.0.1 and localhost; the handle also
-- has `ca`, the CA's file (for `ca_file`). The certificates are removed
-- after the block.
-- @param opts table (optional) passed to `mock.start` beside `tls`
-- @return the handle, filled in by setup: use it inside tests only
function M.use_tls(opts)
  local certs
  return use(function()
    certs = tls.make()
    local srv = M.start(helpers.merge({ tls = { certificate = certs.cert, key = certs.key } }, opts))
    srv.ca = certs.ca
    return srv
  end, function()
    if certs then certs:cleanup() end
  end)
end

--- The one request `srv` recorded; the test fails when it recorded none or more.
function M.only_request(srv)
  local reqs = srv:requests()
  luassert.equal(1, #reqs)
  return reqs[1]
end

return M
