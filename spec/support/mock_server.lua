--- Test harness: the cachectl mock server for a spec file.
-- Most files: `local srv = server.use()` inside their top `describe`.
-- Files that need more in their `setup`: `srv = server.start()` there and
-- `srv:stop()` in `teardown`.
local mock = require "cachectl.mock"
local pairs, getmetatable, setmetatable = pairs, getmetatable, setmetatable
local busted = require "busted"

local M = {}

--- Starts a mock server process.
-- @param opts table (optional) passed to `mock.start`
-- @return the `mock.start` handle, plus `base` = url .. "/api"
function M.start(opts)
  local srv = mock.start(opts)
  srv.base = srv.url .. "/api"
  return srv
end

--- The preamble every spec file of the mock shared: one mock for the
-- enclosing describe block (busted's setup), stopped after it (teardown),
-- its log and faults cleared before each test (before_each).
-- @param opts table (optional) passed to `mock.start`
-- @return the handle, filled in by setup: use it inside tests only
function M.use(opts)
  local srv = {}
  busted.setup(function()
    local started = M.start(opts)
    for k, v in pairs(started) do srv[k] = v end
    setmetatable(srv, getmetatable(started))
  end)
  busted.teardown(function() if srv.pid then srv:stop() end end)
  busted.before_each(function() srv:reset() end)
  return srv
end

return M
