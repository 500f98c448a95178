-- Issue 21, bullets 1 and 2: a model file from a hostile server is read
-- within limits (nesting depth, events, nodes with aliases and merge keys
-- expanded, keys, key bytes) in bounded memory and time, and its shapes are
-- checked: past a limit or on a refused shape the answer is `decode`, naming
-- the limit or the shape, never invented names. The bombs run in a child
-- process under `ulimit -v` (and a `timeout`), against the scripted server
-- of spec/support/hostile_server.lua.
local hostile = require "support.hostile_server"
local gen = require "support.hostile_yaml"
local helpers = require "support.helpers"
local cjson = require "cjson"
local cachectl = require "cachectl"
local core = require "cachectl.core"

local UUID = helpers.UUID
-- The interpreter running this spec, for the child processes.
local LUA = type(rawget(_G, "jit")) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")
-- The child's address space: a few times what a call needs (about 25 MB),
-- far below what the bombs took before (1.7 and 2.3 GB). Not under
-- AddressSanitizer, whose shadow memory reserves terabytes of it.
local MEMORY_KB = 300 * 1024
local ASAN = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil

describe("a hostile model file", function()
  local srv

  setup(function() srv = hostile.start() end)
  teardown(function() if srv then srv:stop() end end)

  -- The policies of a model whose model.yaml is `text` (or whose answer's
  -- files are `files`), read by a fresh client.
  local function policies_of(text, files, opts)
    srv:script{ yaml = text and { ["*"] = text } or nil, files = files and { ["*"] = files } or nil }
    local c = cachectl.omni.new(helpers.merge({ token = helpers.uid("tok-hostile"), base_url = srv.base,
      rate_limit = false }, opts))
    local list, err = c:cache_policies(UUID)
    c:close()
    return list, err
  end

  -- cache_policies of the model the server scripts, in a child process
  -- under `ulimit -v` and `timeout 60`: { ok, kind, message }.
  local function in_child(text, timeout)
    srv:script{ yaml = { ["*"] = text } }
    local script = os.tmpname()
    helpers.write_file(script, string.format([[
package.path, package.cpath = %q, %q
local cachectl = require "cachectl"
local c = cachectl.omni.new{ token = %q, base_url = %q, rate_limit = false, timeout = %s,
  max_response_bytes = 4 * 1024 * 1024 }
local list, err = c:cache_policies(%q)
io.write(require("cjson").encode{ ok = list ~= nil, kind = err and err.kind, message = err and err.message })
io.stdout:flush()   -- before the exit: a sanitizer's own failure there ends the process unflushed
]], package.path, package.cpath, helpers.uid("tok-child"), srv.base, timeout or 5, UUID))
    local limit = ASAN and "" or "ulimit -v " .. MEMORY_KB .. " && "
    local errfile = os.tmpname()
    local p = io.popen("sh -c " .. helpers.sh_quote(limit .. "exec timeout 60 " .. LUA .. " " .. script)
      .. " 2>" .. helpers.sh_quote(errfile))
    local out = p:read("*a")
    p:close()
    local err = helpers.read_file(errfile) or ""
    os.remove(script)
    os.remove(errfile)
    -- under ASan a report of the sanitizer fails the test; LeakSanitizer's
    -- own failure to run (its tracer, on a busy machine) does not
    assert(not (err:find("ERROR: AddressSanitizer", 1, true) or err:find("detected memory leaks", 1, true)),
      "the child's sanitizer reported: " .. err:sub(1, 400))
    local ok, res = pcall(cjson.decode, out)
    assert(ok and type(res) == "table", "the child printed: " .. out:sub(1, 400) .. " " .. err:sub(1, 400))
    return res
  end

  local function assert_limit(res, limit)
    assert.is_false(res.ok)
    assert.equal("decode", res.kind)
    assert.matches("the " .. limit .. " limit", res.message, 1, true)
    assert.not_matches("not valid YAML", res.message, 1, true)
  end

  describe("bombs, in a child process under ulimit -v", function()
    it("merge keys over a wide mapping (6,000 x 6,000, 166 KB): decode, the nodes limit", function()
      assert_limit(in_child(gen.merge_bomb(6000, 6000)), "nodes")
    end)

    it("a billion laughs (9 levels of 10 aliases, 638 bytes) as an attribute: decode, the nodes limit", function()
      assert_limit(in_child(gen.laughs(9, 10)), "nodes")
    end)

    it("100,000 levels of [[[...]]] (200 KB) with timeout = 5: decode, the depth limit", function()
      assert_limit(in_child(gen.deep(100000), 5), "depth")
    end)

    it("a flow list of 110,000 scalars (220 KB): decode, the events limit", function()
      assert_limit(in_child(gen.wide(110000)), "events")
    end)

    it("10,001 policies: decode, the keys limit; 10,000 are read", function()
      assert_limit(in_child(gen.many_policies(core.yaml_limits.keys + 1)), "keys")
      local res = in_child(gen.many_policies(core.yaml_limits.keys))
      assert.is_true(res.ok, res.message)
    end)
  end)

  describe("limits, in process", function()
    it("depth: 64 levels are read, 65 are not", function()
      local ok_text = "a: " .. string.rep("[", 63) .. string.rep("]", 63) .. "\ncache_policies: {daily: {}}\n"
      assert.equal("daily", assert(policies_of(ok_text))[1].name)
      local _, err = policies_of("a: " .. string.rep("[", 64) .. string.rep("]", 64) .. "\n")
      assert.equal("decode", err.kind)
      assert.matches("nesting deeper than 64 levels (the depth limit)", err.message, 1, true)
    end)

    it("depth counts aliases expanded: an alias to a deep node, deep inside, passes the limit", function()
      local deep = string.rep("[", 40) .. string.rep("]", 40)
      local inner = string.rep("[", 30) .. "*d" .. string.rep("]", 30)
      local _, err = policies_of("a: &d " .. deep .. "\nb: " .. inner .. "\n")
      assert.matches("the depth limit", err.message, 1, true)
    end)

    it("key_bytes: a key of 1,025 bytes (an explicit key) is refused, 1,024 are read", function()
      local _, err = policies_of("cache_policies:\n  ? " .. string.rep("k", 1025) .. "\n  : {}\n")
      assert.equal("decode", err.kind)
      assert.matches("a key longer than 1024 bytes (the key_bytes limit)", err.message, 1, true)
      local list = assert(policies_of("cache_policies:\n  ? " .. string.rep("k", 1024) .. "\n  : {}\n"))
      assert.equal(1024, #list[1].name)
    end)

    it("the message names the model, never the text", function()
      local _, err = policies_of("secret_looking_text: &a [*a]\n")
      assert.equal("model " .. UUID .. ": an alias inside the node it names (a cycle)", err.message)
      assert.equal(1, err.attempts)
    end)
  end)

  describe("aliases and anchors", function()
    it("an attribute that aliases itself: decode (a cycle), never a cyclic table", function()
      local _, err = policies_of("cache_policies:\n  daily: &d\n    max_cache_age: *d\n")
      assert.equal("decode", err.kind)
      assert.matches("a cycle", err.message, 1, true)
      _, err = policies_of("cache_policies: &all\n  daily: {again: *all}\n")
      assert.matches("a cycle", err.message, 1, true)
    end)

    it("aliased attributes are plain values: scalars copied, a shared collection left out", function()
      local list = assert(policies_of(table.concat({
        "age: &age 24 hours",
        "shared: &shared {a: 1, b: [1, 2]}",
        "cache_policies:",
        "  daily: {max_cache_age: *age, extra: *shared, list: [1, 2], flag: true, n: 3, nothing: ~}",
        "  hourly: {max_cache_age: *age, extra: *shared}",
      }, "\n") .. "\n"))
      assert.same({ name = "daily", max_cache_age = "24 hours", flag = true, n = 3 }, list[1])
      assert.same({ name = "hourly", max_cache_age = "24 hours" }, list[2])
      for _, p in ipairs(list) do
        for _, v in pairs(p) do assert.is_not.equal("table", type(v)) end
      end
    end)

    it("anchors in keys, an alias as a key, merge keys in order", function()
      local list = assert(policies_of(table.concat({
        "base: &base {max_cache_age: 1 day, filter_suggestions_must_obey_policy: true}",
        "cache_policies:",
        "  &n daily: {<<: *base, max_cache_age: 24 hours}",
        "  weekly: {note: *n, <<: [*base, {extra: x}]}",
        "  <<: {merged: {max_cache_age: 2 days}, daily: {max_cache_age: never}}",
        "  *n : {max_cache_age: 12 hours}",
      }, "\n") .. "\n"))
      assert.same({ "daily", "weekly", "merged" }, { list[1].name, list[2].name, list[3].name })
      assert.equal(3, #list)
      assert.equal("12 hours", list[1].max_cache_age)    -- a repeated key replaces; a merged one never does
      assert.is_nil(list[1].filter_suggestions_must_obey_policy)
      assert.same({ name = "weekly", note = "daily", max_cache_age = "1 day",
                    filter_suggestions_must_obey_policy = true, extra = "x" }, list[2])
      assert.equal("2 days", list[3].max_cache_age)
    end)

    it("refuses an alias to no anchor, and a merge key over a scalar", function()
      local _, err = policies_of("cache_policies: {daily: *nowhere}\n")
      assert.matches("an alias to no anchor before it", err.message, 1, true)
      _, err = policies_of("cache_policies: {daily: {<<: 5}}\n")
      assert.matches("a merge key (<<) whose value is not a mapping", err.message, 1, true)
    end)
  end)

  describe("shapes (never invented names)", function()
    it("a cache_policies list is decode, not policies named 1, 2", function()
      local _, err = policies_of("cache_policies:\n  - daily\n  - hourly\n")
      assert.equal("decode", err.kind)
      assert.equal("model " .. UUID .. ": cache_policies is a list, not a mapping of names to policies", err.message)
      _, err = policies_of("cache_policies: daily\n")
      assert.matches("cache_policies is a string, not a mapping", err.message, 1, true)
    end)

    it("a reset of policy '1' against a cache_policies list is refused, nothing reset", function()
      srv:script{ yaml = { ["*"] = "cache_policies: [daily, hourly]\n" } }
      local c = cachectl.omni.new{ token = helpers.uid("tok-list"), base_url = srv.base, check_policy = true }
      local res, err = c:reset_cache(UUID, "1")
      c:close()
      assert.is_nil(res)
      assert.equal("decode", err.kind)
      assert.equal(0, #srv:arrivals("POST", "/cache_reset/1"))
      assert.equal(1, #srv:arrivals("GET", "/yaml"))
    end)

    it("names that are not strings: decode naming what they are", function()
      for text, what in pairs{
        ["cache_policies: {1: {}, daily: {}}"] = "a number (1)",
        ["cache_policies: {true: {}}"] = "a boolean (true)",
        ["cache_policies: {~: {}}"] = "null",
        ["cache_policies: {? [a, b] : {}}"] = "a mapping key that is a mapping or a sequence",
      } do
        local _, err = policies_of(text .. "\n")
        assert.equal("decode", err.kind)
        assert.matches(what, err.message, 1, true)
      end
      local list = assert(policies_of("cache_policies: {'1': {}, \"true\": {}}\n"))
      assert.same({ "1", "true" }, { list[1].name, list[2].name })
    end)

    it("a policy that is not a mapping, a default not declared or not a name, a top level not a mapping", function()
      local cases = {
        ["cache_policies: {daily: 24 hours}"] = "cache policy 'daily' is a string, not a mapping of attributes",
        ["cache_policies: {daily: [a]}"] = "cache policy 'daily' is a list, not a mapping of attributes",
        ["cache_policies: {daily: {}}\ndefault_cache_policy: weekly"] =
          "default_cache_policy 'weekly' is not declared in cache_policies",
        ["default_cache_policy: daily"] = "default_cache_policy 'daily' is not declared in cache_policies",
        ["cache_policies: {daily: {}}\ndefault_cache_policy: [daily]"] = "default_cache_policy is a list, not a name",
        ["- cache_policies: {daily: {}}"] = "the model file is a list, not a mapping",
        ["just text"] = "the model file is a string, not a mapping",
      }
      for text, message in pairs(cases) do
        local _, err = policies_of(text .. "\n")
        assert.equal("decode", err.kind)
        assert.equal("model " .. UUID .. ": " .. message, err.message)
      end
    end)

    it("a name in a decode message is cut at 64 bytes (a default of 100 KB)", function()
      local long = string.rep("d", 100000)
      local _, err = policies_of("cache_policies: {daily: {}}\ndefault_cache_policy: " .. long .. "\n")
      assert.equal("model " .. UUID .. ": default_cache_policy '" .. string.rep("d", 64)
        .. "...' is not declared in cache_policies", err.message)
    end)

    it("an empty file, or a null cache_policies, declares none", function()
      for _, text in ipairs{ "", "# nothing\n", "~\n", "cache_policies:\n",
                             "cache_policies: ~\ndefault_cache_policy:\n" } do
        local list = assert(policies_of(text))
        assert.equal(0, #list)
        assert.is_nil(list.default)
      end
    end)

    it("a files answer without model.yaml, or with something else than text, is decode", function()
      for _, files in ipairs{ { ["other.yaml"] = "cache_policies: {x: {}}\n" }, {}, { ["model.yaml"] = 42 },
                              { ["model.yaml"] = { "cache_policies" } } } do
        local _, err = policies_of(nil, files)
        assert.equal("decode", err.kind)
        assert.equal("the answer holds no file 'model.yaml' for model " .. UUID, err.message)
        assert.equal(1, err.attempts)
      end
    end)

    it("more than one document, tags, binary junk", function()
      local _, err = policies_of("cache_policies: {daily: {}}\n---\ncache_policies: {evil: {}}\n")
      assert.matches("more than one YAML document", err.message, 1, true)
      _, err = policies_of("cache_policies: {daily: {n: !!int many}}\n")
      assert.matches("a scalar tagged int that is not one", err.message, 1, true)
      local list = assert(policies_of(
        "cache_policies: !!python/object:os.system {daily: {n: !!str 12, b: !!bool yes}}\n"))
      assert.same({ name = "daily", n = "12", b = true }, list[1])
      for _, junk in ipairs{ "\0\1\2\3", "cache_policies: {\255\254: {}}\n", "\27[31mred: x\n" } do
        _, err = policies_of(junk)
        assert.equal("decode", err.kind)
        assert.matches("not valid YAML", err.message, 1, true)
        assert.is_nil(err.message:find("[%c\128-\255]"))
      end
    end)
  end)

  describe("failures that are not the text's fault", function()
    -- A Lua allocation that fails while the document is read: the clock,
    -- called every 512 events, asks for a string of 1 GB, in a child process
    -- under `ulimit -v` (not under AddressSanitizer, whose shadow memory
    -- reserves terabytes of it).
    it("out of memory is said so, never 'not valid YAML'", function()
      if ASAN then return end
      local script = os.tmpname()
      helpers.write_file(script, string.format([[
package.path, package.cpath = %q, %q
local core, gen = require "cachectl.core", require "support.hostile_yaml"
local clock = function() return #string.rep("x", 2 ^ 30) end
local list, why, reason = core.model_policies(gen.wide(2000), nil, 1, clock)
io.write(tostring(list), "|", tostring(why), "|", tostring(reason))
]], package.path, package.cpath))
      local p = io.popen("sh -c " .. helpers.sh_quote("ulimit -v " .. MEMORY_KB .. " && exec timeout 60 "
        .. LUA .. " " .. script) .. " 2>&1")
      local out = p:read("*a")
      p:close()
      os.remove(script)
      assert.equal("nil|not enough memory to read the YAML|memory", out)
    end)

    it("an error that is not the parser's is raised, not reported as YAML", function()
      local clock = function() error("attempt to index a nil value", 0) end
      assert.error_matches(function() core.model_policies(gen.wide(2000), nil, 1, clock) end,
        "attempt to index a nil value")
    end)

    it("reading stops at the deadline: timeout, whatever the document", function()
      local now = 0
      local clock = function() now = now + 1 return now end
      local list, why, reason = core.model_policies(gen.wide(2000), nil, 1, clock)
      assert.is_nil(list)
      assert.equal("timeout", reason)
      assert.equal("reading the YAML took longer than the call's timeout", why)
      list = assert(core.model_policies(gen.wide(2000), nil, 1e9, clock))
      assert.equal("daily", list[1].name)
    end)
  end)
end)
