-- `require "cachectl"` needs no LuaSocket (the README calls it optional):
-- the library's clock is the core's (core.monotonic). A child process runs
-- with paths that hold only the library, the core and lua-cjson (LuaSocket
-- sits beside cjson in Debian's tree, so cjson is linked into a folder of
-- its own), checks that `socket` cannot be found, then makes real calls
-- against the mock: a plain one, a coalesced pair, a checked reset.
local helpers = require "support.helpers"
local server = require "support.mock_server"
local cjson = require "cjson"

-- The interpreter running this spec, for the child.
local LUA = type(rawget(_G, "jit")) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")

-- The folder of the file `name` loads from along `path`.
local function folder(name, path)
  return assert(package.searchpath(name, path), name .. " not found"):match("^(.*)/[^/]*$")
end

describe("require 'cachectl' without LuaSocket", function()
  local srv = server.use()

  it("loads, and its calls, coalescing and the policy check work", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. helpers.sh_quote(dir)))
    local cjson_so = assert(package.searchpath("cjson", package.cpath))
    assert(os.execute("ln -s " .. helpers.sh_quote(cjson_so) .. " " .. helpers.sh_quote(dir .. "/cjson.so")))
    -- the core as this pass built it (build/5.4/, the ASan build, another ABI's)
    local core_dir = folder("cachectl.core", package.cpath):gsub("/cachectl$", "")
    local lua_dir = folder("cachectl", package.path):gsub("/cachectl$", "")
    local script = dir .. "/child.lua"
    helpers.write_file(script, string.format([[
package.path = %q
package.cpath = %q
assert(not pcall(require, "socket"), "LuaSocket can be found")
local cachectl, cjson = require "cachectl", require "cjson"
local out = { socket_loaded = package.loaded.socket ~= nil }
local ml = cachectl.modelslab.new{ key = %q, base_url = %q }
out.plain = ml:clear_cache() ~= nil
local omni = cachectl.omni.new{ token = %q, base_url = %q, check_policy = true }
local a = omni:reset_cache(%q, "daily", { coalesce = 5 })
local b = omni:reset_cache(%q, "daily", { coalesce = 5 })
out.coalesced = a ~= nil and b ~= nil and b.coalesced == true
local _, err = omni:reset_cache(%q, "dialy")
out.refused = err and err.field
print(cjson.encode(out))
]], lua_dir .. "/?.lua;" .. lua_dir .. "/?/init.lua", dir .. "/?.so;" .. core_dir .. "/?.so",
      helpers.uid("key"), srv.base, helpers.uid("tok"), srv.base, helpers.UUID, helpers.UUID, helpers.UUID))
    -- stderr apart: a sanitizer's report fails the test, not the answer's place
    local p = assert(io.popen(LUA .. " " .. helpers.sh_quote(script) .. " 2>" .. helpers.sh_quote(dir .. "/err")))
    local text = p:read("*a")
    p:close()
    local errors = helpers.read_file(dir .. "/err") or ""
    os.execute("rm -rf " .. helpers.sh_quote(dir))
    assert.is_nil(errors:find("ERROR: AddressSanitizer", 1, true), errors)
    local ok, out = pcall(cjson.decode, text)
    assert(ok and type(out) == "table", "the child printed: " .. text .. errors)
    assert.same({ socket_loaded = false, plain = true, coalesced = true, refused = "policy" }, out)
    -- one clear_cache, one read of the model file, one reset (the second shared)
    assert.equal(3, #srv:requests())
  end)
end)
