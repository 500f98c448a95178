--- Test harness: Lua scripts run in a child process of their own (a fresh
-- interpreter of the same ABI as the spec, with the spec's package paths),
-- optionally under a descriptor limit (`ulimit -n`), and the fork helper
-- (support/fork_helper.c, compiled here for that ABI). No assertions here.
local io, os, string = io, os, string
local assert, error, package, type = assert, error, package, type
local rawget, _G = rawget, _G

local helpers = require "support.helpers"
local sh_quote = helpers.sh_quote

local M = {}

--- The interpreter running this spec ("lua5.4", "luajit", ...) and the
-- compiler flags for its headers.
function M.interpreter()
  if rawget(_G, "jit") then return "luajit", "$(pkg-config --cflags luajit)" end
  local v = _VERSION:match("(%d+%.%d+)")
  return "lua" .. v, "-I/usr/include/lua" .. v
end

--- Runs `code` in a new interpreter with this process's package paths;
-- `o.ulimit` sets `ulimit -n` first, `o.cpath` adds a C path. Returns
-- its output (stdout and stderr) and whether it exited 0.
function M.run(code, o)
  o = o or {}
  local lua = M.interpreter()
  local file = os.tmpname()
  local f = assert(io.open(file, "w"))
  f:write(string.format("package.path = %q\npackage.cpath = %q\n", package.path,
    (o.cpath and o.cpath .. ";" or "") .. package.cpath))
  f:write(code)
  f:close()
  local cmd = (o.ulimit and ("ulimit -n " .. o.ulimit .. " && ") or "") .. "exec " .. lua .. " " .. sh_quote(file)
  local p = assert(io.popen("sh -c " .. sh_quote(cmd) .. " 2>&1"))
  local out = p:read("*a")
  local ok, _, status = p:close()
  os.remove(file)
  return out, (ok == true or ok == 0) and (status == nil or status == 0)
end

--- Compiles support/fork_helper.c for this ABI into a temp folder; returns
-- the C path to give `run` (`require "fork_helper"`) and a function that
-- removes the folder.
function M.fork_helper(spec_dir)
  local p = assert(io.popen("mktemp -d /tmp/cachectl-fork.XXXXXX"))
  local dir = p:read("*l")
  p:close()
  local _, cflags = M.interpreter()
  -- without the ASan runtime preloaded (make spec-asan): the compiler is not built for it
  local cmd = "env -u LD_PRELOAD cc -std=c99 -shared -fPIC -O1 " .. cflags .. " -o "
    .. sh_quote(dir .. "/fork_helper.so") .. " " .. sh_quote(spec_dir .. "/support/fork_helper.c") .. " 2>&1"
  local c = assert(io.popen(cmd))
  local out = c:read("*a")
  local ok = c:close()
  if not (ok == true or ok == 0) then error("cannot compile the fork helper:\n" .. out, 2) end
  return dir .. "/?.so", function() helpers.succeeds("rm -rf " .. sh_quote(dir)) end
end

--- The folder of the spec files, from a spec file's `debug.getinfo(1, "S").source`.
function M.spec_dir(source)
  local dir = type(source) == "string" and source:sub(2):match("^(.*)/[^/]*$") or "spec"
  return dir ~= "" and dir or "."
end

return M
