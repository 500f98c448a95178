--- Runs the ThreadSanitizer harness (make spec-tsan) against a mock server
-- started for it: `lua5.4 spec/tsan/run.lua HARNESS CPATH`. Exits 0 when every
-- thread's call succeeded and ThreadSanitizer reported nothing.
local arg, io, os = arg, io, os

package.path = "lua/?.lua;lua/?/init.lua;mock/lua/?.lua;mock/lua/?/init.lua;spec/?.lua;" .. package.path
local server = require "support.mock_server"
local helpers = require "support.helpers"

local harness, cpath = arg[1], arg[2]
if not (harness and cpath) then
  io.stderr:write("usage: lua5.4 spec/tsan/run.lua HARNESS CPATH\n")
  os.exit(2)
end

local srv = server.start()
local p = io.popen("TSAN_OPTIONS='exitcode=66 second_deadlock_stack=1' " .. helpers.sh_quote(harness) .. " "
  .. helpers.sh_quote(srv.base) .. " " .. helpers.sh_quote(cpath) .. " 2>&1; echo \"exit $?\"")
local out = p:read("*a")
p:close()
local requests = #srv:requests()
srv:stop()
io.write(out)
local clean = out:find("ok 16\nexit 0", 1, true) and not out:find("ThreadSanitizer", 1, true)
io.write(string.format("spec-tsan: %s (%d requests at the mock)\n", clean and "passed" or "FAILED", requests))
os.exit(clean and requests == 16 and 0 or 1)
