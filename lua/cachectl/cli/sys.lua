--- The outside world of the `cachectl` command: clock, terminal, file modes,
-- output streams and the environment, each replaceable by `cli.main`'s `sys`
-- and `env` arguments (which is how the specs run the command in process).
--
-- Portable Lua (5.1 to 5.4, LuaJIT), POSIX shell utilities only.
-- @module cachectl.cli.sys

local error, pcall, require, type, tostring = error, pcall, require, type, tostring
local io, os, string = io, os, string
local format = string.format

local M = {}

--- `s` quoted for sh.
function M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local gettime

--- Seconds, as precisely as LuaSocket's C part gives them when it is
-- installed (an optional library: else whole seconds).
function M.clock()
  if gettime == nil then
    local ok, socket = pcall(require, "socket.core")
    gettime = ok and type(socket) == "table" and socket.gettime or os.time
  end
  return gettime()
end

-- Whether a shell command exited 0, whatever the interpreter: Lua 5.1 and
-- LuaJIT (without 5.2 compatibility) return system()'s status as a number,
-- Lua 5.2+ return true or nil plus "exit", code.
local function succeeds(cmd)
  local ok = os.execute(cmd)
  if type(ok) == "number" then return ok == 0 end
  return ok == true
end

--- Whether stdout (`fd` 1, the default) or stdin (0) is a terminal.
-- Plain Lua cannot ask isatty(3), and the libraries that can (luaposix,
-- luasystem >= 0.3, lua-term) are not dependencies of the rock; the POSIX
-- `test -t` utility can, in a child that inherits our descriptors. It is
-- only run when the answer matters (a batch printed in the human format
-- with $TERM set, a confirmation, a key read from stdin).
function M.isatty(fd)
  return succeeds("test -t " .. (fd == 0 and "0" or "1"))
end

--- A line of standard input without its newline, or nil at its end (or
-- when it is closed).
function M.read_line()
  local ok, line = pcall(io.read, "*l")
  if ok then return line end
  return nil
end

-- "rwxr-x---" -> "750": x, s and t count as executable, S and T do not.
local function octal(perms)
  local digits = ""
  for i = 1, 9, 3 do
    local r, w, x = perms:sub(i, i), perms:sub(i + 1, i + 1), perms:sub(i + 2, i + 2)
    local n = (r == "r" and 4 or 0) + (w == "w" and 2 or 0) + (x:match("[xst]") and 1 or 0)
    digits = digits .. n
  end
  return digits
end

--- The permission bits of a file as an octal string ("600"), or nil.
-- POSIX fixes the first field of `ls -l` (the file type, then nine permission
-- characters, maybe an alternate-access mark), so `ls -ld` reads the mode on
-- any system, where `stat`'s flags differ between GNU (-c) and BSD (-f).
function M.file_mode(path)
  local p = io.popen("ls -ld -- " .. M.shell_quote(path) .. " 2>/dev/null", "r")
  if not p then return nil end
  local out = p:read("*a") or ""
  p:close()
  local perms = out:match("^.([r-][w-][xsS-][r-][w-][xsS-][r-][w-][xtT-])")
  return perms and octal(perms) or nil
end

--- A writer: a function, or anything with a `write` method (a file).
function M.writer(w, default)
  if w == nil then w = default end
  if type(w) == "function" then return w end
  return function(s) w:write(s) end
end

--- A `getenv` function from `cli.main`'s `env` argument.
function M.getenv_of(env)
  if env == nil then return os.getenv end
  if type(env) == "function" then return env end
  if type(env) == "table" then return function(name) return env[name] end end
  error(format("bad argument #2 to 'cachectl.cli.main' (function or table expected, got %s)", type(env)), 3)
end

return M
