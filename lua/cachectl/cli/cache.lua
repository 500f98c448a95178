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
-- `$HOME/.cache/cachectl`, one subfolder per Lua version, made with mode
-- 700; `CACHECTL_CACHE_DIR=` (empty) turns the cache off. Only
-- `bin/cachectl` installs it: the library never reads nor writes a cache.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.cache

local io, os, package, string, table = io, os, package, string, table
local pcall, rawget, tonumber, tostring, _G = pcall, rawget, tonumber, tostring, _G
local loadstr = rawget(_G, "loadstring") or load     -- text or bytecode, every version
local _VERSION, jit = _VERSION, rawget(_G, "jit")

local M = {}

-- A whole file, read in one go (its size first: "*a" reads it in small
-- pieces, which costs more than the rest of a cached load).
local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local size = f:seek("end")
  local text = size and f:seek("set") and f:read(size)
  f:close()
  return text
end

-- Writes `text` to `path` whole or not at all (a temporary file renamed),
-- making the folder (mode 700) when the first try fails.
local function write(dir, path, text, again)
  local tmp = path .. "." .. tostring({}):match("%x+$") .. ".tmp"
  local f = io.open(tmp, "wb")
  if not f then
    if again then return end
    os.execute("mkdir -p -m 700 '" .. dir:gsub("'", "'\\''") .. "' 2>/dev/null")
    return write(dir, path, text, true)
  end
  local ok = f:write(text)
  f:close()
  if not (ok and os.rename(tmp, path)) then os.remove(tmp) end
end

--- The cache's folder for this Lua, from the environment, or nil when off.
-- @tparam function getenv like `os.getenv`
-- @treturn string|nil
function M.folder(getenv)
  local dir, xdg, home = getenv("CACHECTL_CACHE_DIR"), getenv("XDG_CACHE_HOME"), getenv("HOME")
  if not dir then
    dir = xdg and xdg ~= "" and xdg .. "/cachectl" or home and home ~= "" and home .. "/.cache/cachectl" or ""
  end
  if dir == "" then return nil end
  return dir .. "/" .. (jit and jit.version or _VERSION):gsub("[^%w%.]", "")
end

--- A searcher (for `package.searchers`, `package.loaders` in 5.1) that
-- loads the modules `wanted(name)` accepts from their cached bytecode in
-- `dir`, compiling and caching them when the cache is missing or stale.
-- @tparam string dir the folder
-- @tparam function wanted `wanted(name)` is true for the modules to cache
-- @treturn function the searcher
function M.searcher(dir, wanted)
  return function(name)
    local path = wanted(name) and package.searchpath and package.searchpath(name, package.path)
    local src = path and read(path)
    if not src then return nil end                 -- the usual searchers say why
    local file = dir .. "/" .. name .. ".luac"
    local cached = read(file) or ""
    local n = tonumber(cached:match("^(%d+)\n") or "")
    local at = n and #tostring(n) + 2
    local fn = at and cached:sub(at, at + n - 1) == src and loadstr(cached:sub(at + n), "@" .. path)
    if fn then return fn, path end
    fn = loadstr(src, "@" .. path)
    if not fn then return nil end                  -- the usual Lua searcher raises the error
    local ok, code = pcall(string.dump, fn, true)  -- stripped: a third smaller, faster to load
    if ok then write(dir, file, #src .. "\n" .. src .. code) end
    return fn, path
  end
end

--- Puts the searcher for argparse and `cachectl.cli.*` before the usual
-- Lua searcher, when the environment names a folder.
-- @tparam function getenv like `os.getenv`
function M.install(getenv)
  local dir = M.folder(getenv)
  if dir then
    table.insert(package.searchers or package.loaders, 2, M.searcher(dir, function(name)
      return name == "argparse" or name:sub(1, 12) == "cachectl.cli"
    end))
  end
end

return M
