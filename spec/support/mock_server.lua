--- Test harness: starts the cachectl mock server for one spec file.
-- Usage: `local srv = server.start()` in `setup`, `srv:stop()` in `teardown`.
local mock = require "cachectl.mock"

local M = {}

--- Starts a mock server process.
-- @param opts table (optional) passed to `mock.start`
-- @return the `mock.start` handle, plus `base` = url .. "/api"
function M.start(opts)
  local srv = mock.start(opts)
  srv.base = srv.url .. "/api"
  return srv
end

return M
