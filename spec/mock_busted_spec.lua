-- The busted helper cachectl.mock.busted: one mock per file or block, reset
-- before each test, stopped by its pid after the block even when its tests
-- raise or fail or its own setup breaks; and gone when busted itself dies.
-- Each case runs a child busted on small spec files and looks at the pids.
local helpers = require "support.helpers"
local mock_busted = require "cachectl.mock.busted"

local sh_quote, succeeds = helpers.sh_quote, helpers.succeeds

local ROOT = io.popen("pwd"):read("*l")

local function alive(pid)
  return succeeds("kill -0 " .. pid .. " 2>/dev/null")
end

-- What the child spec files share: a note written to $NOTES, and a liveness check.
local PRELUDE = [[
local function note(line)
  local f = assert(io.open(os.getenv("NOTES"), "a"))
  f:write(line, "\n")
  f:close()
end
local function alive(pid)
  local ok = os.execute("kill -0 " .. pid .. " 2>/dev/null")
  return ok == true or ok == 0
end
local function notes()
  local f = io.open(os.getenv("NOTES"))
  local text = f and f:read("*a") or ""
  if f then f:close() end
  return text
end
]]

local dir
-- Writes the child spec files ({ name = code }) and returns the busted command
-- that runs them in `dir` with this checkout's modules.
local function child(files)
  for name, code in pairs(files) do helpers.write_file(dir .. "/" .. name, PRELUDE .. code) end
  local lpath = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;" .. ROOT .. "/mock/lua/?.lua;" .. ROOT
    .. "/mock/lua/?/init.lua;;"
  return "cd " .. sh_quote(dir) .. " && env NOTES=" .. sh_quote(dir .. "/notes") .. " LUA_PATH=" .. sh_quote(lpath)
    .. " LUA_PATH_5_4=" .. sh_quote(lpath) .. " busted --lua=lua5.4 -o TAP ."
end

local function notes()
  return helpers.read_file(dir .. "/notes") or ""
end

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

describe("cachectl.mock.busted #slow", function()
  before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(succeeds("mkdir " .. sh_quote(dir)))
  end)
  after_each(function()
    os.execute("rm -rf " .. sh_quote(dir))
  end)

  it("resets between tests and stops each block's mock by its pid when tests raise, fail or setup breaks", function()
    local out = run(child{ ["a_spec.lua"] = [[
local mock = require "cachectl.mock.busted"
local first, second
describe("a block whose tests raise and fail", function()
  local m = mock.use()
  it("raises", function()
    first = m.pid
    note("pid " .. m.pid)
    m:fault{ fault = "503" }
    m:define_models({ { id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427", name = "Mine" } })
    error("boom")
  end)
  it("fails, after a reset", function()
    note("after reset: " .. #m:faults() .. " rules, " .. m:count() .. " requests")
    assert.equal(1, 2)
  end)
end)
describe("a block whose own setup breaks after the mock started", function()
  local m = mock.use()
  setup(function()
    second = m.pid
    note("pid " .. m.pid)
    error("setup broke")
  end)
  it("never runs", function() note("ran") end)
end)
describe("the next block", function()
  it("finds both mocks gone while busted still runs", function()
    assert.is_false(alive(first))
    assert.is_false(alive(second))
    note("both gone")
  end)
end)
]] })
    assert.matches("not ok 1 - a block whose tests raise and fail raises", out, 1, true)
    assert.matches("boom", out, 1, true)
    assert.matches("not ok 2 - a block whose tests raise and fail fails, after a reset", out, 1, true)
    assert.matches("setup broke", out, 1, true)
    assert.matches("ok 4 - the next block finds both mocks gone while busted still runs", out, 1, true)
    local text = notes()
    assert.matches("after reset: 0 rules, 0 requests", text, 1, true)
    assert.matches("both gone", text, 1, true)
    assert.is_nil(text:find("ran", 1, true))
    local pids = {}
    for pid in text:gmatch("pid (%d+)") do pids[#pids + 1] = pid end
    assert.equal(2, #pids)
    for _, pid in ipairs(pids) do assert.is_false(alive(pid)) end
  end)

  it("stops a file's mock after that file, before the next file runs", function()
    local out = run(child{
      ["a_spec.lua"] = [[
local m = require("cachectl.mock.busted").use()
it("raises", function()
  note("pid " .. m.pid)
  error("boom")
end)
]],
      ["b_spec.lua"] = [[
it("finds the mock of the file before gone", function()
  local pid = assert(notes():match("pid (%d+)"))
  assert.is_false(alive(pid))
  note("gone " .. pid)
end)
]] })
    assert.matches("not ok 1 - raises", out, 1, true)
    assert.matches("ok 2 - finds the mock of the file before gone", out, 1, true)
    local pid = notes():match("gone (%d+)")
    assert.is_not_nil(pid)
    assert.is_false(alive(pid))
  end)

  it("leaves no mock behind when busted itself is killed in the middle of a test", function()
    local cmd = child{ ["a_spec.lua"] = [[
local socket = require "socket"
local m = require("cachectl.mock.busted").use()
it("waits to be killed", function()
  local p = io.popen("echo $PPID")   -- the process running this spec
  note("busted " .. p:read("*l") .. " pid " .. m.pid)
  p:close()
  socket.sleep(60)
end)
]] }
    assert(succeeds(cmd .. " >/dev/null 2>&1 &"))
    local runner, pid
    helpers.eventually(function()
      runner, pid = notes():match("busted (%d+) pid (%d+)")
      return runner ~= nil
    end, 1000)
    assert.is_not_nil(runner)
    assert.is_true(alive(pid))
    assert(succeeds("kill -KILL " .. runner))
    assert.is_true(helpers.eventually(function() return not alive(pid), not alive(pid) end, 500))
  end)

  it("raises at once on a bad option, and on a use of the handle before setup", function()
    assert.error_matches(function() mock_busted.use{ page_size = 0 } end, "page_size must be a positive integer")
    assert.error_matches(function() mock_busted.use{ models = dir .. "/none.json" } end, "cannot be read")
    local out = run(child{ ["a_spec.lua"] = [[
local m = require("cachectl.mock.busted").use()
local url = m.url
it("never gets here", function() end)
]] })
    assert.matches("the mock starts in busted's setup", out, 1, true)
    assert.matches("asked for 'url'", out, 1, true)
  end)
end)
