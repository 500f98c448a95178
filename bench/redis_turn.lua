--- The cost of `rate_limit.redis`: the C core takes every request's turn in
-- Redis (hiredis, one EVALSHA of the turn script per round trip). Measured
-- in one run, against a local nginx that answers the Omni reset and a local
-- redis-server, all pinned to one CPU (BENCH_CPU, default 1):
--
-- 1. client instructions per call (callgrind, the client process alone):
--    `omni:reset_cache` with `rate_limit.redis` against the same call with
--    the same limit kept in the process, and with no limit;
-- 2. a batch of 256 (`omni:reset_caches`, concurrency 8): wall time with
--    Redis against the same batch without, median of rounds;
-- 3. latency: the time a Redis turn adds to a call, against a PING round
--    trip on the same connection (`session:redis`).
--
-- Usage, from the repository root:  lua5.4 bench/redis_turn.lua [--smoke]
-- Prints a Markdown report on stdout.
local arg, io, os, string, table = arg, io, os, string, table
local assert, ipairs, print, require, tonumber, tostring = assert, ipairs, print, require, tonumber, tostring

local here = (arg[0]:match("^(.*)/[^/]*$") or ".")
local ROOT = here .. "/.."
package.path = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;" .. ROOT .. "/spec/?.lua;" .. package.path
package.cpath = ROOT .. "/build/5.4/?.so;" .. package.cpath

local CPU = os.getenv("BENCH_CPU") or "1"
local PIN = "taskset -c " .. CPU .. " "
local TOKEN = "bench-token-0123456789"
local MODEL = "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b"
-- 60 starts per millisecond: no turn ever waits, and the list in Redis is as
-- long as Omni's 60 a minute keeps.
local REQUESTS, PER = 60, 0.001

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

local function client(base, mode, url)
  local cachectl = require "cachectl"
  local limit = mode == "redis" and { requests = REQUESTS, per = PER, redis = url }
    or mode == "window" and { requests = REQUESTS, per = PER } or false
  return cachectl.omni.new{ token = TOKEN, base_url = base, rate_limit = limit }
end

-- `calls BASE MODE URL N`: 20 warm-up calls, then N more.
local function calls(base, mode, url, n)
  local omni = client(base, mode, url)
  for _ = 1, 20 + n do assert(omni:reset_cache(MODEL, "daily")) end
end

-- `batch BASE MODE URL ROUNDS`: seconds per batch of 256, one per line.
local function batch(base, mode, url, rounds)
  local core = require "cachectl.core"
  local omni = client(base, mode, url)
  local names = {}
  for i = 1, 256 do names[i] = "p" .. i end
  assert(omni:reset_caches(MODEL, names, { concurrency = 8 })[256].result)
  for _ = 1, rounds do
    local t0 = core.monotonic()
    local items = omni:reset_caches(MODEL, names, { concurrency = 8 })
    local t = core.monotonic() - t0
    for _, it in ipairs(items) do assert(it.result, tostring(it.err)) end
    print(string.format("%.6f", t))
  end
end

-- `latency BASE URL N`: µs per call with and without Redis, and per PING.
local function latency(base, url, n)
  local core = require "cachectl.core"
  local with, without = client(base, "redis", url), client(base, "window", url)
  local s = core.session()
  local out = {}
  for _, c in ipairs{ { "redis", with }, { "window", without } } do
    for _ = 1, 20 do assert(c[2]:reset_cache(MODEL, "daily")) end
    local t0 = core.monotonic()
    for _ = 1, n do assert(c[2]:reset_cache(MODEL, "daily")) end
    out[#out + 1] = string.format("%s %.3f", c[1], (core.monotonic() - t0) / n * 1e6)
  end
  assert(s:redis(url, 5, 5, "PING"))
  local t0 = core.monotonic()
  for _ = 1, n do assert(s:redis(url, 5, 5, "PING")) end
  out[#out + 1] = string.format("ping %.3f", (core.monotonic() - t0) / n * 1e6)
  print(table.concat(out, "\n"))
end

if arg[1] == "child" then
  local mode = arg[2]
  if mode == "calls" then calls(arg[3], arg[4], arg[5], tonumber(arg[6]))
  elseif mode == "batch" then batch(arg[3], arg[4], arg[5], tonumber(arg[6]))
  else latency(arg[3], arg[4], tonumber(arg[5])) end
  return
end

-- ------------------------------------------------------------ the servers

local SMOKE = arg[1] == "--smoke"
local C = SMOKE and { cg = { 5, 15 }, batch_rounds = 1, latency_n = 50, latency_rounds = 1 }
  or { cg = { 200, 1200 }, batch_rounds = 9, latency_n = 3000, latency_rounds = 5 }

local helpers = require "support.helpers"
local redis_server = require "support.redis_server"

local OMNI_BODY = [[{"cache_reset":{"id":"0b6f4f7e-8c3a-4d2b-9e1f-5a6c7d8e9f01",]]
  .. [["model_id":"6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b","policy_name":"daily",]]
  .. [["created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",]]
  .. [["reset_at":"2026-01-01T00:00:00Z"},"success":true}]]

local function nginx_start()
  local dir = capture("mktemp -d /tmp/cachectl-bench-redis.XXXXXX"):gsub("%s+$", "")
  local port = helpers.free_port()
  local temps = {}
  for _, t in ipairs{ "client_body", "proxy", "fastcgi", "uwsgi", "scgi" } do
    temps[#temps + 1] = string.format("%s_temp_path %s/%s;", t, dir, t)
  end
  helpers.write_file(dir .. "/nginx.conf", table.concat({
    "daemon off;", "master_process off;", "pid " .. dir .. "/nginx.pid;",
    "error_log " .. dir .. "/error.log warn;", "events { worker_connections 1024; }",
    "http { access_log off; default_type application/json; keepalive_requests 10000000;",
    table.concat(temps, " "),
    "server { listen 127.0.0.1:" .. port .. ";",
    "location /api/v1/models/ { return 200 '" .. OMNI_BODY .. "'; } } }", "",
  }, "\n"))
  local proc = assert(io.popen("echo $$; exec " .. PIN .. "nginx -p " .. sh(dir) .. " -c " .. sh(dir .. "/nginx.conf")
    .. " -e " .. sh(dir .. "/error.log") .. " </dev/null"))
  local pid = assert(tonumber(proc:read("l")))
  assert(helpers.eventually(function()
    local up = helpers.succeeds("curl -s -o /dev/null -X POST http://127.0.0.1:" .. port .. "/api/v1/models/x")
    return up, up
  end, 250), "nginx did not start")
  return { pid = pid, proc = proc, dir = dir, base = "http://127.0.0.1:" .. port .. "/api" }
end

local ENV = "LUA_PATH_5_4=" .. sh(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;")
  .. " LUA_CPATH_5_4=" .. sh(ROOT .. "/build/5.4/?.so;;") .. " "
local SELF = sh(arg[0])

local function child(...)
  local args = {}
  for i, a in ipairs{ ... } do args[i] = sh(a) end
  return "lua5.4 " .. SELF .. " child " .. table.concat(args, " ")
end

local function callgrind_ir(cmd)
  local file = os.tmpname()
  capture(ENV .. PIN .. "valgrind -q --tool=callgrind --callgrind-out-file=" .. sh(file) .. " " .. cmd .. " >/dev/null")
  local total
  for line in io.lines(file) do
    local v = line:match("^summary:%s*(%d+)") or line:match("^totals:%s*(%d+)")
    if v then total = tonumber(v) end
  end
  os.remove(file)
  return assert(total, "no totals in the callgrind output")
end

local ng = nginx_start()
local srv = redis_server.start()
os.execute("taskset -pc " .. CPU .. " " .. srv.pid .. " >/dev/null")
local url = srv:url()
local ok, err = pcall(function()
  -- 1. instructions per call
  local ir = {}
  for _, mode in ipairs{ "redis", "window", "none" } do
    local a = callgrind_ir(child("calls", ng.base, mode, url, C.cg[1]))
    local b = callgrind_ir(child("calls", ng.base, mode, url, C.cg[2]))
    ir[mode] = (b - a) / (C.cg[2] - C.cg[1])
  end
  -- 2. batches of 256, alternating
  local times = { redis = {}, window = {} }
  for _ = 1, C.batch_rounds do
    for _, mode in ipairs{ "redis", "window" } do
      for line in capture(ENV .. PIN .. child("batch", ng.base, mode, url, 1)):gmatch("[^\n]+") do
        times[mode][#times[mode] + 1] = tonumber(line)
      end
    end
  end
  -- 3. latency
  local lat = { redis = {}, window = {}, ping = {} }
  for _ = 1, C.latency_rounds do
    for k, v in capture(ENV .. PIN .. child("latency", ng.base, url, C.latency_n)):gmatch("(%a+) ([%d.]+)") do
      lat[k][#lat[k] + 1] = tonumber(v)
    end
  end
  local tr, tw = median(times.redis), median(times.window)
  local lr, lw, lp = median(lat.redis), median(lat.window), median(lat.ping)
  local w = function(...) print(string.format(...)) end
  w("| measure | with `rate_limit.redis` | without (same limit in the process) | ratio | target |")
  w("|---|---:|---:|---:|---|")
  w("| client instructions per call (callgrind) | %.0f | %.0f | %.2f× | ≤ 1.3× |", ir.redis, ir.window,
    ir.redis / ir.window)
  w("| batch of 256, concurrency 8 (median of %d, s) | %.4f | %.4f | %.2f× | ≤ 1.3× |", C.batch_rounds, tr, tw,
    tr / tw)
  w("| latency per call (µs, median of %d rounds of %d) | %.1f | %.1f | +%.1f µs | |", C.latency_rounds,
    C.latency_n, lr, lw, lr - lw)
  w("")
  w("- A Redis turn adds %.1f µs to a call; a PING round trip on the same connection takes %.1f µs (%.2f×).",
    lr - lw, lp, (lr - lw) / lp)
  w("- Instructions per call with no rate limit at all: %.0f (the process window costs %.0f).", ir.none,
    ir.window - ir.none)
  w("- A Redis turn costs the client %.0f instructions (with Redis − with the process window).",
    ir.redis - ir.window)
end)
srv:stop()
os.execute("kill " .. ng.pid .. " 2>/dev/null")
ng.proc:close()
os.execute("rm -rf " .. sh(ng.dir))
assert(ok, err)
