--- The outside world of the `cachectl` command: clock, terminal, stdin,
-- file modes and the key file, each replaceable by `cli.main`'s `sys`
-- argument (which is how the specs run the command in process). Loaded
-- only when one of them is needed (a plain call needs none).
--
-- Portable Lua (5.1 to 5.4, LuaJIT), POSIX shell utilities only (a file's
-- mode from `core.file_info`).
-- @module cachectl.cli.sys

local error, pcall, require, type, tostring = error, pcall, require, type, tostring
local io, os, string, table = io, os, string, table
local format, concat = string.format, table.concat

local core = require "cachectl.core"
local output = require "cachectl.cli.output"
local escape = output.escape

local M = {}

--- The longest credential the library takes (API.md: a key or token over
-- 64 KiB is refused before sending).
M.KEY_MAX = 64 * 1024

--- The longest first line read from a key file or standard input: a
-- credential and some white space around it. Nothing past it is read (a
-- device such as /dev/zero, a huge file): a longer line is a usage error.
M.LINE_MAX = M.KEY_MAX + 256

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

-- The first line of file `f` without its end of line, reading at most
-- `max` + 1 bytes (a longer line comes back cut there: longer than `max`);
-- nil at once at the end; nil and the message of a read error. Byte by
-- byte (buffered by the C library), so that a pipe whose writer keeps it
-- open after the line is not waited on. Ctrl-C while it waits goes on up.
local function first_line(f, max)
  local bytes, n, ended, rerr = {}, 0, false, nil
  local ok, err = pcall(function()
    while n <= max do
      local c, e = f:read(1)
      if c == nil then
        rerr = e
        ended = true
        return
      end
      if c == "\n" then return end
      n = n + 1
      bytes[n] = c
    end
  end)
  if not ok and output.interrupted(err) then error(err, 0) end
  if not ok then return nil, tostring(err) end
  if rerr then return nil, tostring(rerr) end
  if n == 0 and ended then return nil end
  return concat(bytes)
end
M.first_line = first_line

--- A line of standard input without its newline (at most `max` + 1 bytes,
-- default `M.LINE_MAX`), or nil at its end, when it is closed or cannot be
-- read. Ctrl-C while it waits raises the interpreter's "interrupted!".
function M.read_line(max)
  local line = first_line(io.stdin, max or M.LINE_MAX)
  return line
end

--- The permission bits of a file as an octal string ("600"), or nil (the
-- file it names when it is a symbolic link).
function M.file_mode(path)
  local kind, mode = core.file_info(path, true)
  if not kind then return nil end
  return format("%03o", mode % 512)
end

local TOO_LONG = "the first line of %s is over 64 KiB: no credential is that long (is it the right file?)"

-- The credential in a first line read (nil: nothing), or nil and a message.
local function credential(line, what, empty)
  if line and #line > M.LINE_MAX then return nil, format(TOO_LONG, what) end
  line = line and trim(line)
  if not line or line == "" then return nil, empty end
  if #line > M.KEY_MAX then return nil, format(TOO_LONG, what) end
  return line
end

--- The first line of --key-file, or of stdin for "-" (a pipe, not a
-- terminal); nil and a usage message when there is none. The path is never
-- echoed in an error about opening it: someone may have given the key
-- itself as the path. At most `M.LINE_MAX` + 1 bytes are read.
function M.key_file(ctx, path)
  if path == "-" then
    if ctx.sys.isatty(0) then
      return nil, "--key-file -: standard input is a terminal; pipe the credential in instead"
    end
    ctx.stdin_used = true
    return credential(ctx.sys.read_line(M.LINE_MAX), "standard input",
      "--key-file -: standard input holds no credential")
  end
  local f, oerr = io.open(path, "rb")
  if not f then
    local reason = tostring(oerr)
    reason = reason:sub(1, #path + 2) == path .. ": " and reason:sub(#path + 3) or "cannot open it"
    return nil, "cannot read the key file given to --key-file: " .. reason
  end
  local line, rerr = first_line(f, M.LINE_MAX)
  f:close()
  if rerr then
    local kind = core.file_info(path, true)
    return nil, "cannot read the key file given to --key-file: "
      .. (kind == "directory" and "it is a folder" or tostring(rerr))
  end
  local key, err = credential(line, "the key file given to --key-file",
    "the key file given to --key-file is empty: put the credential on its first line")
  if not key then return nil, err end
  local mode = ctx.sys.file_mode(path)
  if mode and #mode >= 3 then
    local g, o = mode:sub(-2, -2), mode:sub(-1)
    if g:match("[4-7]") or o:match("[4-7]") then
      ctx.note(format("cachectl: warning: the key file %s is readable by group or others (mode %s); "
        .. "run: chmod 600 %s\n", escape(path), mode, escape(M.shell_quote(path))))
    end
  end
  return key
end

return M
