-- The command's compile cache (cachectl.cli.cache): where it lives, that a
-- module is compiled once and then loaded from its bytecode, that a cache
-- whose source differs from the file on package.path (an edit, an
-- upgrade) or that cannot be loaded is ignored and rewritten, that a
-- folder that cannot be written changes nothing but speed, and that the
-- real command uses it (and not with CACHECTL_CACHE_DIR empty).
local cache = require "cachectl.cli.cache"
local helpers = require "support.helpers"
local support = require "support.cli"
local server = require "support.mock_server"

local sh_quote, read_file, write_file = helpers.sh_quote, helpers.read_file, helpers.write_file

local function tmpdir()
  local p = assert(io.popen("mktemp -d"))
  local d = p:read("*l")
  p:close()
  return d
end

local function env(t) return function(name) return t[name] end end

-- Lua 5.1 has no package.searchpath, which the searcher needs: it does
-- nothing there (the command runs under Lua 5.4 anyway).
local describe_searcher = package.searchpath and describe or pending

describe("the compile cache", function()
  local VERSION = (rawget(_G, "jit") and jit.version or _VERSION):gsub("[^%w%.]", "")

  it("lives in $CACHECTL_CACHE_DIR, else $XDG_CACHE_HOME/cachectl, else ~/.cache/cachectl, per Lua", function()
    assert.equal("/c/" .. VERSION, cache.folder(env{ CACHECTL_CACHE_DIR = "/c", XDG_CACHE_HOME = "/x", HOME = "/h" }))
    assert.equal("/x/cachectl/" .. VERSION, cache.folder(env{ XDG_CACHE_HOME = "/x", HOME = "/h" }))
    assert.equal("/h/.cache/cachectl/" .. VERSION, cache.folder(env{ XDG_CACHE_HOME = "", HOME = "/h" }))
    assert.is_nil(cache.folder(env{ CACHECTL_CACHE_DIR = "", HOME = "/h" }))
    assert.is_nil(cache.folder(env{}))
  end)

  describe_searcher("searcher", function()
    local SOURCE, EDITED = "return { from = 'source' }\n", "return { from = 'edited' }\n"
    local dir, src, saved_path
    before_each(function()
      dir = tmpdir()
      src = tmpdir()
      saved_path = package.path
      package.path = src .. "/?.lua;" .. package.path
      write_file(src .. "/cachetest.lua", SOURCE)
    end)
    after_each(function()
      package.path = saved_path
      os.execute("rm -rf " .. sh_quote(dir) .. " " .. sh_quote(src))
    end)

    local function load_it()
      assert(package.searchpath, "Lua 5.1 has no package.searchpath: no cache there")
      local fn, path = cache.searcher(dir .. "/c", function(name) return name == "cachetest" end)("cachetest")
      return fn and fn(), path
    end

    it("compiles a module once, keeps it (folder mode 700), then loads the bytecode", function()
      local m, path = load_it()
      assert.equal("source", m.from)
      assert.equal(src .. "/cachetest.lua", path)
      local entry = assert(read_file(dir .. "/c/cachetest.luac"))
      assert.equal(#SOURCE .. "\n" .. SOURCE, entry:sub(1, #SOURCE + 3))
      local p = assert(io.popen("stat -c %a " .. sh_quote(dir .. "/c")))
      assert.equal("700", p:read("*l"))
      p:close()
      -- the same source with other bytecode: what loads is the cached bytecode
      local other = string.dump((loadstring or load)("return { from = 'cache' }"), true)
      write_file(dir .. "/c/cachetest.luac", #SOURCE .. "\n" .. SOURCE .. other)
      assert.equal("cache", load_it().from)
    end)

    it("ignores and rewrites a cache whose source differs from the file (an edit, an upgrade)", function()
      load_it()
      write_file(src .. "/cachetest.lua", EDITED)
      assert.equal("edited", load_it().from)
      assert.equal(#EDITED .. "\n" .. EDITED, read_file(dir .. "/c/cachetest.luac"):sub(1, #EDITED + 3))
    end)

    it("falls back to the source when the cached bytecode cannot be loaded", function()
      load_it()
      write_file(dir .. "/c/cachetest.luac", #SOURCE .. "\n" .. SOURCE .. "not bytecode at all")
      assert.equal("source", load_it().from)
    end)

    it("leaves other modules, and modules it cannot find, to the usual searchers", function()
      local s = cache.searcher(dir .. "/c", function(name) return name ~= "cachetest" end)
      assert.is_nil(s("cachetest"))
      assert.is_nil(s("no.such.module"))
      assert.is_nil(read_file(dir .. "/c/cachetest.luac"))
    end)

    it("works without a folder it can write", function()
      local fn = cache.searcher("/proc/cachectl-no-such/c", function() return true end)("cachetest")
      assert.equal("source", fn().from)
    end)

    -- Bytecode is code: an entry is read only from a folder no one else can write.
    describe("only where no one else can write", function()
      local OTHER = string.dump((loadstring or load)("return { from = 'cache' }"), true)
      local function plant(folder)
        os.execute("mkdir -p " .. sh_quote(folder))
        write_file(folder .. "/cachetest.luac", #SOURCE .. "\n" .. SOURCE .. OTHER)
      end
      local function from(folder, make_base)
        local fn = cache.searcher(folder, function(name) return name == "cachetest" end, nil, make_base)("cachetest")
        return fn().from
      end
      local function mode(path)
        local p = assert(io.popen("stat -c %a " .. sh_quote(path)))
        local m = p:read("*l")
        p:close()
        return m
      end

      it("reads a planted entry of its own folder (the test of the tests)", function()
        plant(dir .. "/c")
        os.execute("chmod 700 " .. sh_quote(dir .. "/c"))
        assert.equal("cache", from(dir .. "/c"))
      end)

      it("not through a symbolic link, nor in a folder group or others may use (set back to 700, emptied)", function()
        plant(dir .. "/real/c")
        os.execute("chmod 700 " .. sh_quote(dir .. "/real/c") .. " && ln -s real " .. sh_quote(dir .. "/link"))
        assert.equal("source", from(dir .. "/link/c"))
        assert.equal(#SOURCE .. "\n" .. SOURCE .. OTHER, read_file(dir .. "/real/c/cachetest.luac"))  -- nor written
        plant(dir .. "/open")
        os.execute("chmod 777 " .. sh_quote(dir .. "/open"))
        assert.equal("source", from(dir .. "/open"))
        assert.equal("700", mode(dir .. "/open"))
        assert.equal("source", from(dir .. "/open"))     -- the entry written again is the source's
      end)

      it("not in a folder others may write (not sticky), nor in a missing $HOME", function()
        os.execute("mkdir -m 777 " .. sh_quote(dir .. "/shared"))
        plant(dir .. "/shared/cachectl/c")
        os.execute("chmod 700 " .. sh_quote(dir .. "/shared/cachectl") .. " " .. sh_quote(dir .. "/shared/cachectl/c"))
        assert.equal("source", from(dir .. "/shared/cachectl/c"))
        local folder, in_home = cache.folder(env{ HOME = dir .. "/nohome" })
        assert.is_true(in_home)
        assert.equal("source", from(folder, in_home))
        assert.is_nil(io.open(dir .. "/nohome"))
        -- an existing $HOME gets its .cache, mode 700
        os.execute("mkdir " .. sh_quote(dir .. "/home"))
        folder, in_home = cache.folder(env{ HOME = dir .. "/home" })
        assert.equal("source", from(folder, in_home))
        assert.equal("700", mode(dir .. "/home/.cache"))
        assert.truthy(read_file(folder .. "/cachetest.luac"))
      end)

      it("an entry that is a folder, a FIFO or has an absurd length line is compiled as usual", function()
        os.execute("mkdir -p -m 700 " .. sh_quote(dir .. "/c/cachetest.luac"))
        assert.equal("source", from(dir .. "/c"))
        os.execute("rmdir " .. sh_quote(dir .. "/c/cachetest.luac") .. " && mkfifo "
          .. sh_quote(dir .. "/c/cachetest.luac"))
        assert.equal("source", from(dir .. "/c"))
        os.execute("rm -f " .. sh_quote(dir .. "/c/cachetest.luac"))
        write_file(dir .. "/c/cachetest.luac", "99999999999999999999\n" .. SOURCE .. OTHER)
        assert.equal("source", from(dir .. "/c"))
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
