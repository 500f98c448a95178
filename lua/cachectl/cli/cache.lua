--- A compile cache for the `cachectl` command's start-up: the Lua files it
-- loads (argparse and `cachectl.cli.*`) are compiled once and kept as
-- bytecode, so that a run loads them instead of compiling them again
-- (compiling argparse alone costs more instructions than the call itself).
--
-- A cached file holds the source it was compiled from; it is used only
-- while the source file found on `package.path` is byte for byte the same,
-- so an upgrade or an edit is picked up at once. A file that cannot be
-- read, written or loaded (another Lua version, a full disk, no home
-- folder) only means compiling as usual. The folder is
-- `$CACHECTL_CACHE_DIR`, else `$XDG_CACHE_HOME/cachectl`, else
-- `$HOME/.cache/cachectl`, one subfolder per Lua version;
-- `CACHECTL_CACHE_DIR=` (empty) turns the cache off. Only `bin/cachectl`
-- installs it: the library never reads nor writes a cache.
--
-- Bytecode is code: the cache is used only where no one else can write.
-- Checked with `core.file_info` (lstat, no child process) before the first
-- entry is read: the folder and its version subfolder must be real
-- folders (not symbolic links) of the effective user, in a folder that
-- group and others may not write (unless it is sticky, as /tmp); a folder
-- of ours that group or others may use is set back to mode 700, and its
-- version subfolder emptied (what it held may have been written by
-- others). Missing folders are made with mode 700 when an entry is first
-- written, below an existing folder only (`$HOME` is never made; its
-- `.cache` is, as the XDG specification asks). An entry is read only when
-- it is a regular file of the effective user, of a sane size, and its
-- length line is in range; anything else is compiled as usual.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.cache

local io, math, os, package, string, table = io, math, os, package, string, table
local ipairs, pcall, rawget, require, tonumber, tostring, _G = ipairs, pcall, rawget, require, tonumber, tostring, _G
local loadstr = rawget(_G, "loadstring") or load     -- text or bytecode, every version
local _VERSION, jit = _VERSION, rawget(_G, "jit")

local M = {}

-- The folder holding `path` ("." for a bare name, "/" at the top).
local function parent(path)
  local up = path:gsub("/+$", ""):match("^(.*)/[^/]*$")
  return up == nil and "." or up == "" and "/" or up
end

-- A whole file, read in one go (its size first: "*a" reads it in small
-- pieces, which costs more than the rest of a cached load); nil when it
-- holds more than `max` bytes (an entry is far less than 16 MiB).
local function read(path, max)
  local f = io.open(path, "rb")
  if not f then return nil end
  local size = f:seek("end")
  local text = size and size <= (max or size) and f:seek("set") and f:read(size)
  f:close()
  return text or nil
end

-- What `dir` is, by `info` (core.file_info): "ok" (a real folder of ours,
-- no rights for group and others), "open" (ours, with rights for them),
-- "missing", "bad" (a link, a file, another's); with `up`, followed, for
-- the folder a cache folder is in: "ok" when ours or root's and not
-- writable by group and others unless sticky (there no one renames
-- another's files, as in /tmp), else "bad".
local function state(info, dir, up)
  local kind, mode, owner = info(dir, up)
  if kind == nil then return owner == 2 and "missing" or "bad" end            -- 2: ENOENT
  if kind ~= "directory" or owner == "other" or not (up or owner == "self") then return "bad" end
  if up then
    local sticky, gw, ow = math.floor(mode / 512) % 2, math.floor(mode / 16) % 2, math.floor(mode / 2) % 2
    return (sticky == 1 or gw + ow == 0) and "ok" or "bad"
  end
  return mode % 64 == 0 and "ok" or "open"
end

local function run(cmd)
  local ok = os.execute(cmd .. " 2>/dev/null")
  return ok == 0 or ok == true
end

local function quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The folders of the cache `dir`, checked before the first entry is read:
-- `readable()` says whether entries may be read, `writable()` (which makes
-- the missing folders, mode 700) whether they may be written.
local function guard(dir, info, make_base)
  local root = parent(dir)
  local base = parent(root)
  local status          -- nil: not checked yet; "ok", "missing" or "off"

  local function check()
    local b = state(info, base, true)
    -- a missing $HOME/.cache is made, below an existing $HOME only
    if b == "missing" and make_base and state(info, parent(base), true) == "ok" then return "missing" end
    local r = b == "ok" and state(info, root) or "bad"
    if r == "open" and not run("chmod 700 " .. quote(root)) then r = "bad" end
    local d = r == "missing" and "missing" or r ~= "bad" and state(info, dir) or "bad"
    -- ours, but others could write there: what it holds is not ours to run
    if d == "open"
        and run("chmod 700 " .. quote(dir) .. " && cd " .. quote(dir) .. " && { rm -f -- *.luac *.tmp; true; }") then
      d = "ok"
    end
    return (d == "ok" or d == "missing") and d or "off"
  end

  local g = {}
  function g.readable()
    status = status or check()
    return status == "ok"
  end
  function g.writable()
    if g.readable() or status ~= "missing" then return status == "ok" end
    local todo = {}
    for _, d in ipairs{ base, root, dir } do
      if state(info, d) == "missing" then todo[#todo + 1] = quote(d) end
    end
    run("mkdir -m 700 -- " .. table.concat(todo, " "))
    status = state(info, base, true) == "ok" and state(info, root) == "ok" and check() == "ok" and "ok" or "off"
    return status == "ok"
  end
  return g
end

-- The cached function of `file` for the source `src`, or nil: a regular
-- file of ours holding the length of the source, the source, the bytecode.
local function cached(info, file, src, chunkname)
  local kind, _, owner = info(file)
  local text = kind == "file" and owner == "self" and read(file, 16 * 1024 * 1024)
  local n = tonumber(text and text:match("^(%d%d?%d?%d?%d?%d?%d?%d?)\n") or "")
  if n ~= #src then return nil end
  local at = #tostring(n) + 2
  return text:sub(at, at + n - 1) == src and loadstr(text:sub(at + n), chunkname) or nil
end

--- The cache's folder for this Lua, from the environment, or nil when off;
-- and whether it is in `$HOME/.cache` (made when missing).
-- @tparam function getenv like `os.getenv`
-- @treturn string|nil
-- @treturn boolean
function M.folder(getenv)
  local dir, xdg, home = getenv("CACHECTL_CACHE_DIR"), getenv("XDG_CACHE_HOME"), getenv("HOME")
  local in_home = not dir and not (xdg and xdg ~= "") and home and home ~= ""
  if not dir then
    dir = xdg and xdg ~= "" and xdg .. "/cachectl" or in_home and home .. "/.cache/cachectl" or ""
  end
  if dir == "" then return nil end
  return dir .. "/" .. (jit and jit.version or _VERSION):gsub("[^%w%.]", ""), in_home and true or false
end

--- A searcher (for `package.searchers`, `package.loaders` in 5.1) that
-- loads the modules `wanted(name)` accepts from their cached bytecode in
-- `dir`, compiling and caching them when the cache is missing or stale.
-- @tparam string dir the folder
-- @tparam function wanted `wanted(name)` is true for the modules to cache
-- @tparam[opt] function info `core.file_info` (default: the core's)
-- @tparam[opt] boolean make_base make the folder holding `dir`'s folder
--   when missing (`$HOME/.cache`)
-- @treturn function the searcher
function M.searcher(dir, wanted, info, make_base)
  info = info or require("cachectl.core").file_info
  local g = guard(dir, info, make_base)
  return function(name)
    local path = wanted(name) and package.searchpath and package.searchpath(name, package.path)
    local src = path and read(path)
    if not src then return nil end                 -- the usual searchers say why
    local file = dir .. "/" .. name .. ".luac"
    local fn = g.readable() and cached(info, file, src, "@" .. path)
    if fn then return fn, path end
    fn = loadstr(src, "@" .. path)
    if not fn then return nil end                  -- the usual Lua searcher raises the error
    local ok, code = pcall(string.dump, fn, true)  -- stripped: a third smaller, faster to load
    if ok and g.writable() then
      -- whole or not at all: a temporary file renamed
      local tmp = file .. "." .. tostring({}):match("%x+$") .. ".tmp"
      local f = io.open(tmp, "wb")
      ok = f and f:write(#src, "\n", src, code)
      ok = f and f:close() and ok
      if not (ok and os.rename(tmp, file)) then os.remove(tmp) end
    end
    return fn, path
  end
end

--- Puts the searcher for argparse and `cachectl.cli.*` before the usual
-- Lua searcher, when the environment names a folder.
-- @tparam function getenv like `os.getenv`
-- @tparam[opt] function info `core.file_info` (default: the core's)
function M.install(getenv, info)
  local dir, in_home = M.folder(getenv)
  if dir then
    table.insert(package.searchers or package.loaders, 2, M.searcher(dir, function(name)
      return name == "argparse" or name:sub(1, 12) == "cachectl.cli"
    end, info, in_home))
  end
end

return M
