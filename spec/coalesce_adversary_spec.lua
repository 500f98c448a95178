-- An adversary's pass over coalescing (`coalesce = seconds`) as rewritten:
-- the outcome stored in Redis by the C core (core.outcome_encode and
-- core.outcome_decode, src/outcome.c), a single call run as a batch of one
-- (cachectl.perform: kept outcomes, in-flight marks, Redis claims, settle,
-- await) and cachectl.fleet's claims. Held to the contract (API.md "Fleet",
-- "Secrets"; docs/fleet.md "Coalescing across the fleet"; docs/lua.md
-- "Coalescing"): a shared outcome is the same content as the first caller's,
-- marked coalesced = true; coalescing never strands and never shares nothing.
--
-- The tests named "DEFECT: ..." failed when written (what they got is
-- quoted) and pass with the fix; the others are what held. Real parts only:
-- the mock counts what was sent; a real redis-server; a real nginx.
local string, os, io = string, os, io
local assert, ipairs, pairs, pcall, rawget, select, setmetatable, tostring, type =
  assert, ipairs, pairs, pcall, rawget, select, setmetatable, tostring, type

local helpers = require "support.helpers"
local server = require "support.mock_server"
local cjson = require "cjson"
local core = require "cachectl.core"
local cachectl = require "cachectl"

local UUID = helpers.UUID
local mtype = rawget(math, "type") -- nil before Lua 5.3
-- The interpreter running this spec, for child processes.
local LUA = type(rawget(_G, "jit")) == "table" and "luajit" or "lua" .. _VERSION:match("%d+%.%d+")

-- A number as a program can tell it: its text, its subtype (5.3+) and the
-- sign of a zero.
local function number_of(v)
  return string.format("%s|%s|%s", tostring(v), mtype and mtype(v) or "", tostring(1 / v))
end

-- Every number of a value, by path, as number_of tells it.
local function numbers(v, path, out)
  out = out or {}
  path = path or ""
  if type(v) == "number" then
    out[path] = number_of(v)
  elseif type(v) == "table" then
    for k, x in pairs(v) do numbers(x, path .. "." .. tostring(k), out) end
  end
  return out
end

-- An answer holding every kind of number a service may send, as the core
-- decodes it (cjson), as the first caller gets it.
local ODD = '{"success":true,"i":3,"f":3.0,"e":1e15,"z":-0.0,"nz":-0,"half":0.5,"p53":9007199254740993,'
  .. '"max":1e308,"third":0.333333333333333314829616256247,"tiny":5e-324,"list":[1,2.0,-0.0,[4]]}'

describe("coalesce adversary", function()
  describe("outcomes as stored (core.outcome_encode, core.outcome_decode)", function()
    -- docs/fleet.md: "Numbers keep their exact value across the fleet ...
    -- the waiters read both back as the first caller had them". The core
    -- decodes a service's answer with cjson, whose numbers are floats: the
    -- first caller has 3.0, 1e+15 and -0.0; a waiter had 3, 1000000000000000
    -- and 0 under Lua 5.3+ ("3.0|float|inf" vs "3|integer|inf", and -0.0 came
    -- back 0: 1 / x gave inf where the first caller's gave -inf), while a
    -- waiter in the same process (a kept outcome) had the floats.
    it("DEFECT: a number keeps its subtype and the sign of its zero (Lua 5.3+: floats stayed floats)", function()
      local res = cjson.decode(ODD)
      local o = assert(core.outcome_decode(assert(core.outcome_encode(res, nil))))
      o.res.coalesced = nil
      assert.same(numbers(res), numbers(o.res))
      -- and an integer the first caller had (fleet.coalesce's run may return one) stays an integer
      local ints = { n = 7, big = 2 ^ 53 + 2, neg = -12345678901234 }
      if mtype then ints = { n = 7, big = 9007199254740993 + 0, neg = -12345678901234, max = 9223372036854775807 } end
      o = assert(core.outcome_decode(assert(core.outcome_encode(ints, nil))))
      o.res.coalesced = nil
      assert.same(numbers(ints), numbers(o.res))
    end)

    -- A shared success is "the same table content": res is a table; a
    -- shared failure "the same error". A stored text whose res is a string,
    -- a number, true or JSON null, or that holds neither res nor err, gave a
    -- table whose res the Lua layer indexed ("perform.lua:113: attempt to
    -- index a string value (local 'res')"), or a call returning nil, nil. An
    -- err for which nothing was sent is never shared either.
    it("DEFECT: a text whose res is no table, with neither res nor err, or an err that sent nothing is none", function()
      for _, text in ipairs{ '{"res":"x"}', '{"res":5}', '{"res":true}', '{"res":null}', '{}',
                             '{"res":null,"err":null}', '{"err":"boom"}', '{"err":[]}',
                             '{"err":{"kind":"http","message":"m","attempts":0}}',
                             '{"err":{"kind":"rate_limited","message":"m"}}' } do
        assert.is_nil(core.outcome_decode(text), text)
      end
      -- what a first caller stores still reads back
      assert.is_true(core.outcome_decode('{"res":{}}').res.coalesced)
      assert.equal("http", core.outcome_decode('{"err":{"kind":"http","message":"m","attempts":1}}').err.kind)
    end)

    it("held: strings that look like tags, NUL bytes, keys, empty tables, nesting near the limit", function()
      local res = { a = "\0n:5", b = "\0s:x", c = "\0", d = "a\0b", e = "\0\0n:1", ["\0n:7"] = "key",
        ["1"] = "one", list = { "x", cjson.null, "z" }, empty = {}, s = "\1\31\127 \"\\/" }
      local o = assert(core.outcome_decode(assert(core.outcome_encode(res, nil))))
      assert.is_true(o.res.coalesced)
      o.res.coalesced = nil
      assert.same(res, o.res)
      -- nesting: what cjson can write (with the outcome's own level) is stored; deeper is not
      local deep = {}
      for _ = 1, 997 do deep = { deep } end
      assert.is_table(core.outcome_decode(assert(core.outcome_encode(deep, nil))))
      for _ = 1, 5 do deep = { deep } end
      assert.is_nil(core.outcome_encode(deep, nil))
      assert.is_nil(core.outcome_decode('{"res":' .. string.rep("[", 5000) .. string.rep("]", 5000) .. "}"))
    end)

    it("held: cyclic tables, functions and metatables: nil or the plain content, the caller's left alone", function()
      local cyc = { a = 1 }
      cyc.self = cyc
      local err = core.error{ kind = "http", message = "m", attempts = 1 }
      err.self = err
      assert.is_nil(core.outcome_encode(cyc, nil))
      assert.is_nil(core.outcome_encode(nil, err))
      assert.is_nil(core.outcome_encode({ f = print }, nil))
      local hostile = setmetatable({ a = "\0x" }, {
        __index = function() error("index") end, __newindex = function() error("newindex") end,
        __pairs = function() error("pairs") end, __len = function() error("len") end })
      local o = assert(core.outcome_decode(assert(core.outcome_encode(hostile, nil))))
      assert.equal("\0x", o.res.a)
      assert.equal("\0x", rawget(hostile, "a"))
    end)

    it("held: an error with every field comes back the same, its secret masked wherever it was", function()
      local secret = helpers.secret("TOK")
      local err = core.error{ kind = "rate_limited", message = "slow\tdown " .. secret, attempts = 3, status = 429,
        retry_after = 1.5, code = "E" .. secret }
      err.field, err.candidates = "policy", { "a", secret }
      local text = assert(core.outcome_encode(nil, err, { secret }))
      assert.is_nil(text:find(secret, 1, true))
      local o = assert(core.outcome_decode(text))
      assert.equal(core.error_mt, getmetatable(o.err))
      assert.same({ "rate_limited", 3, 429, 1.5, "E***", "policy", { "a", "***" }, true },
        { o.err.kind, o.err.attempts, o.err.status, o.err.retry_after, o.err.code, o.err.field, o.err.candidates,
          o.err.coalesced })
      assert.is_nil(tostring(o.err):find(secret, 1, true))
      assert.is_nil(o.err.message:find("[%c]"))
    end)
  end)
end)

describe("coalesce adversary with a Redis #redis", function()
  local redis_server = require "support.redis_server"
  local fixed = require "support.fixed_server"
  local srv = server.use()
  local redis, admin, PW

  setup(function()
    redis_server.need_redis_lua()
    PW = helpers.secret("RPW")
    redis = redis_server.start{ password = PW }
    admin = redis:client()
  end)
  teardown(function()
    if admin then pcall(admin.quit, admin) end
    if redis then redis:stop() end
  end)

  local function key_of(token, base, policy)
    return "cachectl:co:" .. core.identity("omni", "reset_cache", { token = token, base_url = base,
      model_id = UUID, policy = policy or "daily" }):lower()
  end

  local function client(token, opts)
    return cachectl.omni.new(helpers.merge({ token = token, base_url = srv.base, coalesce = 30, timeout = 2,
      rate_limit = { requests = 60, per = 60, redis = redis:url{ password = true } } }, opts))
  end

  -- The stored outcome of a first caller in a child process, read back here
  -- from Redis: the numbers of both.
  it("DEFECT: a waiter across the fleet gets the first caller's numbers as it had them", function()
    local answers = fixed.start{ ["POST /api/v1/models/" .. UUID .. "/cache_reset/daily"] = { 200, ODD } }
    local ok, why = pcall(function()
      local token, url = helpers.uid("tok-numbers"), redis:url{ password = true }
      local script = os.tmpname()
      helpers.write_file(script, redis_server.prelude() .. string.format([[
local cjson = require "cjson"
local c = require("cachectl").omni.new{ token = %q, base_url = %q, coalesce = 30,
  rate_limit = { requests = 60, per = 60, redis = %q } }
local res = assert(c:reset_cache(%q, "daily"))
local mtype, out = rawget(math, "type"), {}
for k, v in pairs(res) do
  if type(v) == "number" then
    out[k] = string.format("%%s|%%s|%%s", tostring(v), mtype and mtype(v) or "", tostring(1 / v))
  end
end
io.write(cjson.encode(out))
]], token, answers.base, url, UUID))
      local p = io.popen(LUA .. " " .. script .. " 2>&1")
      local text = p:read("*a")
      p:close()
      os.remove(script)
      local first = assert(select(2, pcall(cjson.decode, text)), text)
      local res = assert(cachectl.omni.new{ token = token, base_url = answers.base, coalesce = 30,
        rate_limit = { requests = 60, per = 60, redis = url } }:reset_cache(UUID, "daily"))
      assert.is_true(res.coalesced)
      local here = {}
      for k, v in pairs(res) do
        if type(v) == "number" then here[k] = number_of(v) end
      end
      assert.same(first, here)
    end)
    answers:stop()
    assert(ok, why)
  end)

  -- A value under the claim's key that is no outcome a first caller stores:
  -- the call raised "attempt to index a string value (local 'res')" (a
  -- res that is a string, number, true or null), or returned nil, nil ({}).
  it("DEFECT: a stored text that is no outcome never breaks the waiter: it sends its own", function()
    for _, text in ipairs{ '{"res":"x"}', '{"res":5}', '{"res":true}', '{"res":null}', '{}', '{"err":"boom"}',
                           '{"err":{"kind":"http","message":"m","attempts":0}}' } do
      srv:reset()
      local token = helpers.uid("tok-bad")
      admin:set(key_of(token, srv.base), text, "PX", 60000)
      local ok, res, err = pcall(client(token).reset_cache, client(token), UUID, "daily")
      assert.is_true(ok, text .. ": " .. tostring(res))
      assert.is_table(res, text .. ": " .. tostring(err))
      assert.is_nil(res.coalesced, text)
      assert.equal(1, #srv:requests(), text)
    end
  end)

  -- "waiters stop waiting as soon as the claim is gone": a value that is
  -- neither a claim (pending:...) nor an outcome (a JSON object) is no
  -- claim, yet the waiter polled it until its timeout ("timeout: coalesced
  -- call omni.reset_cache: no outcome from the first caller within 2 s",
  -- nothing sent), while text opening with "{" that is no outcome went at
  -- once. Left without a TTL, such a value failed every identical call.
  it("DEFECT: a value that is neither a claim nor an outcome does not hold the waiter to its timeout", function()
    for _, text in ipairs{ "garbage", "[1,2]", "", "PENDING", " {}" } do
      srv:reset()
      local token = helpers.uid("tok-garbage")
      admin:set(key_of(token, srv.base), text)
      local res, err = client(token, { timeout = 2 }):reset_cache(UUID, "daily")
      assert.is_table(res, string.format("%q: %s", text, tostring(err)))
      assert.equal(1, #srv:requests(), text)
    end
  end)

  it("held: a claim held by another (pending:...) is waited for; a wrong-type key and a huge value go on", function()
    local token = helpers.uid("tok-pending")
    admin:set(key_of(token, srv.base), "pending:other", "PX", 60000)
    local res, err = client(token, { timeout = 0.5 }):reset_cache(UUID, "daily")
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    assert.matches("coalesced call omni.reset_cache", err.message, 1, true)
    assert.equal(0, err.attempts)
    assert.equal(0, #srv:requests())
    -- a list under the key (WRONGTYPE): Redis failed for this call, which goes by itself
    token = helpers.uid("tok-list")
    admin:rpush(key_of(token, srv.base), "x")
    assert.is_table((client(token):reset_cache(UUID, "daily")))
    assert.equal(1, #srv:requests())
    srv:reset()
    -- an outcome of 4 MB is shared whole
    token = helpers.uid("tok-huge")
    admin:set(key_of(token, srv.base), '{"res":{"big":"' .. string.rep("x", 4 * 1024 * 1024) .. '"}}', "PX", 60000)
    res = assert(client(token):reset_cache(UUID, "daily"))
    assert.is_true(res.coalesced)
    assert.equal(4 * 1024 * 1024, #res.big)
    assert.equal(0, #srv:requests())
  end)

  it("held: the Redis password is in no key, stored outcome, message or event", function()
    local events = {}
    local token = helpers.uid("tok-pw")
    local c = client(token, { on_event = helpers.recorder(events) })
    local _, e1 = c:reset_cache(helpers.MISSING_UUID, "daily")
    local _, e2 = client(token):reset_cache(helpers.MISSING_UUID, "daily")
    assert.equal("http", e1.kind)
    assert.is_true(e2.coalesced)
    for _, k in ipairs(admin:keys("cachectl:*")) do
      assert.is_nil(k:find(PW, 1, true))
      local v = admin:type(k) == "string" and admin:get(k) or ""
      assert.is_nil(v:find(PW, 1, true), k)
    end
    for _, e in ipairs{ e1, e2 } do assert.is_nil(tostring(e):find(PW, 1, true)) end
    for _, ev in ipairs(events) do assert.is_nil(helpers.find_secret(ev, PW)) end
  end)
end)

describe("coalesce adversary inside nginx #nginx", function()
  local nginx_server = require "support.nginx_server"
  local socket = require "socket"
  local srv, nginx

  local function conf(root)
    return function(dir, port)
      return nginx_server.conf_head(dir, root, { env = { "MOCK_BASE" } }) .. ([[
    server {
        listen 127.0.0.1:%d;
        location = /ping { content_by_lua_block { ngx.say("pong") } }
        location = /reset {
            default_type application/json;
            content_by_lua_block {
                local cjson = require "cjson"
                local omni = require("cachectl").omni.new{ token = ngx.var.arg_token,
                  base_url = os.getenv("MOCK_BASE"), coalesce = 30, timeout = 20 }
                local out = {}
                if ngx.var.arg_batch then
                  for i, r in ipairs(omni:reset_caches(ngx.var.arg_model, { "daily", "hourly" })) do
                    out[i] = { ok = r.result ~= nil, coalesced = r.result and r.result.coalesced or false,
                      err = r.err and tostring(r.err) }
                  end
                else
                  local res, err = omni:reset_cache(ngx.var.arg_model, ngx.var.arg_policy)
                  out[1] = { ok = res ~= nil, coalesced = res and res.coalesced or false, err = err and tostring(err) }
                end
                ngx.say(cjson.encode(out))
            }
        }
    }
}
]]):format(port)
    end
  end

  setup(function()
    local root = nginx_server.root_dir(debug.getinfo(1, "S").source)
    nginx_server.prepare(root)
    srv = server.start()
    nginx = nginx_server.start{ conf = conf(root), env = { MOCK_BASE = srv.base } }
  end)
  teardown(function()
    if nginx then nginx:stop() end
    if srv then srv:stop() end
  end)

  -- docs/lua.md: "Inside nginx ... a later identical call (a single call or
  -- a batch item) waits for the first one's outcome". A batch kept its
  -- outcomes only once all its items were done: a call waiting in the
  -- worker for the batch's first item, done while the batch still waited
  -- for its second (in flight in a third request), found neither the mark
  -- nor an outcome and sent its own (2 requests for daily; the waiter's
  -- result not coalesced).
  it("DEFECT: a waiter for a batch's item shares it while the batch still waits for another item", function()
    srv:fault{ path = "/cache_reset/hourly", hold = 3 }
    srv:fault{ path = "/cache_reset/daily", hold = 1 }
    local base = "/reset?model=" .. UUID .. "&token=" .. helpers.uid("tok-ngx")
    local hourly = nginx_server.send(nginx.port, "GET", base .. "&policy=hourly")  -- in flight 3 s
    socket.sleep(0.3)
    local batch = nginx_server.send(nginx.port, "GET", base .. "&batch=1")  -- daily sent, hourly awaited
    socket.sleep(0.3)
    local daily = nginx_server.send(nginx.port, "GET", base .. "&policy=daily")  -- awaits the batch's daily
    local got = {}
    for i, c in ipairs{ hourly, batch, daily } do
      local res = nginx_server.receive(c)
      assert.equal(200, res.status, res.body)
      got[i] = res.json
    end
    assert.same({ { ok = true, coalesced = false } }, got[1])
    assert.same({ { ok = true, coalesced = false }, { ok = true, coalesced = true } }, got[2])
    assert.same({ { ok = true, coalesced = true } }, got[3])
    assert.equal(1, #srv:requests{ path = "/cache_reset/daily" })
    assert.equal(1, #srv:requests{ path = "/cache_reset/hourly" })
  end)
end)
