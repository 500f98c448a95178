-- Ctrl-C: a real SIGINT to a real standalone lua5.4 while a call waits ends
-- the call at once (the mock still holds its answer for an hour, or the
-- rate limit's turn is half a minute away) and the interpreter raises its
-- usual "interrupted!".
local server = require "support.mock_server"
local helpers = require "support.helpers"
local socket = require "socket"

local uid, sh_quote = helpers.uid, helpers.sh_quote

-- The longest the spec waits for the interpreter to go, far beyond what an
-- interrupted call takes and far below the hour the mock holds its answer.
local PATIENCE = 30

-- Whether the process runs (not ended, nor a zombie waiting to be reaped).
local function alive(pid)
  local status = helpers.read_file("/proc/" .. pid .. "/status") or ""
  local state = status:match("State:%s*(%a)")
  return state ~= nil and state ~= "Z"
end

-- Starts `code` in a standalone lua5.4 with this process's module paths;
-- returns its pid, the pipe of its stdout and the file of its stderr.
local function spawn(code)
  local script, errfile = os.tmpname(), os.tmpname()
  helpers.write_file(script, string.format("package.path = %q\npackage.cpath = %q\n%s",
    package.path, package.cpath, code))
  local p = assert(io.popen("echo $$; exec lua5.4 " .. sh_quote(script) .. " 2>" .. sh_quote(errfile), "r"))
  local pid = assert(tonumber(p:read("*l")))
  return pid, p, errfile, script
end

-- Sends SIGINT once `ready()` holds, then waits (up to PATIENCE) for the
-- process to end. Returns whether it ended, its stdout and stderr.
local function interrupt(pid, p, errfile, script, ready)
  assert(helpers.eventually(function()
    local ok = ready()
    return ok, ok
  end, 500), "the call never reached its wait")
  socket.sleep(0.2)        -- let the call settle into its wait
  assert(helpers.succeeds("kill -INT " .. pid))
  local deadline = socket.gettime() + PATIENCE
  while alive(pid) and socket.gettime() < deadline do socket.sleep(0.05) end
  local ended = not alive(pid)
  if not ended then helpers.succeeds("kill -KILL " .. pid) end
  local out = p:read("*a")
  p:close()
  local err = helpers.read_file(errfile) or ""
  os.remove(errfile)
  os.remove(script)
  return ended, out, err
end

describe("SIGINT to the standalone interpreter #signals", function()
  local srv = server.use()

  it("ends a call waiting for its answer, and the interpreter says interrupted!", function()
    if _VERSION ~= "Lua 5.4" then
      return pending("runs a lua5.4 with this process's module paths: Lua 5.4 only")
    end
    local pid, p, errfile, script = spawn(string.format([[
      local core = require "cachectl.core"
      local res, err = core.modelslab.clear_cache{ key = %q, base_url = %q, timeout = 7200, retries = 0 }
      print("returned", res, err)
    ]], uid("key") .. " hold=3600", srv.base))
    local ended, out, err = interrupt(pid, p, errfile, script, function() return #srv:requests() == 1 end)
    assert.is_true(ended, "the interpreter was still running the call")
    assert.matches("interrupted!", err, 1, true)
    assert.is_nil(out:find("returned", 1, true))
    -- the mock sees the connection closed long before its answer is due
    assert.equal(0, helpers.eventually(function()
      local open = srv:stats().open
      return open == 0, open
    end))
  end)

  it("ends a call waiting for its rate-limit turn", function()
    if _VERSION ~= "Lua 5.4" then
      return pending("runs a lua5.4 with this process's module paths: Lua 5.4 only")
    end
    local key = uid("key")
    local pid, p, errfile, script = spawn(string.format([[
      local core = require "cachectl.core"
      local opts = { key = %q, base_url = %q, timeout = 120, rate_limit = { requests = 1, per = 60 } }
      assert(core.modelslab.clear_cache(opts))
      print("first")
      io.stdout:flush()
      local res, err = core.modelslab.clear_cache(opts)
      print("returned", res, err)
    ]], key, srv.base))
    local ended, out, err = interrupt(pid, p, errfile, script, function() return #srv:requests() == 1 end)
    assert.is_true(ended, "the interpreter was still waiting for the turn")
    assert.matches("interrupted!", err, 1, true)
    assert.matches("first", out, 1, true)
    assert.is_nil(out:find("returned", 1, true))
    assert.equal(1, #srv:requests())
  end)
end)
