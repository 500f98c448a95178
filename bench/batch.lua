--- One run of the batch benchmark: a fresh cachectl Omni client sends N
-- reset_cache requests through reset_caches at concurrency C, against a
-- server that holds each answer (the mock, with `hold=` in the token).
--
--    lua5.4 bench/batch.lua BASE_URL TOKEN N C
--
-- Prints `seconds <x>` (the reset_caches call alone) and exits with
-- status 1 if any request failed.

local arg, tonumber, tostring = arg, tonumber, tostring
local io, os, string = io, os, string

local base, token = arg[1], arg[2]
local n, c = tonumber(arg[3]), tonumber(arg[4])
if not (base and token and n and c) then
  io.stderr:write("usage: batch.lua BASE_URL TOKEN N C\n")
  os.exit(2)
end

local cachectl = require "cachectl"
local gettime = require("socket").gettime

local MODEL = "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b"
local policies = {}
for i = 1, n do policies[i] = "policy-" .. i end

local omni = cachectl.omni.new{ token = token, base_url = base, rate_limit = false, timeout = 120 }
local t0 = gettime()
local results = omni:reset_caches(MODEL, policies, { concurrency = c })
local t = gettime() - t0
omni:close()

local failed = 0
for i = 1, n do
  local r = results[i]
  if not (r and r.result and r.result.success) then
    failed = failed + 1
    if failed <= 3 then
      io.stderr:write(string.format("batch.lua: request %d failed: %s\n", i, tostring(r and r.err)))
    end
  end
end
if #results ~= n or failed > 0 then
  io.stderr:write(string.format("batch.lua: %d of %d requests failed\n", failed, n))
  os.exit(1)
end
io.write(string.format("seconds %.4f\n", t))
