-- An options table is read once per call (issue 22): whatever the Lua layer
-- does with a call (a plain call, a call with options of its own, a batch
-- item, a coalesced call, a coalesced batch), the core reads its options
-- once. core.parsed() counts the tables read into requests.
local assert, ipairs, require, rawget, _G = assert, ipairs, require, rawget, _G

local core = require "cachectl.core"
local cachectl = require "cachectl"
local server = require "support.mock_server"

local MODEL = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

describe("one parse per call", function()
  local srv = server.use()

  local function client(opts)
    opts = opts or {}
    opts.token, opts.base_url = "tok-parse-once-0123", srv.url .. "/api"
    return cachectl.omni.new(opts)
  end

  -- How many options tables `fn` made the core read.
  local function parses(fn)
    local before = core.parsed()
    fn()
    return core.parsed() - before
  end

  it("a plain call, and one with options of its own", function()
    local c = client()
    assert.equal(1, parses(function() assert(c:reset_cache(MODEL, "daily")) end))
    assert.equal(1, parses(function() assert(c:reset_cache(MODEL, "daily", { timeout = 5, retries = 1 })) end))
    local ml = cachectl.modelslab.new{ key = "key-parse-once-0123", base_url = srv.url .. "/api" }
    assert.equal(1, parses(function() assert(ml:clear_queue{ product = "face_gen" }) end))
  end)

  -- A call without arguments reads the client's options once, for the
  -- client's life: each call sends a copy of that request.
  it("a call without arguments: read once per client, then copies sent", function()
    local seen = 0
    local ml = cachectl.modelslab.new{ key = "key-parse-once-0123", base_url = srv.url .. "/api",
      on_event = function(ev) if ev.type == "attempt" then seen = seen + 1 end end }
    srv:reset()
    assert.equal(1, parses(function() assert(ml:clear_cache()) end))
    assert.equal(0, parses(function() assert(ml:clear_cache()) end))
    assert.equal(0, parses(function() assert(ml:clear_cache()) end))
    local log = srv:requests()
    assert.equal(3, #log)
    for _, r in ipairs(log) do assert.equal('{"key":"key-parse-once-0123"}', r.body) end
    assert.equal(3, seen)
    -- a client whose options the core refuses at the call: each call says so, nothing sent
    local bad = cachectl.modelslab.new{ key = "key-parse-once-0123", base_url = "ftp://127.0.0.1/api" }
    for _ = 1, 2 do
      local res, err = bad:clear_cache()
      assert.is_nil(res)
      assert.same({ "invalid", "base_url" }, { err.kind, err.field })
    end
    assert.equal(3, #srv:requests())
  end)

  -- The kept request holds the client's on_event, which may hold the client:
  -- a dropped client is still collected (its connections with it). Not
  -- before Lua 5.2 (and not in LuaJIT): without ephemerons, a client's
  -- private state that refers back to the client keeps it, on_event alone.
  local ephemerons = _VERSION ~= "Lua 5.1" and not rawget(_G, "jit")
  local it_ephemerons = ephemerons and it or pending
  it_ephemerons("a dropped client whose on_event refers to it is collected, kept request and all", function()
    local weak = setmetatable({}, { __mode = "k" })
    do
      local ml
      ml = cachectl.modelslab.new{ key = "key-parse-once-0123", base_url = srv.url .. "/api",
        on_event = function() return ml end }
      assert(ml:clear_cache())
      weak[ml] = true
    end
    for _ = 1, 4 do collectgarbage() end
    assert.is_nil(next(weak))
  end)

  it("a kept request (core.prepare(..., true)) is sent as often as asked, as a copy", function()
    local s = core.session()
    local p = assert(core.prepare("omni", "reset_cache", { token = "tok-parse-once-0123",
      base_url = srv.url .. "/api", model_id = MODEL, policy = "daily" }, true))
    local send = s:bind("omni", "reset_cache", p)
    srv:reset()
    assert.equal(0, parses(function()
      assert(send())
      assert(send({ this = "is ignored" }))
      assert(s:call("omni", "reset_cache", p))
    end))
    assert.equal(3, #srv:requests())
    assert.error_matches(function() s:call("omni", "list_models", p) end, "prepared for omni.reset_cache")
    s:close()
  end)

  it("each item of a batch", function()
    local c = client()
    assert.equal(3, parses(function()
      for _, r in ipairs(c:reset_caches(MODEL, { "a", "b", "c" })) do assert(r.result, r.err) end
    end))
  end)

  it("a coalesced call, and a coalesced batch (identity and request from one reading)", function()
    local c = client{ coalesce = 5 }
    assert.equal(1, parses(function() assert(c:reset_cache(MODEL, "one")) end))
    -- the second is shared from the first's outcome: read once to know it is the same
    assert.equal(1, parses(function() assert(c:reset_cache(MODEL, "one").coalesced) end))
    assert.equal(2, parses(function()
      for _, r in ipairs(c:reset_caches(MODEL, { "x", "y" })) do assert(r.result, r.err) end
    end))
    assert.equal(3, #srv:requests())
  end)

  it("a prepared request is sent once, and only as the call it was prepared for", function()
    local s = core.session()
    local p = assert(core.prepare("omni", "reset_cache", { token = "tok-parse-once-0123",
      base_url = srv.url .. "/api", model_id = MODEL, policy = "daily" }))
    assert.matches("^%x+$", p:identity())
    assert.error_matches(function() s:call("omni", "list_models", p) end, "prepared for omni.reset_cache")
    assert(s:call("omni", "reset_cache", p))
    assert.error_matches(function() s:call("omni", "reset_cache", p) end, "sent already")
    local _, err = core.prepare("omni", "reset_cache", { token = "t", base_url = srv.url .. "/api",
      model_id = "nope", policy = "daily" })
    assert.same({ "invalid", "model_id" }, { err.kind, err.field })
    s:close()
  end)
end)
