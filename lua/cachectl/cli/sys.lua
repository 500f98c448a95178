--- The outside world of the `cachectl` command: clock, terminal, stdin,
-- file modes and the key file, each replaceable by `cli.main`'s `sys`
-- argument (which is how the specs run the command in process). Loaded
-- only when one of them is needed (a plain call needs none).
--
-- Portable Lua (5.1 to 5.4, LuaJIT), POSIX shell utilities only.
-- @module cachectl.cli.sys

local pcall, require, type, tostring = pcall, require, type, tostring
local io, os, string = io, os, string
local format = string.format

local escape = require("cachectl.cli.output").escape

local M = {}

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

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

--- The first line of --key-file, or of stdin for "-" (a pipe, not a
-- terminal); nil and a usage message when there is none. The path is never
-- echoed in an error about opening it: someone may have given the key
-- itself as the path.
function M.key_file(ctx, path)
  if path == "-" then
    if ctx.sys.isatty(0) then
      return nil, "--key-file -: standard input is a terminal; pipe the credential in instead"
    end
    ctx.stdin_used = true
    local line = ctx.sys.read_line()
    line = line and trim(line)
    if not line or line == "" then return nil, "--key-file -: standard input holds no credential" end
    return line
  end
  local f, oerr = io.open(path, "rb")
  if not f then
    local reason = tostring(oerr)
    reason = reason:sub(1, #path + 2) == path .. ": " and reason:sub(#path + 3) or "cannot open it"
    return nil, "cannot read the key file given to --key-file: " .. reason
  end
  local line = f:read("*l")
  f:close()
  line = line and trim(line)
  if not line or line == "" then
    return nil, "the key file given to --key-file is empty: put the credential on its first line"
  end
  local mode = ctx.sys.file_mode(path)
  if mode and #mode >= 3 then
    local g, o = mode:sub(-2, -2), mode:sub(-1)
    if g:match("[4-7]") or o:match("[4-7]") then
      ctx.note(format("cachectl: warning: the key file %s is readable by group or others (mode %s); "
        .. "run: chmod 600 %s\n", escape(path), mode, escape(M.shell_quote(path))))
    end
  end
  return line
end

return M
