--- The cachectl benchmark: starts a local nginx and the cachectl mock, runs
-- every measurement in its own process, pinned with taskset to one CPU
-- (servers too), and writes a Markdown report. See bench/README.md.
--
--    lua5.4 bench/run.lua [--smoke] [--compare] [--out FILE]
--
-- `--smoke` runs the same steps with a few calls each. `--compare` runs only
-- the comparison with plain libcurl (sections 1 and 2, for cachectl.core, a
-- client and the C program with and without cachectl's request shape) and
-- writes a short report (default bench/out/compare.md). Any failed client,
-- server or measurement ends the run with an error (exit status 1).
-- Environment: BENCH_CPU (the CPU to pin to, default 1).

local arg, assert, error, ipairs, pairs, pcall, tonumber, tostring =
  arg, assert, error, ipairs, pairs, pcall, tonumber, tostring
local io, math, os, string, table = io, math, os, string, table

local socket = require "socket"

local gettime, sleep = socket.gettime, socket.sleep
local format, concat = string.format, table.concat

-- ---- command line, paths --------------------------------------------

local SMOKE, COMPARE, OUT = false, false, nil
do
  local i = 1
  while arg[i] do
    if arg[i] == "--smoke" then SMOKE = true
    elseif arg[i] == "--compare" then COMPARE = true
    elseif arg[i] == "--out" and arg[i + 1] then OUT = arg[i + 1]; i = i + 1
    else
      io.stderr:write("usage: lua5.4 bench/run.lua [--smoke] [--compare] [--out FILE]\n")
      os.exit(2)
    end
    i = i + 1
  end
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a shell command; returns its stdout, or raises with `what` on a
-- non-zero exit (stderr goes to ours).
local function capture(cmd, what)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  if not ok then error(format("%s failed (exit %s): %s", what or "command", tostring(code), cmd), 0) end
  return out
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local BENCH = trim(capture("cd " .. shell_quote((arg[0]:match("^(.*)/[^/]*$") or ".")) .. " && pwd"))
local ROOT = BENCH:match("^(.*)/[^/]*$")
local OUT_DIR = BENCH .. "/out"
OUT = OUT or (COMPARE and OUT_DIR .. "/compare.md" or BENCH .. "/RESULTS.md")
local CPU = os.getenv("BENCH_CPU") or "1"
local PIN = "taskset -c " .. CPU .. " "
local LUA = "lua5.4"
local PYTHON = "/usr/bin/python3"

-- Every child sees this repository's modules and never a proxy.
local ENV = format("env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy "
  .. "no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost LUA_PATH_5_4=%s LUA_CPATH_5_4=%s ",
  shell_quote(ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;;"), shell_quote(ROOT .. "/build/5.4/?.so;;"))

local KEY = "bench-key-0123456789"

-- The counts: the full run, or a few calls each for the smoke run.
local C = SMOKE and {
  rounds = 1, seconds = nil, fixed_n = 5, warmup = 2,
  cg_small = 5, cg_large = 15,
  batch_n = 16, batch_n1 = 2, batch_conc = { 1, 8, 32, 128 }, batch_rounds = 1,
  soak_n = 200, soak_warmup = 20, soak_mock_n = 100,
  require_runs = 3,
} or {
  rounds = 15, seconds = 1, fixed_n = nil, warmup = 20,
  cg_small = 200, cg_large = 1200,
  batch_n = 1000, batch_n1 = 100, batch_conc = { 1, 8, 32, 128 }, batch_rounds = 3,
  soak_n = 100000, soak_warmup = 1000, soak_mock_n = 100000,
  require_runs = 20,
}

local function log(...)
  io.stderr:write(format(...), "\n")
  io.stderr:flush()
end

local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end

local function kv(text)
  local t = {}
  for k, v in text:gmatch("([%w_]+)%s+([%d%.%-]+)") do t[k] = tonumber(v) end
  return t
end

-- ---- processes, ports ------------------------------------------------

local function tmpdir()
  return trim(capture("mktemp -d /tmp/cachectl-bench.XXXXXX", "mktemp"))
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function answers(port)
  local c = socket.tcp()
  c:settimeout(0.2)
  local ok = c:connect("127.0.0.1", port)
  c:close()
  return ok ~= nil
end

local function alive(pid)
  return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

-- ---- nginx ------------------------------------------------------------

local OMNI_BODY = '{"cache_reset":{"id":"0b6f4f7e-8c3a-4d2b-9e1f-5a6c7d8e9f01",'
  .. '"model_id":"6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b","policy_name":"daily",'
  .. '"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z",'
  .. '"reset_at":"2026-01-01T00:00:00Z"},"success":true}'

local function nginx_conf(dir, port)
  return concat({
    "daemon off;",
    "master_process on;",
    "worker_processes 1;",
    "pid " .. dir .. "/nginx.pid;",
    "error_log " .. dir .. "/error.log warn;",
    "events { worker_connections 1024; }",
    "http {",
    "  access_log off;",
    "  default_type application/json;",
    "  keepalive_timeout 75s;",
    "  keepalive_requests 10000000;",
    "  client_body_temp_path " .. dir .. "/body;",
    "  proxy_temp_path " .. dir .. "/proxy;",
    "  fastcgi_temp_path " .. dir .. "/fastcgi;",
    "  uwsgi_temp_path " .. dir .. "/uwsgi;",
    "  scgi_temp_path " .. dir .. "/scgi;",
    "  server {",
    "    listen 127.0.0.1:" .. port .. ";",
    "    location = /api/v5/clear_cache {",
    "      if ($request_method != POST) { return 405; }",
    [[      return 200 '{"status":"success","message":"Cache cleared"}';]],
    "    }",
    "    location ~ ^/api/v1/models/[^/]+/cache_reset/[^/]+$ {",
    "      if ($request_method != POST) { return 405; }",
    "      return 200 '" .. OMNI_BODY .. "';",
    "    }",
    [[    location / { return 404 '{"error":"404","message":"Not found"}'; }]],
    "  }",
    "}",
    "",
  }, "\n")
end

-- Starts nginx (in the foreground, pinned) on a free port; returns a handle
-- with `port`, `base` (the API root) and `pid`.
local function nginx_start()
  local dir = tmpdir()
  for _ = 1, 5 do
    local port = free_port()
    local f = assert(io.open(dir .. "/nginx.conf", "w"))
    f:write(nginx_conf(dir, port))
    f:close()
    local cmd = "echo $$; exec " .. PIN .. "nginx -p " .. shell_quote(dir)
      .. " -c " .. shell_quote(dir .. "/nginx.conf") .. " -e " .. shell_quote(dir .. "/error.log") .. " </dev/null"
    local proc = assert(io.popen(cmd, "r"))
    local pid = assert(tonumber(proc:read("l")), "nginx: no pid")
    local deadline = gettime() + 5
    while alive(pid) and not answers(port) and gettime() < deadline do sleep(0.02) end
    if alive(pid) and answers(port) then
      return { pid = pid, proc = proc, port = port, dir = dir, base = "http://127.0.0.1:" .. port .. "/api" }
    end
    os.execute("kill " .. pid .. " 2>/dev/null")
    proc:close()
    log("nginx did not start on port %d; error.log:\n%s", port, capture("cat " .. shell_quote(dir .. "/error.log")))
  end
  error("nginx: could not start", 0)
end

local function nginx_stop(h)
  if not h or h.stopped then return end
  h.stopped = true
  os.execute("kill -TERM " .. h.pid .. " 2>/dev/null")
  h.proc:close()
  os.execute("rm -rf " .. shell_quote(h.dir))
end

-- ---- the cachectl mock ---------------------------------------------------

local function mock_start()
  package.path = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;" .. ROOT .. "/mock/lua/?.lua;" .. ROOT
    .. "/mock/lua/?/init.lua;" .. package.path
  local mock = require "cachectl.mock"
  local m = mock.start{ lua = PIN .. LUA }
  m.base = m.url .. "/api"
  return m
end

-- ---- 1. sequential keep-alive calls ------------------------------------

local CLIENTS = {
  { id = "core", label = "cachectl.core (`core.modelslab.clear_cache`)" },
  { id = "client", label = "cachectl client (`ml:clear_cache()`)" },
  { id = "raw_curl", label = "C program, one libcurl easy handle, minimal request (no JSON decoding)" },
  { id = "raw_curl_shaped", label = "C program as above with cachectl's request shape (headers, User-Agent)" },
  { id = "socket_http", label = "LuaSocket `socket.http` + lua-cjson" },
  { id = "curl_popen", label = "`curl` command per call via `io.popen` + lua-cjson" },
  { id = "requests", label = "Python `requests.Session` + `.json()`" },
}

-- The clients of the comparison with plain libcurl (--compare, callgrind).
local CMP_IDS = { core = true, client = true, raw_curl = true, raw_curl_shaped = true }
local CG_IDS = { "core", "client", "raw_curl", "raw_curl_shaped" }
if COMPARE then
  local kept = {}
  for _, c in ipairs(CLIENTS) do if CMP_IDS[c.id] then kept[#kept + 1] = c end end
  CLIENTS = kept
end

local function label(id)
  for _, c in ipairs(CLIENTS) do if c.id == id then return c.label end end
end

local RAW_CURL = OUT_DIR .. "/raw_curl"

-- The command of one sequential client (without ENV and PIN).
local function seq_cmd(id, base, n, warmup)
  if id == "raw_curl" or id == "raw_curl_shaped" then
    return format("%s %s %s %d %d %s", RAW_CURL, shell_quote(base .. "/v5/clear_cache"), KEY, n, warmup,
      id == "raw_curl" and "minimal" or "cachectl")
  elseif id == "requests" then
    return format("%s %s %s %s %d %d", PYTHON, shell_quote(BENCH .. "/seq_requests.py"), shell_quote(base), KEY,
      n, warmup)
  end
  return format("%s %s %s %s %s %d %d", LUA, shell_quote(BENCH .. "/seq.lua"), id, shell_quote(base), KEY, n,
    warmup)
end

-- One run of one client: its calls/s and its own CPU time per call (µs).
local function seq_once(id, base, n)
  local r = kv(capture(PIN .. ENV .. seq_cmd(id, base, n, C.warmup), "client " .. id))
  return assert(r.calls_per_s, "client " .. id .. ": no calls_per_s in its output"), r.cpu_us_per_call
end

local function bench_sequential(ng)
  local counts = {}
  for _, c in ipairs(CLIENTS) do
    if C.fixed_n then
      counts[c.id] = C.fixed_n
    else
      -- a short run sets the count for ~C.seconds per measurement
      local rate = seq_once(c.id, ng.base, c.id == "curl_popen" and 50 or 500)
      counts[c.id] = math.max(50, math.floor(rate * C.seconds / 10 + 0.5) * 10)
      log("  calibrate %-12s %9.0f calls/s -> %d calls", c.id, rate, counts[c.id])
    end
  end
  local rates, ratios, cpus, cpu_ratios = {}, {}, {}, {}
  for _, c in ipairs(CLIENTS) do rates[c.id], ratios[c.id], cpus[c.id], cpu_ratios[c.id] = {}, {}, {}, {} end
  for round = 1, C.rounds do
    local this, cpu = {}, {}
    -- each round starts with a different client
    for k = 0, #CLIENTS - 1 do
      local c = CLIENTS[(round - 1 + k) % #CLIENTS + 1]
      this[c.id], cpu[c.id] = seq_once(c.id, ng.base, counts[c.id])
      log("  round %d %-15s %9.0f calls/s %7.2f us CPU per call", round, c.id, this[c.id], cpu[c.id] or 0)
    end
    for _, c in ipairs(CLIENTS) do
      table.insert(rates[c.id], this[c.id])
      table.insert(ratios[c.id], this[c.id] / this.raw_curl)
      if cpu[c.id] and c.id ~= "curl_popen" then
        table.insert(cpus[c.id], cpu[c.id])
        table.insert(cpu_ratios[c.id], cpu[c.id] / cpu.raw_curl)
      end
    end
  end
  local res = {}
  for _, c in ipairs(CLIENTS) do
    res[c.id] = { n = counts[c.id], rates = rates[c.id], median = median(rates[c.id]),
      ratio = median(ratios[c.id]), cpu = median(cpus[c.id]), cpu_ratio = median(cpu_ratios[c.id]) }
  end
  return res
end

-- ---- 2. instructions per call (callgrind) ------------------------------

local function callgrind_total(file)
  local f = assert(io.open(file, "r"))
  local total
  for line in f:lines() do
    local v = line:match("^summary:%s*(%d+)") or line:match("^totals:%s*(%d+)")
    if v then total = tonumber(v) end
  end
  f:close()
  return assert(total, "no totals in " .. file)
end

local function bench_callgrind(ng, dir)
  local res = { files = {} }
  for _, id in ipairs(CG_IDS) do
    local ir = {}
    for _, n in ipairs({ C.cg_small, C.cg_large }) do
      local file = format("%s/callgrind.%s.%d.out", dir, id, n)
      capture(PIN .. ENV .. "valgrind -q --tool=callgrind --callgrind-out-file=" .. shell_quote(file) .. " "
        .. seq_cmd(id, ng.base, n, C.warmup) .. " >/dev/null", "callgrind of " .. id)
      ir[n] = callgrind_total(file)
      res.files[id .. n] = file
    end
    res[id] = { small = ir[C.cg_small], large = ir[C.cg_large],
      per_call = (ir[C.cg_large] - ir[C.cg_small]) / (C.cg_large - C.cg_small) }
    log("  %-9s %.0f instructions per call", id, res[id].per_call)
  end
  return res
end

-- Per-function instructions of one callgrind run: { ["file:function [object]"] = Ir }.
local function functions(file, inclusive)
  local out = capture(format("callgrind_annotate --auto=no --threshold=100 --inclusive=%s %s 2>/dev/null",
    inclusive and "yes" or "no", shell_quote(file)), "callgrind_annotate")
  local t = {}
  for line in out:gmatch("[^\n]+") do
    local ir, name = line:match("^%s*([%d,]+) %(%s*[%d%.]+%%%)%s+(.-)%s*$")
    if ir and name ~= "PROGRAM TOTALS" then t[name] = (t[name] or 0) + tonumber((ir:gsub(",", ""))) end
  end
  return t
end

-- Where the instructions of one call go: the per-function difference of the
-- two runs (so start-up cancels), divided by the difference in calls.
-- Returns { by_object = { [object] = Ir }, self = sorted list, incl = sorted list }.
local function profile(cg, id)
  local calls = C.cg_large - C.cg_small
  local function diff(inclusive)
    local small = functions(cg.files[id .. C.cg_small], inclusive)
    local large = functions(cg.files[id .. C.cg_large], inclusive)
    local list = {}
    for name, ir in pairs(large) do
      local per = (ir - (small[name] or 0)) / calls
      if per >= 1 then list[#list + 1] = { name = name, per_call = per } end
    end
    table.sort(list, function(x, y) return x.per_call > y.per_call end)
    return list
  end
  local self = diff(false)
  local by_object = {}
  for _, f in ipairs(self) do
    local object = f.name:match("%[([^%]]+)%]$")
    object = object and object:match("([^/]+)$") or "(no object named)"
    by_object[object] = (by_object[object] or 0) + f.per_call
  end
  return { by_object = by_object, self = self, incl = diff(true) }
end

-- ---- 3. the batch --------------------------------------------------------

local TOKEN = "bench-token hold=0.05"

local function bench_batch(m)
  local res = {}
  for _, c in ipairs(C.batch_conc) do
    local n = c == 1 and C.batch_n1 or C.batch_n
    local times = {}
    for round = 1, C.batch_rounds do
      if round > 1 and times[1] > 20 then break end
      m:reset()
      local out = capture(PIN .. format("%s%s %s %s %s %d %d", ENV, LUA, shell_quote(BENCH .. "/batch.lua"),
        shell_quote(m.base), shell_quote(TOKEN), n, c), "batch at concurrency " .. c)
      times[#times + 1] = assert(kv(out).seconds, "batch: no seconds")
    end
    local stats = m:stats()
    local ideal = math.ceil(n / c) * 0.05
    res[#res + 1] = { c = c, n = n, times = times, median = median(times), ideal = ideal,
      ratio = median(times) / ideal, connections = stats.connections }
    log("  concurrency %3d: %d requests in %.3f s (ideal %.2f s, %d connections)", c, n, median(times), ideal,
      stats.connections)
  end
  return res
end

-- ---- 4. memory and descriptors ---------------------------------------------

local function bench_soak(base, n, warmup)
  local out = capture(PIN .. format("%s%s %s %s %s %d %d", ENV, LUA, shell_quote(BENCH .. "/soak.lua"),
    shell_quote(base), KEY, n, warmup), "soak")
  local r = kv(out)
  r.n, r.warmup = n, warmup
  log("  %d calls: VmRSS %d -> %d KiB, fds %d -> %d", n, r.rss_before_kib, r.rss_after_kib, r.fds_before,
    r.fds_after)
  return r
end

-- ---- 5. time to require ------------------------------------------------

local function bench_require()
  local inside, spawn_req, spawn_empty = {}, {}, {}
  local probe = "local g = require('socket').gettime; local t = g(); require 'cachectl'; io.write(g() - t)"
  local function spawn(code)
    local t0 = gettime()
    capture(PIN .. ENV .. LUA .. " -e " .. shell_quote(code), "lua5.4 -e")
    return gettime() - t0
  end
  for _ = 1, C.require_runs do
    inside[#inside + 1] = tonumber(capture(PIN .. ENV .. LUA .. " -e " .. shell_quote(probe), "require probe"))
    spawn_req[#spawn_req + 1] = spawn("require 'cachectl'")
    spawn_empty[#spawn_empty + 1] = spawn("")
  end
  local r = { inside = median(inside), with = median(spawn_req), without = median(spawn_empty) }
  log("  require: %.2f ms inside; process %.2f ms vs %.2f ms empty", r.inside * 1e3, r.with * 1e3, r.without * 1e3)
  return r
end

-- ---- the report ----------------------------------------------------------

local function machine()
  local cpuinfo = capture("cat /proc/cpuinfo")
  local core_info = capture(ENV .. LUA .. " -e " .. shell_quote(
    "local c = require 'cachectl.core'; io.write(c.version, ' ', c.curl_version)"))
  local version, curl_version = core_info:match("^(%S+) (%S+)$")
  return {
    date = os.date("!%Y-%m-%d %H:%M UTC"),
    nproc = trim(capture("nproc")),
    cpu = cpuinfo:match("model name%s*:%s*([^\n]+)") or "?",
    kernel = trim(capture("uname -sr")),
    lua = trim(capture(LUA .. " -v")),
    curl = curl_version,
    cachectl = version,
    nginx = trim(capture("nginx -v 2>&1")):gsub("^nginx version: ", ""),
    python = not COMPARE
      and trim(capture(PYTHON .. " -c 'import requests, sys; print(sys.version.split()[0], requests.__version__)'")),
    load = trim(capture("cat /proc/loadavg")),
    commit = trim(capture("cd " .. shell_quote(ROOT) .. " && (git rev-parse --short HEAD 2>/dev/null || echo ?)"))
      .. (trim(capture("cd " .. shell_quote(ROOT) .. " && git status --porcelain -- src lua 2>/dev/null")) ~= ""
        and " + uncommitted changes in src/ or lua/" or ""),
  }
end

local function met(ok) return ok and "met" or "**not met**" end
local function num(x, d) return format("%." .. (d or 0) .. "f", x) end
local function thousands(x)
  local s = format("%.0f", x)
  local out = s:reverse():gsub("(%d%d%d)", "%1,"):reverse()
  return (out:gsub("^,", ""))
end

-- The two targets measured against the plain libcurl program (minimal request).
local function targets_vs_c(w, S, G)
  local core, client = G.core.per_call / G.raw_curl.per_call, G.client.per_call / G.raw_curl.per_call
  w("| sequential keep-alive calls/s: client ≥ 0.88 × C program | %.2f × (core: %.2f ×) | %s |",
    S.client.ratio, S.core.ratio, met(S.client.ratio >= 0.88 and S.core.ratio >= 0.88))
  w("| instructions per call ≤ 1.25 × C program | client %.2f ×, core %.2f × | %s |",
    client, core, met(client <= 1.25 and core <= 1.25))
end

local function section_sequential(w, S)
  w("## 1. Sequential keep-alive calls")
  w("")
  w("The same work for every client: `clear_cache` calls one after another against the local nginx, each")
  w("answer read and decoded (`status == \"success\"` checked), after %d untimed warm-up calls. %d round(s),",
    C.warmup, C.rounds)
  w("each round runs every client once (in a rotating order); the table gives the median calls/s and the")
  w("median of the per-round ratios to the C program (minimal request) of the same round. Client and nginx")
  w("share one CPU, so calls/s counts both; the client's own CPU time per call (user and system, read by")
  w("the client itself) is the steadier figure of what the client costs, with its median per-round ratio.")
  w("")
  w("| client | calls per run | calls/s (median) | ratio to C | client CPU µs per call | ratio to C |"
    .. " each round (calls/s) |")
  w("|---|---:|---:|---:|---:|---:|---|")
  for _, c in ipairs(CLIENTS) do
    local s = S[c.id]
    local each = {}
    for i, v in ipairs(s.rates) do each[i] = num(v) end
    w("| %s | %s | %s | %.3f | %s | %s | %s |", c.label, thousands(s.n), thousands(s.median), s.ratio,
      s.cpu and format("%.2f", s.cpu) or "—", s.cpu_ratio and format("%.3f", s.cpu_ratio) or "—",
      concat(each, ", "))
  end
  w("")
end

local function section_callgrind(w, G)
  w("## 2. Instructions per call (callgrind)")
  w("")
  w("`valgrind --tool=callgrind` on the client process alone, run with %d and %d calls (after the same",
    C.cg_small, C.cg_large)
  w("%d warm-up calls); instructions per call = (Ir(%d) − Ir(%d)) / %d, so start-up cancels.",
    C.warmup, C.cg_large, C.cg_small, C.cg_large - C.cg_small)
  w("")
  w("| client | Ir (%d calls) | Ir (%d calls) | instructions per call | ratio to C |", C.cg_small, C.cg_large)
  w("|---|---:|---:|---:|---:|")
  for _, id in ipairs(CG_IDS) do
    w("| %s | %s | %s | %s | %.2f |", label(id), thousands(G[id].small), thousands(G[id].large),
      thousands(G[id].per_call), G[id].per_call / G.raw_curl.per_call)
  end
  w("")
  w("Request-shape cost (cachectl's headers and User-Agent, sent by plain libcurl): %s instructions per call"
    .. " (the C program with it: %.2f × the minimal request).",
    thousands(G.raw_curl_shaped.per_call - G.raw_curl.per_call), G.raw_curl_shaped.per_call / G.raw_curl.per_call)
  w("")
end

-- The report of --compare: the machine, the two targets, sections 1 and 2.
local function compare_report(R)
  local L = {}
  local function w(...) L[#L + 1] = format(...) end
  local M = R.machine
  w("# cachectl against plain libcurl%s", SMOKE and " (SMOKE RUN: figures meaningless)" or "")
  w("")
  w("`bench/run.lua --compare` on %s, commit `%s`, libcurl %s, %s, load at start %s, pinned to CPU %s.",
    M.date, M.commit, M.curl, M.lua, M.load, CPU)
  w("")
  w("| target | measured | |")
  w("|---|---|---|")
  targets_vs_c(w, R.seq, R.cg)
  w("")
  section_sequential(w, R.seq)
  section_callgrind(w, R.cg)
  return concat(L, "\n")
end

local function report(R)
  local L = {}
  local function w(...) L[#L + 1] = format(...) end
  local M, S, G, B = R.machine, R.seq, R.cg, R.batch
  local batch32
  for _, b in ipairs(B) do if b.c == 32 then batch32 = b end end
  local soak = R.soak_nginx
  local growth = (soak.rss_after_kib - soak.rss_before_kib) / 1024

  w("# cachectl benchmark results%s", SMOKE and " (SMOKE RUN: tiny counts, figures meaningless)" or "")
  w("")
  w("Written by `make bench` (`bench/run.lua`) on %s, commit `%s`. How it works: [README.md](README.md).",
    M.date, M.commit)
  w("")
  w("## Machine")
  w("")
  w("| | |")
  w("|---|---|")
  w("| CPUs (nproc) | %s |", M.nproc)
  w("| CPU model | %s |", M.cpu)
  w("| kernel | %s |", M.kernel)
  w("| Lua | %s |", M.lua)
  w("| libcurl | %s |", M.curl)
  w("| cachectl | %s |", M.cachectl)
  w("| nginx | %s |", M.nginx)
  w("| Python, requests | %s |", M.python)
  w("| load average at start | %s |", M.load)
  w("| pinned to | CPU %s (`taskset -c %s`), servers and clients alike |", CPU, CPU)
  w("")
  w("## Targets")
  w("")
  w("| target | measured | |")
  w("|---|---|---|")
  targets_vs_c(w, S, G)
  local vs_socket_client = S.client.median / S.socket_http.median
  local vs_socket_core = S.core.median / S.socket_http.median
  w("| sequential keep-alive calls/s: client ≥ 3 × socket.http | %.1f × (core: %.1f ×) | %s |",
    vs_socket_client, vs_socket_core, met(vs_socket_client >= 3 and vs_socket_core >= 3))
  if batch32 then
    w("| batch of %d at concurrency 32 within 1.25 × ideal | %.2f × | %s |", batch32.n, batch32.ratio,
      met(batch32.ratio <= 1.25))
  end
  local mock_growth = (R.soak_mock.rss_after_kib - R.soak_mock.rss_before_kib) / 1024
  w("| RSS growth over %s calls < 1 MiB | %.3f MiB (against the mock, %s calls: %.3f MiB) | %s |",
    thousands(soak.n), growth, thousands(R.soak_mock.n), mock_growth, met(growth < 1 and mock_growth < 1))
  w("")
  w("A target is met only when both cachectl rows (the C module called directly and the client) meet it.")
  w("")
  section_sequential(w, S)
  w("- The C program reuses one easy handle and reads the body into a buffer; it does **not** decode the JSON,")
  w("  so it is a lower bound on the work, not the same work.")
  w("- `socket.http` opens a new connection for every call (it sends `Connection: close`); `curl` via")
  w("  `io.popen` starts a shell and a process per call. Those are what these alternatives do out of the box.")
  w("")
  section_callgrind(w, G)
  w("### Where the instructions of one call go")
  w("")
  w("Per call, from the same two runs: each function's Ir(%d) − Ir(%d), divided by %d, so start-up",
    C.cg_large, C.cg_small, C.cg_large - C.cg_small)
  w("cancels here too. Debian ships libcurl, libc's internals and the `lua5.4` interpreter without symbols")
  w("(their functions show as `???:0x...`), so they are summed by shared object first.")
  w("")
  w("| shared object (exclusive Ir per call) | cachectl.core | cachectl client | C program |")
  w("|---|---:|---:|---:|")
  local objects, seen = {}, {}
  for _, id in ipairs({ "client", "core", "raw_curl" }) do
    for o in pairs(R.prof[id].by_object) do
      if not seen[o] then seen[o] = true; objects[#objects + 1] = o end
    end
  end
  table.sort(objects, function(x, y)
    return (R.prof.client.by_object[x] or 0) > (R.prof.client.by_object[y] or 0)
  end)
  for _, o in ipairs(objects) do
    local a, b, c = R.prof.core.by_object[o] or 0, R.prof.client.by_object[o] or 0, R.prof.raw_curl.by_object[o] or 0
    if a >= 50 or b >= 50 or c >= 50 then
      w("| %s | %s | %s | %s |", o, thousands(a), thousands(b), thousands(c))
    end
  end
  w("")
  local function top(list, n, filter)
    w("```")
    w("%12s  %s", "Ir per call", "function [object]")
    local k = 0
    for _, f in ipairs(list) do
      if k >= n then break end
      if not filter or f.name:find(filter, 1, true) then
        k = k + 1
        w("%12s  %s", thousands(f.per_call), f.name:gsub("%[/[^%]]*/", "["))
      end
    end
    w("```")
  end
  w("The cachectl client's top functions by exclusive instructions per call:")
  w("")
  top(R.prof.client.self, 25)
  w("")
  w("The cachectl client's functions in `core.so` by inclusive instructions per call (static functions such")
  w("as the transfer loop are inlined by -O2 into their callers):")
  w("")
  top(R.prof.client.incl, 15, "core.so]")
  w("")
  w("libcurl's entry points by inclusive instructions per call (what each API call costs, all it calls included):")
  w("")
  w("| libcurl function | cachectl.core | cachectl client | C program |")
  w("|---|---:|---:|---:|")
  local entry, names, named = {}, {}, {}
  for _, id in ipairs({ "core", "client", "raw_curl" }) do
    entry[id] = {}
    for _, f in ipairs(R.prof[id].incl) do
      local fn = f.name:match("^%?%?%?:(curl_[%w_]+) %[[^%]]*libcurl")
      if fn then
        if not named[fn] then named[fn] = true; names[#names + 1] = fn end
        entry[id][fn] = f.per_call
      end
    end
  end
  local function weight(fn) return math.max(entry.client[fn] or 0, entry.raw_curl[fn] or 0) end
  table.sort(names, function(x, y) return weight(x) > weight(y) end)
  local function cell(v) return v and thousands(v) or "" end
  for i = 1, math.min(#names, 20) do
    local fn = names[i]
    w("| %s | %s | %s | %s |", fn, cell(entry.core[fn]), cell(entry.client[fn]), cell(entry.raw_curl[fn]))
  end
  w("")
  w("The C program's top functions by exclusive instructions per call, for comparison:")
  w("")
  top(R.prof.raw_curl.self, 15)
  w("")
  w("## 3. Batch: `omni:reset_caches` against a server that answers after 50 ms")
  w("")
  w("One fresh client per run (`rate_limit = false`), the mock server (`bin/cachectl-mock`, token with")
  w("`hold=0.05`: each answer is held 50 ms without blocking other connections). Ideal = ceil(n / c) × 50 ms.")
  w("Median of %d run(s) per concurrency (one run only when the first took over 20 s).", C.batch_rounds)
  if C.batch_n1 ~= C.batch_n then
    w("Concurrency 1 uses %d requests instead of %d (those would take at least %g s); its ideal is %d × 50 ms.",
      C.batch_n1, C.batch_n, C.batch_n * 0.05, C.batch_n1)
  end
  w("")
  w("| concurrency | requests | time (s) | ideal (s) | ratio | connections used | each run (s) |")
  w("|---:|---:|---:|---:|---:|---:|---|")
  for _, b in ipairs(B) do
    local each = {}
    for i, v in ipairs(b.times) do each[i] = num(v, 3) end
    w("| %d | %d | %.3f | %.2f | %.2f | %d | %s |", b.c, b.n, b.median, b.ideal, b.ratio, b.connections,
      concat(each, ", "))
  end
  w("")
  w("`connections used` is the mock's count of distinct connections in the last run (`/_mock/stats`).")
  w("")
  w("## 4. Memory and file descriptors over many calls (soak)")
  w("")
  w("One `cachectl` client in a fresh process; VmRSS (`/proc/self/status`) and open descriptors")
  w("(`/proc/PID/fd`) read after the warm-up and after the calls, each after a full `collectgarbage()`.")
  w("")
  w("| server | calls | warm-up | VmRSS before (KiB) | VmRSS after (KiB) | growth (KiB) |"
    .. " fds before | fds after | Lua heap before → after (KiB) | calls/s |")
  w("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
  local function soak_row(name, r)
    w("| %s | %s | %s | %d | %d | %d | %d | %d | %.0f → %.0f | %s |", name, thousands(r.n), thousands(r.warmup),
      r.rss_before_kib, r.rss_after_kib, r.rss_after_kib - r.rss_before_kib, r.fds_before, r.fds_after,
      r.lua_kib_before, r.lua_kib_after, thousands(r.n / r.seconds))
  end
  soak_row("nginx", R.soak_nginx)
  soak_row("cachectl-mock", R.soak_mock)
  w("")
  w("Descriptor counts include those inherited from the harness; what matters is that they do not grow.")
  w("")
  w("## 5. Time to `require \"cachectl\"`")
  w("")
  w("Median of %d fresh interpreters each.", C.require_runs)
  w("")
  w("| measurement | ms |")
  w("|---|---:|")
  w("| inside the process: `socket.gettime()` around `require \"cachectl\"` | %.2f |", R.req.inside * 1e3)
  w("| `lua5.4 -e 'require \"cachectl\"'`, whole process | %.2f |", R.req.with * 1e3)
  w("| `lua5.4 -e ''`, whole process | %.2f |", R.req.without * 1e3)
  w("| difference | %.2f |", (R.req.with - R.req.without) * 1e3)
  w("")
  return concat(L, "\n")
end

-- ---- main ------------------------------------------------------------------

local function main()
  local t_start = gettime()
  os.execute("mkdir -p " .. shell_quote(OUT_DIR))
  capture(format("cc -O2 -Wall -Wextra -o %s %s -lcurl", shell_quote(RAW_CURL), shell_quote(BENCH .. "/raw_curl.c")),
    "building raw_curl")
  local R, ng, m = {}, nil, nil
  local dir = tmpdir()
  local ok, err = pcall(function()
    R.machine = machine()
    ng = nginx_start()
    if COMPARE then
      log("nginx on port %d (pid %d); comparison with plain libcurl", ng.port, ng.pid)
      R.seq = bench_sequential(ng)
      R.cg = bench_callgrind(ng, dir)
      return
    end
    log("nginx on port %d (pid %d); mock starting", ng.port, ng.pid)
    m = mock_start()
    log("mock at %s (pid %d)", m.url, m.pid)
    log("1. sequential calls")
    R.seq = bench_sequential(ng)
    log("2. callgrind")
    R.cg = bench_callgrind(ng, dir)
    R.prof = {}
    for _, id in ipairs({ "core", "client", "raw_curl" }) do R.prof[id] = profile(R.cg, id) end
    log("3. batch")
    R.batch = bench_batch(m)
    log("4. soak")
    R.soak_nginx = bench_soak(ng.base, C.soak_n, C.soak_warmup)
    m:reset()
    R.soak_mock = bench_soak(m.base, C.soak_mock_n, C.soak_warmup)
    log("5. require")
    R.req = bench_require()
  end)
  if m then m:stop() end
  nginx_stop(ng)
  os.execute("rm -rf " .. shell_quote(dir))
  if not ok then
    log("bench: FAILED: %s", tostring(err))
    os.exit(1)
  end
  local text = COMPARE and compare_report(R) or report(R)
  local f = assert(io.open(OUT, "w"))
  f:write(text)
  f:close()
  log("bench: report written to %s (%.0f s)", OUT, gettime() - t_start)
end

main()
