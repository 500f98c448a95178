-- The cachectl command's -v/--verbose (one line per event on stderr, in the
-- order they happened), --rate-limit, --coalesce and --redis (with Redis
-- unreachable: the fallback is reported and the call succeeds; with a real
-- Redis: the window lives there, under keys that hold no credential), and
-- that no credential or Redis password shows in any of it.
local server = require "support.mock_server"
local support = require "support.cli"
local helpers = require "support.helpers"
local cjson = require "cjson"

local MODEL = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

local secret, run, lines, literal = support.secret, support.run, support.lines, helpers.literal

describe("cachectl events and fleet flags #redis", function()
  local srv = server.use()

  local function reset(argv, env, secrets)
    local args = { "omni", "reset-cache", "--base-url", srv.base, "--model", MODEL, "--no-check" }
    for _, a in ipairs(argv) do args[#args + 1] = a end
    env = env or {}
    env.OMNI_API_KEY = env.OMNI_API_KEY or secret("t")
    return run(args, env, nil, secrets)
  end

  describe("-v", function()
    it("prints an attempt line per attempt and a wait line per wait, in order, for a call retried once", function()
      local key = secret("k", "fault=503 times=1")
      local status, out, err = run({ "modelslab", "clear-cache", "--base-url", srv.base, "-v" },
        { MODELSLAB_API_KEY = key })
      assert.equal(0, status)
      assert.matches("^modelslab clear%-cache: Cache cleared %(%d+ ms%)\n$", out)
      local l = lines(err)
      assert.equal(3, #l, err)
      local url = literal(srv.base .. "/v5/clear_cache")
      assert.matches("^cachectl: modelslab clear_cache attempt 1: POST " .. url .. " %-> 503 http %(%d+ ms%)$", l[1])
      assert.matches("^cachectl: modelslab clear_cache waits %d+%.%d+ s %(backoff%)$", l[2])
      assert.matches("^cachectl: modelslab clear_cache attempt 2: POST " .. url .. " %-> 200 %(%d+ ms%)$", l[3])
      assert.equal(2, #srv:requests())
    end)

    it("may come before the service", function()
      local key = secret("k", "fault=503 times=1")
      local status, _, err = run({ "-v", "modelslab", "clear-cache", "--base-url", srv.base },
        { MODELSLAB_API_KEY = key })
      assert.equal(0, status)
      local l = lines(err)
      assert.equal(3, #l, err)
      assert.matches("^cachectl: modelslab clear_cache attempt 1: ", l[1])
      assert.matches("^cachectl: modelslab clear_cache attempt 2: ", l[3])
    end)

    it("names the service's Retry-After as the reason of a wait", function()
      local key = secret("k", "fault=503_retry_after times=1")
      local status, _, err = run({ "modelslab", "clear-cache", "--base-url", srv.base, "--verbose" },
        { MODELSLAB_API_KEY = key })
      assert.equal(0, status)
      assert.matches("\ncachectl: modelslab clear_cache waits 1%.%d+ s %(the service's Retry%-After%)\n", err)
    end)

    it("says nothing without -v, and keeps stdout one JSON document with --json", function()
      local key = secret("k", "fault=503 times=1")
      local status, _, err = run({ "modelslab", "clear-cache", "--base-url", srv.base },
        { MODELSLAB_API_KEY = key })
      assert.equal(0, status)
      assert.equal("", err)
      srv:reset()
      local out
      status, out, err = run({ "modelslab", "clear-cache", "--base-url", srv.base, "--json", "-v" },
        { MODELSLAB_API_KEY = key })
      assert.equal(0, status)
      assert.is_true(cjson.decode(out).ok)
      assert.equal(3, #lines(err))
    end)

    it("shows a connection failure as an attempt with no answer", function()
      local base = "http://127.0.0.1:" .. helpers.free_port() .. "/api"
      local status, _, err = run({ "modelslab", "clear-cache", "--base-url", base, "--retries", "0", "-v" },
        { MODELSLAB_API_KEY = secret() })
      assert.equal(75, status)
      assert.matches("^cachectl: modelslab clear_cache attempt 1: POST " .. literal(base)
        .. "/v5/clear_cache %-> no answer connect %(%d+ ms%)\n", err)
    end)
  end)

  describe("--rate-limit", function()
    it("makes the calls of a batch wait their turn, each wait said with -v", function()
      local status, out, err = reset{ "--policy", "a", "--policy", "b", "--policy", "c", "--rate-limit", "1/0.2",
        "-v" }
      assert.equal(0, status)
      assert.equal(3, #lines(out))
      local waits = 0
      for _, line in ipairs(lines(err)) do
        if line:match("waits %d+%.%d+ s %(rate limit%)$") then waits = waits + 1 end
      end
      -- one start per window: the second and third calls waited
      assert.is_true(waits >= 2, err)
      assert.equal(3, #srv:requests())
    end)
  end)

  describe("--coalesce", function()
    it("sends one request for the same policy given twice in a batch", function()
      local status, out = reset{ "--policy", "daily", "--policy", "daily", "--coalesce", "10" }
      assert.equal(0, status)
      local l = lines(out)
      assert.equal(2, #l)
      assert.equal(1, #srv:requests())
      assert.matches("(shared with an identical call)", out, 1, true)
    end)
  end)

  describe("--redis", function()
    local redis_server = require "support.redis_server"
    local closed

    -- The command runs in this process: give it Debian's redis-lua (which
    -- lua5.4 does not find by itself, see the report of issue 12).
    setup(function() redis_server.need_redis_lua() end)
    before_each(function() closed = helpers.free_port() end)

    it("falls back to the process's own limit when Redis is unreachable, says so, hides the password", function()
      local password = "pw-" .. helpers.hex(16)
      local url = "redis://:" .. password .. "@127.0.0.1:" .. closed .. "/0"
      local status, out, err = reset({ "--policy", "daily", "--redis", url, "-v" }, nil, { password })
      assert.equal(0, status, err)
      assert.matches("^omni reset%-cache daily: reset", out)
      assert.matches("cachectl: omni reset_cache: Redis unreachable, the rate limit falls back", err, 1, true)
      assert.equal(1, #srv:requests())
    end)

    it("takes $CACHECTL_REDIS_URL as its default, and the flag wins", function()
      local password = "pw-" .. helpers.hex(16)
      local url = "redis://:" .. password .. "@127.0.0.1:" .. closed .. "/0"
      local status, _, err = reset({ "--policy", "daily", "-v" }, { CACHECTL_REDIS_URL = url }, { password })
      assert.equal(0, status)
      assert.matches("Redis unreachable", err, 1, true)
      -- a flag naming another unreachable Redis: still the fallback, no password anywhere
      local other = "redis://user:" .. password .. "x@127.0.0.1:" .. helpers.free_port() .. "/1"
      status, _, err = reset({ "--policy", "daily", "-v", "--redis", other }, { CACHECTL_REDIS_URL = url },
        { password })
      assert.equal(0, status)
      assert.matches("Redis unreachable", err, 1, true)
    end)

    it("is a usage error for ModelsLab without --rate-limit, and works with it", function()
      local url = "redis://127.0.0.1:" .. closed .. "/0"
      local status, _, err = run({ "modelslab", "clear-queue", "--base-url", srv.base, "--redis", url },
        { MODELSLAB_API_KEY = secret() })
      assert.equal(2, status)
      assert.matches("give --rate-limit N/S too", err, 1, true)
      assert.equal(0, #srv:requests())
      status = run({ "modelslab", "clear-queue", "--base-url", srv.base, "--redis", url, "--rate-limit", "5/1" },
        { MODELSLAB_API_KEY = secret() })
      assert.equal(0, status)
      assert.equal(1, #srv:requests())
    end)

    describe("with a real Redis", function()
      local redis

      setup(function() redis = redis_server.start{ password = "pw-" .. helpers.hex(16) } end)
      teardown(function() if redis then redis:stop() end end)

      it("keeps the window there, under keys without the token", function()
        local token = secret("t")
        local status, _, err = reset({ "--policy", "daily", "--redis", redis:url{ password = true }, "-v" },
          { OMNI_API_KEY = token }, { redis.password })
        assert.equal(0, status, err)
        assert.is_nil(err:find("Redis unreachable", 1, true))
        local keys = redis:client():keys("cachectl:*")
        assert.is_true(#keys >= 1)
        for _, k in ipairs(keys) do
          assert.matches("^cachectl:", k)
          assert.is_nil(k:find(token, 1, true))
        end
      end)
    end)
  end)
end)
