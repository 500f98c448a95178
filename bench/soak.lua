--- The memory and descriptor soak: one cachectl ModelsLab client makes
-- WARMUP calls, then N more; the process's resident set (VmRSS) and open
-- file descriptors are read after the warm-up and at the end, each time
-- after a full garbage collection (so garbage not yet collected does not
-- count as growth).
--
--    lua5.4 bench/soak.lua BASE_URL KEY N WARMUP
--
-- Prints `rss_before_kib`, `rss_after_kib`, `fds_before`, `fds_after`,
-- `lua_kib_before`, `lua_kib_after`, `seconds` (one `name value` a line);
-- exits with status 1 on the first failed call.

local arg, assert, collectgarbage, tonumber, tostring = arg, assert, collectgarbage, tonumber, tostring
local io, os, string = io, os, string

local base, key = arg[1], arg[2]
local n, warmup = tonumber(arg[3]), tonumber(arg[4])
if not (base and key and n and warmup) then
  io.stderr:write("usage: soak.lua BASE_URL KEY N WARMUP\n")
  os.exit(2)
end

local cachectl = require "cachectl"
local gettime = require("socket").gettime

local function read_file(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("a")
  f:close()
  return s
end

local pid = assert(read_file("/proc/self/stat"):match("^(%d+)"))

local function rss_kib()
  return assert(tonumber(read_file("/proc/self/status"):match("VmRSS:%s*(%d+)")))
end

-- Listed from outside by ls, written to a file: a pipe (io.popen) would
-- itself appear in the listing, once or twice depending on timing.
local listing = os.tmpname()
local function open_fds()
  assert(os.execute("ls /proc/" .. pid .. "/fd > " .. listing))
  local count = 0
  for _ in io.lines(listing) do count = count + 1 end
  return count
end

local ml = cachectl.modelslab.new{ key = key, base_url = base }

local function run(count)
  for i = 1, count do
    local res, err = ml:clear_cache()
    if not res then
      io.stderr:write(string.format("soak.lua: call %d failed: %s\n", i, tostring(err)))
      os.exit(1)
    end
  end
end

local function snapshot()
  collectgarbage("collect")
  collectgarbage("collect")
  return rss_kib(), open_fds(), collectgarbage("count")
end

run(warmup)
local rss0, fds0, lua0 = snapshot()
local t0 = gettime()
run(n)
local t = gettime() - t0
local rss1, fds1, lua1 = snapshot()
ml:close()
os.remove(listing)

io.write(string.format("rss_before_kib %d\nrss_after_kib %d\nfds_before %d\nfds_after %d\n"
  .. "lua_kib_before %.1f\nlua_kib_after %.1f\nseconds %.3f\n", rss0, rss1, fds0, fds1, lua0, lua1, t))
