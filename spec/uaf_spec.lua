-- Lua code that runs in the middle of a call — a finalizer run by the garbage
-- collector between attempts, a metamethod — may change the options table
-- and collect its strings. The call must go on with what it started with and
-- never touch freed memory: these run in the AddressSanitizer pass
-- (make spec-asan), where a read of a freed string aborts the run.
--
-- The strings dropped are long (over 40 bytes), so Lua does not intern them:
-- once the table lets go of them, the collector frees them.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"

local LUA54 = _VERSION == "Lua 5.4"

-- A fresh copy of s (long strings are not interned: a new object each time).
local function copy(s) return (s .. "#"):sub(1, -2) end

-- Finalizers on tables, and a C call that allocates nothing on entry (a
-- light C function), come with Lua 5.2: under 5.1 and LuaJIT the finalizer
-- cannot be made to run inside the call rather than on its way in.
local it_finalizer = _VERSION == "Lua 5.1" and pending or it

-- The collector set to run a whole cycle (finalizers included) at its next
-- chance, i.e. at the first allocation inside the call; or back to normal.
local function eager_gc(on)
  if LUA54 then
    -- pause ~0 (0 keeps the old); a step is a whole cycle
    collectgarbage("incremental", on and 1 or 200, 100, on and 40 or 13)
  else
    collectgarbage("setpause", on and 0 or 200)
    collectgarbage("setstepmul", on and 2 ^ 30 or 200)
  end
end

-- Runs call() with eager collection and unreachable garbage whose finalizer
-- runs drop() and then a full collection. Returns call's two values and when
-- the finalizer ran: "during" the call (Lua 5.4), or "before" it.
local function call_with_finalizer(drop, call)
  local phase, fired = "before", nil
  eager_gc(true)
  collectgarbage()
  setmetatable({}, { __gc = function()
    fired = phase
    drop()
    collectgarbage()
  end })
  phase = "during"
  local ok, res, err = pcall(call)
  phase = "after"
  eager_gc(false)
  assert(ok, res)
  return res, err, fired
end

describe("a call whose options change while it runs", function()
  local srv = server.use()

  -- An Omni reset against 429s; between attempts a finalizer drops the token
  -- and the User-Agent and collects. Returns the result, the error, the
  -- expected token and User-Agent, and when the finalizer ran.
  local function reset_with_finalizer(faults)
    local token_part = helpers.secret("UAF-TOKEN-0123456789")
    local ua_part = "uaf-agent/1.0 " .. string.rep("x", 40)
    local opts = {
      token = token_part .. " fault=429_no_retry_after" .. faults, user_agent = copy(ua_part),
      base_url = srv.base, model_id = helpers.UUID, policy = "daily", retries = 2,
    }
    local res, err, fired = call_with_finalizer(function() opts.user_agent, opts.token = nil, nil end,
      function() return core.omni.reset_cache(opts) end)
    return res, err, token_part .. " fault=429_no_retry_after" .. faults, ua_part, fired
  end

  local function assert_every_attempt(token, ua, count)
    local reqs = srv:requests()
    assert.equal(count, #reqs)
    for i, r in ipairs(reqs) do
      assert.equal("/api/v1/models/" .. helpers.UUID .. "/cache_reset/daily", r.path, "attempt " .. i)
      assert.equal("Bearer " .. token, r.headers["authorization"], "attempt " .. i)
      assert.equal(ua, r.headers["user-agent"], "attempt " .. i)
    end
  end

  it_finalizer("keeps its token and User-Agent when a finalizer drops them between attempts #slow", function()
    local res, err, token, ua, fired = reset_with_finalizer(" times=2")
    assert.is_nil(err)
    assert.is_true(res.success)
    assert_every_attempt(token, ua, 3)
    if LUA54 then assert.equal("during", fired) end
  end)

  it_finalizer("masks the dropped token in its error after the last attempt #slow", function()
    local res, err, token, ua, fired = reset_with_finalizer("")
    assert.is_nil(res)
    assert.equal("rate_limited", err.kind)
    assert.equal(3, err.attempts)
    assert_every_attempt(token, ua, 3)
    assert.is_nil(helpers.find_secret(err, token))
    if LUA54 then assert.equal("during", fired) end
  end)

  -- The request of core.modelslab.request succeeded, sent once as given.
  local function assert_sent_once(res, err, ua, body)
    assert.is_nil(err)
    assert.equal("success", res.status)
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    assert.equal("/api/v5/clear_cache", reqs[1].path)
    assert.equal(ua, reqs[1].headers["user-agent"])
    assert.same(body, require("cjson").decode(reqs[1].body))
  end

  -- A body's __index runs Lua code while the request is being read, if the
  -- reader looks anything up in the body through metamethods.
  it("core.modelslab.request keeps base_url, key and User-Agent when the body's __index drops them", function()
    local key_part = helpers.secret("UAF-KEY-0123456789012345")
    local ua_part = "uaf-agent/2.0 " .. string.rep("y", 40)
    local opts
    local body = setmetatable({ note = "hello" }, { __index = function()
      opts.base_url, opts.key, opts.user_agent = nil, nil, nil
      collectgarbage()
      collectgarbage()
    end })
    opts = { key = copy(key_part), user_agent = copy(ua_part), base_url = srv.base .. "/" .. string.rep("/", 40),
             method = "POST", path = "/v5/clear_cache", body = body, retries = 0 }
    local res, err = core.modelslab.request(opts)
    assert_sent_once(res, err, ua_part, { key = key_part, note = "hello" })
  end)

  it_finalizer("core.modelslab.request keeps its strings when a finalizer drops them during encoding", function()
    local key_part = helpers.secret("UAF-KEY-0123456789012345")
    local ua_part = "uaf-agent/3.0 " .. string.rep("z", 40)
    local opts = { key = copy(key_part), user_agent = copy(ua_part), method = "POST", path = "/v5/clear_cache",
                   base_url = srv.base .. string.rep("/", 41), body = { note = "hi" }, retries = 0 }
    local res, err, fired = call_with_finalizer(function()
      opts.base_url, opts.key, opts.user_agent, opts.path, opts.body = nil, nil, nil, nil, nil
    end, function() return core.modelslab.request(opts) end)
    assert_sent_once(res, err, ua_part, { key = key_part, note = "hi" })
    if LUA54 then assert.equal("during", fired) end
  end)
end)
