--- The Lua clients of the sequential benchmark: N ModelsLab clear_cache
-- calls, one after another, each answer decoded and checked.
--
--    lua5.4 bench/seq.lua CLIENT BASE_URL KEY N [WARMUP]
--
-- CLIENT is one of `core` (cachectl.core directly), `client` (a cachectl
-- client), `socket_http` (LuaSocket's socket.http + lua-cjson) and
-- `curl_popen` (the curl command through io.popen, per call, + lua-cjson).
-- BASE_URL is the service root (`http://127.0.0.1:PORT/api`). Prints
-- `calls_per_s <x>` and `cpu_us_per_call <y>` (this process's CPU time,
-- user and system, per call: os.clock, so not curl_popen's children) for
-- the N timed calls that follow WARMUP untimed ones
-- (which open the connection and fill the caches). Exits with status 1 on
-- the first failed call.

local arg, assert, error, tonumber, tostring = arg, assert, error, tonumber, tostring
local io, os, string = io, os, string

local name, base, key = arg[1], arg[2], arg[3]
local n, warmup = tonumber(arg[4]), tonumber(arg[5] or "20")
if not (name and base and key and n and warmup) then
  io.stderr:write("usage: seq.lua CLIENT BASE_URL KEY N [WARMUP]\n")
  os.exit(2)
end

local url = base .. "/v5/clear_cache"
local body = string.format('{"key":"%s"}', key)

-- Each maker returns a function that does one call and returns the decoded
-- answer, or nil and a message.
local makers = {}

function makers.core()
  local core = require "cachectl.core"
  local clear_cache = core.modelslab.clear_cache
  return function()
    local res, err = clear_cache{ key = key, base_url = base }
    return res, err and tostring(err)
  end
end

function makers.client()
  local cachectl = require "cachectl"
  local ml = cachectl.modelslab.new{ key = key, base_url = base }
  return function()
    local res, err = ml:clear_cache()
    return res, err and tostring(err)
  end
end

function makers.socket_http()
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local decode = require("cjson").decode
  local concat = table.concat
  local headers = {
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json",
    ["User-Agent"] = "bench-socket-http",
    ["Content-Length"] = tostring(#body),
  }
  return function()
    local chunks = {}
    local ok, status = http.request{
      url = url, method = "POST", headers = headers,
      source = ltn12.source.string(body), sink = ltn12.sink.table(chunks),
    }
    if not ok then return nil, tostring(status) end
    if status ~= 200 then return nil, "HTTP " .. tostring(status) end
    return decode(concat(chunks))
  end
end

function makers.curl_popen()
  local decode = require("cjson").decode
  local cmd = string.format("curl -sS --fail -X POST -H 'Content-Type: application/json' "
    .. "-H 'Accept: application/json' -A bench-curl -d '%s' '%s'", body, url)
  return function()
    local p = assert(io.popen(cmd, "r"))
    local text = p:read("a")
    local ok = p:close()
    if not ok then return nil, "curl failed" end
    return decode(text)
  end
end

local maker = makers[name]
if not maker then error("seq.lua: unknown client " .. tostring(name)) end
local call = maker()

local function run(count)
  for i = 1, count do
    local res, err = call()
    if not res or res.status ~= "success" then
      io.stderr:write(string.format("seq.lua %s: call %d failed: %s\n", name, i, tostring(err)))
      os.exit(1)
    end
  end
end

local gettime, clock = require("socket").gettime, os.clock
run(warmup)
local t0, c0 = gettime(), clock()
run(n)
local t, c = gettime() - t0, clock() - c0
io.write(string.format("calls_per_s %.1f\ncpu_us_per_call %.3f\n", n / t, c / n * 1e6))
