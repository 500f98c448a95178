--- A busted helper: one mock server for a spec file (or a `describe` block),
-- reset before each test, stopped by its pid after the block however its
-- tests ended.
--
--     local mock = require "cachectl.mock.busted"
--     local m = mock.use()          -- at the top of the file, or of a describe
--
--     it("...", function()
--       local omni = cachectl.omni.new{ token = "t", base_url = m.url .. "/api" }
--       ...
--       assert.equal(1, m:count{ method = "POST", path = "/cache_reset/daily" })
--     end)
--
-- It is busted's own `setup`/`before_each`/`teardown` around `mock.start`:
-- the server starts before the block's first test, `m:reset()` runs before
-- each test (so each sees only its own requests, no fault rules, and the
-- models of the start), and `m:stop()` kills it by its pid after the block,
-- when tests failed or raised too. Should busted itself die, the server
-- exits with it (`mock.start` runs it with `--exit-with-parent`).
-- @module cachectl.mock.busted

local error, getmetatable, pairs, rawget, rawset, require, setmetatable, tostring =
  error, getmetatable, pairs, rawget, rawset, require, setmetatable, tostring

local launcher = require "cachectl.mock.launcher"
local server = require "cachectl.mock.server"

local helper = {}

-- The handle before setup: any use is a mistake worth a clear message.
local NOT_STARTED = {
  __index = function(_, key)
    error("cachectl.mock.busted: the mock starts in busted's setup, before the block's first test; "
      .. "use the handle inside tests (asked for '" .. tostring(key) .. "')", 2)
  end,
}

--- Registers a mock server for the enclosing block (the file, or a describe).
-- @param opts table (optional): the options of `mock.start`; checked at once
-- @return the handle (`m.url`, `m.pid`, `m:requests{}`, `m:count{}`, `m:fault{}`, ...),
--   usable inside the block's tests, setups and hooks
function helper.use(opts)
  opts = opts or {}
  server.check(opts)   -- a bad option raises here, while busted loads the file
  local busted = require "busted"
  local m = setmetatable({}, NOT_STARTED)
  busted.setup(function()
    local started = launcher.start(opts)
    for k, v in pairs(started) do rawset(m, k, v) end
    setmetatable(m, getmetatable(started))
  end)
  busted.before_each(function() m:reset() end)
  busted.teardown(function()
    if rawget(m, "pid") then m:stop() end
  end)
  return m
end

return helper
