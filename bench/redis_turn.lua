--- The cost of one Redis turn of cachectl.fleet (rate_limit.redis): latency
-- per call against a local redis-server, client instructions per call
-- (callgrind), the server's own time per turn, and the turns/s of 4
-- processes sharing one limit next to one process alone.
--
-- Usage, from the repository root:   lua5.4 bench/redis_turn.lua [N]
-- (N turns per measurement, default 20000). Prints a Markdown report.
-- BENCH_CPU (default 1) is the CPU the latency and callgrind runs and the
-- server are pinned to, as in the other benchmarks (see bench/README.md).
local arg, io, math, os, string, table = arg, io, math, os, string, table
local assert, pcall, print, require, tonumber, tostring, type =
  assert, pcall, print, require, tonumber, tostring, type
local VERSION = _VERSION

local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
package.path = here .. "/../lua/?.lua;" .. here .. "/../spec/?.lua;" .. package.path

local redis_server = require "support.redis_server"
assert(redis_server.use_redis_lua(), "redis-lua (Debian package lua-redis) is needed")
local socket = require "socket"

local CPU = os.getenv("BENCH_CPU") or "1"
local LUA = "lua5.4"
local SELF = arg[0]
-- A limit that never makes a turn wait, with a list as long as Omni's
-- 60 per minute keeps: 60 starts per millisecond.
local N_LIMIT, PER = 60, 0.001

local function parts(digest) return { service = "omni", digest = digest } end

local function sh(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  assert(p:close(), "failed: " .. cmd .. "\n" .. out)
  return out
end

local function median(t)
  table.sort(t)
  return t[(#t + 1) // 2]
end

-- ------------------------------------------------------------ child modes

-- `loop URL N turns|none DIGEST`: connects and warms up (script loaded),
-- then N turns, or nothing: the difference is N turns.
local function loop(url, n, mode, digest)
  local fleet = require "cachectl.fleet"
  for _ = 1, 50 do assert(fleet.take(url, parts(digest), N_LIMIT, PER, 10)) end
  if mode == "turns" then
    for _ = 1, n do assert(fleet.take(url, parts(digest), N_LIMIT, PER, 10)) end
  end
end

-- `latency URL N DIGEST`: µs per turn and per PING (same connection
-- library), medians of 5 rounds.
local function latency(url, n, digest)
  local fleet = require "cachectl.fleet"
  local client = require("redis").connect("127.0.0.1", tonumber(url:match(":(%d+)$")))
  for _ = 1, 200 do
    assert(fleet.take(url, parts(digest), N_LIMIT, PER, 10))
    client:ping()
  end
  local turns, pings = {}, {}
  for round = 1, 5 do
    local t0 = socket.gettime()
    for _ = 1, n do assert(fleet.take(url, parts(digest), N_LIMIT, PER, 10)) end
    local t1 = socket.gettime()
    for _ = 1, n do client:ping() end
    local t2 = socket.gettime()
    turns[round], pings[round] = (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6
  end
  print(string.format("%.1f %.1f", median(turns), median(pings)))
end

-- `many URL N DIGEST START`: N turns from START (epoch seconds) on; prints
-- the seconds they took.
local function many(url, n, digest, start)
  local fleet = require "cachectl.fleet"
  assert(fleet.take(url, parts(digest), N_LIMIT, PER, 10))
  while socket.gettime() < start do socket.sleep(0.002) end
  local t0 = socket.gettime()
  for _ = 1, n do assert(fleet.take(url, parts(digest), N_LIMIT, PER, 10)) end
  print(string.format("%.6f %.6f", t0, socket.gettime()))
end

-- --------------------------------------------------------------- the run

local function callgrind_ir(url, n, mode, digest)
  local out = os.tmpname()
  capture(string.format("taskset -c %s valgrind --tool=callgrind --callgrind-out-file=%s %s %s loop %s %d %s %s 2>&1",
    CPU, sh(out), LUA, sh(SELF), sh(url), n, mode, digest))
  local f = assert(io.open(out))
  local text = f:read("*a")
  f:close()
  os.remove(out)
  return assert(tonumber(text:match("\nsummary: (%d+)") or text:match("\ntotals: (%d+)")))
end

-- Turns/s of `procs` processes taking `n` turns each at once on one key.
local function throughput(url, procs, n, digest)
  local start = socket.gettime() + 1
  local cmds = {}
  for i = 1, procs do
    cmds[i] = string.format("%s %s many %s %d %s %.3f &", LUA, sh(SELF), sh(url), n, digest, start)
  end
  local out = capture("{ " .. table.concat(cmds, " ") .. " wait; }")
  local first, last = math.huge, 0
  for a, b in out:gmatch("([%d.]+) ([%d.]+)") do
    first, last = math.min(first, tonumber(a)), math.max(last, tonumber(b))
  end
  return procs * n / (last - first)
end

local function server_usec_per_turn(srv)
  local c = srv:client()
  local info = c:info("commandstats")
  c:quit()
  local stats = info.commandstats or info
  local line = stats.cmdstat_evalsha or ""
  if type(line) == "table" then return tonumber(line.usec_per_call) end
  return tonumber(tostring(line):match("usec_per_call=([%d.]+)"))
end

local function run(n)
  local srv = redis_server.start()
  assert(os.execute("taskset -p -c " .. CPU .. " " .. srv.pid .. " >/dev/null"))
  local url = srv:url()
  local ok, err = pcall(function()
    local admin = srv:client()
    admin:config("RESETSTAT")
    admin:quit()
    local turn_us, ping_us = capture(string.format("taskset -c %s %s %s latency %s %d %s",
      CPU, LUA, sh(SELF), sh(url), n, ("a1"):rep(32))):match("([%d.]+) ([%d.]+)")
    local server_us = server_usec_per_turn(srv)
    local ir_turns = callgrind_ir(url, n, "turns", ("b2"):rep(32))
    local ir_none = callgrind_ir(url, n, "none", ("b3"):rep(32))
    local one = throughput(url, 1, n, ("c4"):rep(32))
    local four = throughput(url, 4, n, ("d5"):rep(32))
    print(string.format([[
## Redis turn (bench/redis_turn.lua, N = %d, redis-server %s, %s)

| measure | figure |
|---|---|
| latency per turn (EVALSHA round trip, median of 5 rounds) | %s µs |
| latency per PING, same library (the round-trip floor) | %s µs |
| the turn script's own time in Redis (INFO commandstats) | %s µs |
| client instructions per turn (callgrind, (Ir(N turns) − Ir(none)) / N) | %.0f |
| turns/s, 1 process | %.0f |
| turns/s, 4 processes sharing one limit | %.0f |
]], n, capture("redis-server --version"):match("v=([%d.]+)") or "?", VERSION,
      turn_us, ping_us, tostring(server_us), (ir_turns - ir_none) / n, one, four))
  end)
  srv:stop()
  assert(ok, err)
end

local mode = arg[1]
if mode == "loop" then
  loop(arg[2], tonumber(arg[3]), arg[4], arg[5])
elseif mode == "latency" then
  latency(arg[2], tonumber(arg[3]), arg[4])
elseif mode == "many" then
  many(arg[2], tonumber(arg[3]), arg[4], tonumber(arg[5]))
else
  run(tonumber(mode) or 20000)
end
