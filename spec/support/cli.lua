--- Running the `cachectl` command in the specs: in process through
-- `cli.main` with captured output, or as a real `lua5.4 bin/cachectl`
-- process whose environment goes through a private file (so that no
-- process ever has a credential as an argument). No assertions here but
-- one: no credential given in `env` may appear in either stream.
local assert, ipairs, pairs, tostring, type = assert, ipairs, pairs, tostring, type
local io, os, table = io, os, table

local helpers = require "support.helpers"
local cli = require "cachectl.cli"

local M = {}

--- The credential variables a run may set (checked in its output).
M.SECRET_VARS = { "MODELSLAB_API_KEY", "OMNI_API_KEY" }

--- A recognisable credential: `prefix`-SECRET + 20 hex digits, then the
-- mock's directives if any (space-separated, as the mock reads them).
function M.secret(prefix, directives)
  return (prefix or "k") .. "-SECRET" .. helpers.hex(20) .. (directives and (" " .. directives) or "")
end

-- Raises when a credential of `env` (or a listed extra secret) is in `text`.
local function assert_clean(text, env, extra)
  for _, name in ipairs(M.SECRET_VARS) do
    local s = env and env[name]
    if s and #s >= 4 then assert(not text:find(s, 1, true), name .. " is in the output:\n" .. text) end
  end
  for _, s in ipairs(extra or {}) do
    assert(not text:find(s, 1, true), "a secret is in the output:\n" .. text)
  end
end

--- Runs cli.main in process; returns status, stdout, stderr.
-- @param argv the arguments
-- @param env a table of variables (default none)
-- @param sys optional `cli.main` sys table (stdout/stderr are replaced)
-- @param secrets optional list of other strings that must not be printed
function M.run(argv, env, sys, secrets)
  local out, err = {}, {}
  sys = sys or {}
  sys.stdout = function(s) out[#out + 1] = s end
  sys.stderr = function(s) err[#err + 1] = s end
  local status = cli.main(argv, env or {}, sys)
  local o, e = table.concat(out), table.concat(err)
  assert_clean(o .. e, env, secrets)
  return status, o, e
end

--- The repository root (the specs run from it).
function M.root()
  local p = assert(io.popen("pwd"))
  local d = p:read("*l")
  p:close()
  return d
end

--- A runner of the real command as a process; `tmp` is a scratch path
-- (its ".env", ".out", ".err" siblings are used and removed by `clean`).
function M.process(tmp)
  local root = M.root()
  local self = {}

  --- The shell command that runs bin/cachectl with `env` (a table).
  function self.command(args, env)
    local lines = {
      "export LUA_PATH_5_4=" .. helpers.sh_quote(root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;;"),
      "export LUA_CPATH_5_4=" .. helpers.sh_quote(root .. "/build/5.4/?.so;;"),
      "unset MODELSLAB_API_KEY OMNI_API_KEY MODELSLAB_BASE_URL OMNI_BASE_URL CACHECTL_REDIS_URL",
    }
    for k, v in pairs(env or {}) do lines[#lines + 1] = "export " .. k .. "=" .. helpers.sh_quote(v) end
    helpers.write_file(tmp .. ".env", table.concat(lines, "\n") .. "\n", "600")
    local quoted = {}
    for i, a in ipairs(args) do quoted[i] = helpers.sh_quote(a) end
    return ". " .. helpers.sh_quote(tmp .. ".env") .. " && exec lua5.4 " .. helpers.sh_quote(root .. "/bin/cachectl")
      .. " " .. table.concat(quoted, " ")
  end

  --- Runs it to the end; returns status, stdout, stderr.
  function self.exec(args, env)
    local ok, how, code = os.execute(self.command(args, env) .. " >" .. helpers.sh_quote(tmp .. ".out")
      .. " 2>" .. helpers.sh_quote(tmp .. ".err"))
    if type(ok) == "number" then code = ok / 256 elseif how ~= "exit" then code = -1 end
    if ok == true then code = 0 end
    local o, e = helpers.read_file(tmp .. ".out") or "", helpers.read_file(tmp .. ".err") or ""
    assert_clean(o .. e, env)
    return code, o, e
  end

  --- Removes the scratch files.
  function self.clean()
    for _, suffix in ipairs{ "", ".env", ".out", ".err" } do os.remove(tmp .. suffix) end
  end

  return self
end

--- The lines of `text`, without their newlines.
function M.lines(text)
  local out = {}
  for line in tostring(text):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

return M
