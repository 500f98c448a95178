-- The command's compile cache (core.cache_folder, core.cache_searcher, in
-- src/cache.c), with real files: where it lives, that a module is compiled
-- once and then loaded from its bytecode, that an entry whose source differs
-- from the file on package.path (an edit, an upgrade) or that cannot be
-- loaded is ignored and rewritten, that it reads nothing from a folder
-- others may write or from an entry that is not a plain file of the user's,
-- that a folder that cannot be written changes nothing but speed, and that
-- the real command uses it (and not with CACHECTL_CACHE_DIR empty).
local core = require "cachectl.core"
local helpers = require "support.helpers"
local lua_child = require "support.lua_child"
local support = require "support.cli"
local server = require "support.mock_server"

local sh_quote, read_file, write_file = helpers.sh_quote, helpers.read_file, helpers.write_file
local loadstr = rawget(_G, "loadstring") or load

local function tmpdir()
  local p = assert(io.popen("mktemp -d"))
  local d = p:read("*l")
  p:close()
  return d
end

local function sh(cmd) assert(helpers.succeeds(cmd), cmd) end

local function mode(path)
  local p = assert(io.popen("stat -c %a " .. sh_quote(path)))
  local m = p:read("*l")
  p:close()
  return m
end

local function is_root()
  local p = assert(io.popen("id -u"))
  local uid = p:read("*l")
  p:close()
  return uid == "0"
end

-- core.cache_folder() in a child process with only these of the three
-- variables set: its two values, printed.
local function folder_of(env)
  local set = {}
  for k, v in pairs(env) do set[#set + 1] = k .. "=" .. sh_quote(v) end
  local code = ("package.cpath = %q print(require('cachectl.core').cache_folder())"):format(package.cpath)
  local p = assert(io.popen("env -u CACHECTL_CACHE_DIR -u XDG_CACHE_HOME -u HOME " .. table.concat(set, " ")
    .. " " .. lua_child.interpreter() .. " -e " .. sh_quote(code) .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return (out:gsub("\n$", ""))
end

describe("the compile cache", function()
  local VERSION = (rawget(_G, "jit") and jit.version or _VERSION):gsub("[^%w%.]", "")

  it("lives in $CACHECTL_CACHE_DIR, else $XDG_CACHE_HOME/cachectl, else ~/.cache/cachectl, per Lua", function()
    assert.equal("/c/" .. VERSION .. "\tfalse",
      folder_of{ CACHECTL_CACHE_DIR = "/c", XDG_CACHE_HOME = "/x", HOME = "/h" })
    assert.equal("/x/cachectl/" .. VERSION .. "\tfalse", folder_of{ XDG_CACHE_HOME = "/x", HOME = "/h" })
    assert.equal("/h/.cache/cachectl/" .. VERSION .. "\ttrue", folder_of{ XDG_CACHE_HOME = "", HOME = "/h" })
    assert.equal("nil", folder_of{ CACHECTL_CACHE_DIR = "", HOME = "/h" })
    assert.equal("nil", folder_of{})
  end)

  describe("searcher", function()
    local NAME = "cachectl.cli.cachetest"
    local SOURCE, EDITED = "return { from = 'source' }\n", "return { from = 'edited' }\n"
    local OTHER = string.dump(loadstr("return { from = 'cache' }"))
    local dir, src, saved_path
    before_each(function()
      dir = tmpdir()
      src = tmpdir()
      saved_path = package.path
      package.path = src .. "/?.lua;" .. package.path
      sh("mkdir -p " .. sh_quote(src .. "/cachectl/cli"))
      write_file(src .. "/cachectl/cli/cachetest.lua", SOURCE)
    end)
    after_each(function()
      package.path = saved_path
      os.execute("chmod -R u+rwx " .. sh_quote(dir) .. " 2>/dev/null; rm -rf " .. sh_quote(dir) .. " " .. sh_quote(src))
    end)

    -- What the module loaded by a searcher of `folder` says, and the path it was found at.
    local function from(folder, make_base, name)
      local fn, path = core.cache_searcher(folder, make_base)(name or NAME)
      return fn and fn().from, path
    end
    local function plant(folder, body)
      os.execute("mkdir -p -m 700 " .. sh_quote(folder))
      write_file(folder .. "/" .. NAME .. ".luac", #SOURCE .. "\n" .. SOURCE .. (body or OTHER))
    end

    it("compiles a module once, keeps it (folder and entry of mode 700 and 600), then loads the bytecode", function()
      local got, path = from(dir .. "/c")
      assert.equal("source", got)
      assert.equal(src .. "/cachectl/cli/cachetest.lua", path)
      local entry = assert(read_file(dir .. "/c/" .. NAME .. ".luac"))
      assert.equal(#SOURCE .. "\n" .. SOURCE .. "\27", entry:sub(1, #SOURCE + 4))
      assert.equal("700", mode(dir .. "/c"))
      assert.equal("600", mode(dir .. "/c/" .. NAME .. ".luac"))
      -- the same source with other bytecode: what loads is the cached bytecode
      plant(dir .. "/c")
      assert.equal("cache", from(dir .. "/c"))
    end)

    it("ignores and rewrites an entry whose source differs from the file (an edit of the same size)", function()
      from(dir .. "/c")
      write_file(src .. "/cachectl/cli/cachetest.lua", EDITED)
      assert.equal("edited", from(dir .. "/c"))
      assert.equal(#EDITED .. "\n" .. EDITED, read_file(dir .. "/c/" .. NAME .. ".luac"):sub(1, #EDITED + 3))
      assert.equal("edited", from(dir .. "/c"))
    end)

    it("falls back to the source when the entry holds no bytecode that loads (text is never run)", function()
      plant(dir .. "/c", "\27 not bytecode at all")
      assert.equal("source", from(dir .. "/c"))
      plant(dir .. "/c", "return { from = 'text' }")
      assert.equal("source", from(dir .. "/c"))
      plant(dir .. "/c", OTHER:sub(1, 20))      -- cut short
      assert.equal("source", from(dir .. "/c"))
    end)

    it("leaves other modules, modules it cannot find and sources that do not compile to the usual searchers", function()
      local s = core.cache_searcher(dir .. "/c")
      assert.is_nil(s("cachetest"))
      assert.is_nil(s("cachectl.client"))
      assert.is_nil(s("cachectl.cli.no_such_module"))
      assert.is_nil(s("cachectl.cli/../cachetest"))
      write_file(src .. "/cachectl/cli/broken.lua", "return {")
      assert.is_nil(s("cachectl.cli.broken"))
      local p = assert(io.popen("ls -A " .. sh_quote(dir)))
      assert.equal("", p:read("*a"))
      p:close()
    end)

    it("works without a folder it can write", function()
      assert.equal("source", from("/proc/cachectl-no-such/c"))
    end)

    -- Bytecode is code: an entry is read only from a folder no one else can write.
    describe("only where no one else can write", function()
      it("reads a planted entry of its own folder (the test of the tests)", function()
        plant(dir .. "/c")
        assert.equal("cache", from(dir .. "/c"))
      end)

      it("not through a symbolic link, nor in a folder group or others may use (set back to 700, emptied)", function()
        plant(dir .. "/real/c")
        sh("ln -s real " .. sh_quote(dir .. "/link"))
        assert.equal("source", from(dir .. "/link/c"))
        -- nor written
        assert.equal(#SOURCE .. "\n" .. SOURCE .. OTHER, read_file(dir .. "/real/c/" .. NAME .. ".luac"))
        plant(dir .. "/open")
        write_file(dir .. "/open/stale.tmp", "x")
        write_file(dir .. "/open/notes.txt", "kept")
        sh("chmod 777 " .. sh_quote(dir .. "/open"))
        assert.equal("source", from(dir .. "/open"))
        assert.equal("700", mode(dir .. "/open"))
        assert.is_nil(read_file(dir .. "/open/stale.tmp"))
        assert.equal("kept", read_file(dir .. "/open/notes.txt"))
        -- the entry written again is the source's
        assert.equal("source", from(dir .. "/open"))
        assert.is_nil(read_file(dir .. "/open/" .. NAME .. ".luac"):find(OTHER, 1, true))
      end)

      it("a version folder in a folder others may use: that one set back to 700, the entries emptied", function()
        plant(dir .. "/root/c")
        sh("chmod 770 " .. sh_quote(dir .. "/root"))
        assert.equal("source", from(dir .. "/root/c"))
        assert.equal("700", mode(dir .. "/root"))
        assert.equal("source", from(dir .. "/root/c"))
      end)

      it("not in a folder others may write (unless sticky, as /tmp), nor in a missing $HOME", function()
        sh("mkdir -m 777 " .. sh_quote(dir .. "/shared"))
        plant(dir .. "/shared/cachectl/c")
        sh("chmod 700 " .. sh_quote(dir .. "/shared/cachectl"))
        assert.equal("source", from(dir .. "/shared/cachectl/c"))
        assert.equal(#SOURCE .. "\n" .. SOURCE .. OTHER, read_file(dir .. "/shared/cachectl/c/" .. NAME .. ".luac"))
        sh("chmod 1777 " .. sh_quote(dir .. "/shared"))
        assert.equal("cache", from(dir .. "/shared/cachectl/c"))
        -- $HOME/.cache/cachectl/<version>: $HOME is never made
        assert.equal("source", from(dir .. "/nohome/.cache/cachectl/c", true))
        assert.is_nil(io.open(dir .. "/nohome"))
        -- an existing $HOME gets its .cache, mode 700; without make_base, the folder above is not made
        sh("mkdir " .. sh_quote(dir .. "/home"))
        assert.equal("source", from(dir .. "/home/.cache/cachectl/c"))
        assert.is_nil(io.open(dir .. "/home/.cache"))
        assert.equal("source", from(dir .. "/home/.cache/cachectl/c", true))
        assert.equal("700", mode(dir .. "/home/.cache"))
        assert.equal("700", mode(dir .. "/home/.cache/cachectl/c"))
        assert.truthy(read_file(dir .. "/home/.cache/cachectl/c/" .. NAME .. ".luac"))
      end)

      it("an entry that is a folder, a FIFO, a link, writable by others or of absurd length is compiled", function()
        local entry = dir .. "/c/" .. NAME .. ".luac"
        sh("mkdir -p -m 700 " .. sh_quote(entry))
        assert.equal("source", from(dir .. "/c"))
        sh("rmdir " .. sh_quote(entry) .. " && mkfifo " .. sh_quote(entry))
        assert.equal("source", from(dir .. "/c"))       -- not waited for
        sh("rm -f " .. sh_quote(entry))
        plant(dir .. "/elsewhere")
        sh("ln -s ../elsewhere/" .. NAME .. ".luac " .. sh_quote(entry))
        assert.equal("source", from(dir .. "/c"))
        sh("rm -f " .. sh_quote(entry))
        plant(dir .. "/c")
        sh("chmod 622 " .. sh_quote(entry))
        assert.equal("source", from(dir .. "/c"))
        write_file(entry, "99999999999999999999\n" .. SOURCE .. OTHER)
        sh("chmod 600 " .. sh_quote(entry))
        assert.equal("source", from(dir .. "/c"))
        write_file(entry, #SOURCE .. "\n")
        assert.equal("source", from(dir .. "/c"))
        write_file(entry, "")
        assert.equal("source", from(dir .. "/c"))
      end)

      -- (chown without a sanitizer's runtime: LeakSanitizer's report changes its exit status)
      it("not from another user's entry or folder (run as root: chown)", function()
        if not is_root() then pending("needs root to give a file away") return end
        plant(dir .. "/c")
        sh("env -u LD_PRELOAD chown nobody " .. sh_quote(dir .. "/c/" .. NAME .. ".luac"))
        assert.equal("source", from(dir .. "/c"))
        plant(dir .. "/d")
        sh("env -u LD_PRELOAD chown nobody " .. sh_quote(dir .. "/d"))
        assert.equal("source", from(dir .. "/d"))
        sh("mkdir -m 755 " .. sh_quote(dir .. "/e") .. " && mkdir -m 700 " .. sh_quote(dir .. "/e/cachectl"))
        plant(dir .. "/e/cachectl/c")
        sh("env -u LD_PRELOAD chown nobody " .. sh_quote(dir .. "/e"))
        assert.equal("source", from(dir .. "/e/cachectl/c"))     -- the folder above is another's
      end)
    end)
  end)

  describe("in the command", function()
    local srv = server.use()

    it("is used by bin/cachectl, and not with CACHECTL_CACHE_DIR empty", function()
      local dir = tmpdir()
      local tmp = os.tmpname()
      local runner = support.process(tmp)
      for _ = 1, 2 do
        local code, out, err = runner.exec({ "modelslab", "clear-cache", "--base-url", srv.base },
          { MODELSLAB_API_KEY = support.secret(), CACHECTL_CACHE_DIR = dir })
        assert.equal(0, code, err)
        assert.matches("Cache cleared", out, 1, true)
      end
      local listed = {}
      local p = assert(io.popen("ls " .. sh_quote(dir .. "/Lua5.4")))      -- bin/cachectl runs lua5.4
      for name in p:lines() do listed[#listed + 1] = name end
      p:close()
      for _, m in ipairs{ "argparse.luac", "cachectl.cli.luac", "cachectl.cli.parser.luac",
                          "cachectl.cli.output.luac", "cachectl.cli.run.luac" } do
        assert.is_truthy(table.concat(listed, " "):find(m, 1, true), m)
      end
      local off = tmpdir()
      local code = runner.exec({ "modelslab", "clear-cache", "--base-url", srv.base },
        { MODELSLAB_API_KEY = support.secret(), CACHECTL_CACHE_DIR = "", HOME = off, XDG_CACHE_HOME = off })
      assert.equal(0, code)
      p = assert(io.popen("ls -A " .. sh_quote(off)))
      assert.equal("", p:read("*a"))
      p:close()
      runner.clean()
      os.execute("rm -rf " .. sh_quote(dir) .. " " .. sh_quote(off))
    end)
  end)
end)
