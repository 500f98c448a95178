-- Checked reset adversary: an adversarial pass over Omni resets with
-- check_policy and by model name, after a single checked reset became a
-- reset batch of one (lua/cachectl/init.lua reset_batch; by_name, named,
-- search, pick), held to the contract (API.md "Omni models and cache
-- policies", "Returns", "Bad input", "Events", "Secrets", "Fine points";
-- docs/lua.md "Checking a policy before a reset", "Finding models"). A
-- DEFECT test reproduces one defect (the comment above it says what it got
-- before the fix); the others hold what held. What was sent is counted at
-- the mock (its request log).
local cjson = require "cjson"
local server = require "support.mock_server"
local helpers = require "support.helpers"
local nginx_server = require "support.nginx_server"
local cachectl = require "cachectl"

local UUID = helpers.UUID                                    -- "Sales": daily, hourly, weekly report
local MISSING = helpers.MISSING_UUID                         -- the mock answers 404
local FORBIDDEN = "6ba7b814-9dad-11d1-80b4-00c04fd430c8"     -- its YAML answers 403
local YAML = "/v1/models/*/yaml"

-- An error's fields that a caller sees (nil for none).
local function fields(err)
  if not err then return nil end
  return { kind = err.kind, field = err.field, message = err.message, status = err.status,
           attempts = err.attempts, coalesced = err.coalesced }
end

-- Each event as "type call status attempt reason".
local function shapes(events)
  local out = {}
  for i, ev in ipairs(events) do
    out[i] = table.concat({ ev.type, tostring(ev.call), tostring(ev.status), tostring(ev.attempt),
                            tostring(ev.reason) }, " ")
  end
  return out
end

-- "METHOD path" of every request the mock logged, in order.
local function wire(srv)
  local out = {}
  for i, r in ipairs(srv:requests()) do out[i] = r.method .. " " .. r.path end
  return out
end

describe("checked reset adversary: a single checked reset and a batch of one", function()
  local srv = server.use()

  local function client(opts, events)
    return cachectl.omni.new(helpers.merge({ token = helpers.uid("tok-chk"), base_url = srv.base,
      check_policy = true, on_event = helpers.recorder(events) }, opts))
  end

  -- One checked reset made as reset_cache and as reset_caches of one name,
  -- each on a fresh client and a fresh mock (faults: rules added first):
  -- what each returned, its events and what reached the mock.
  local function both(case)
    local out = {}
    for _, how in ipairs{ "single", "batch" } do
      srv:reset()
      for _, rule in ipairs(case.faults or {}) do srv:fault(rule) end
      local events = {}
      local c = client(case.client, events)
      local res, err
      if how == "single" then
        res, err = c:reset_cache(case.model, case.policy, case.opts)
      else
        local item = c:reset_caches(case.model, { case.policy }, case.opts)[1]
        res, err = item.result, item.err
      end
      out[how] = { ok = res ~= nil and res.success, coalesced = res and res.coalesced, err = fields(err),
                   events = shapes(events), wire = wire(srv) }
      c:close()
    end
    assert.same(out.single, out.batch)
    return out.single
  end

  it("agree, and hold the contract: declared, undeclared, near, unreadable, bad, unchecked", function()
    local ok = both{ model = UUID, policy = "weekly report" }
    assert.is_true(ok.ok)
    assert.equal(2, #ok.wire)
    assert.matches("^GET .*/yaml%?fileName=model%.yaml&fullyResolved=true$", ok.wire[1])

    local near = both{ model = UUID, policy = "dialy" }
    assert.same({ "invalid", "policy", 1 }, { near.err.kind, near.err.field, near.err.attempts })
    assert.matches("did you mean 'daily'?", near.err.message, 1, true)
    assert.equal(1, #near.wire)
    local far = both{ model = UUID, policy = "zzzzzz" }
    assert.is_nil(far.err.message:find("did you mean", 1, true))
    assert.matches("(known: daily, hourly, weekly report)", far.err.message, 1, true)

    for _, case in ipairs{ { MISSING, 404 }, { FORBIDDEN, 403 } } do
      local r = both{ model = case[1], policy = "daily" }
      assert.same({ "http", case[2], 1 }, { r.err.kind, r.err.status, r.err.attempts })
      assert.equal(1, #r.wire)
    end
    local e500 = both{ model = UUID, policy = "daily", faults = { { method = "GET", path = YAML, status = 500 } } }
    assert.same({ "http", 500, 1 }, { e500.err.kind, e500.err.status, e500.err.attempts })
    local e503 = both{ model = UUID, policy = "daily", opts = { retries = 1 },
      faults = { { method = "GET", path = YAML, fault = "503" } } }
    assert.same({ "http", 503, 2 }, { e503.err.kind, e503.err.status, e503.err.attempts })
    assert.same({ "GET", "GET" }, { e503.wire[1]:match("^%u+"), e503.wire[2]:match("^%u+") })

    local notyaml = both{ model = UUID, policy = "daily", faults = { { method = "GET", path = YAML,
      body = { files = { ["model.yaml"] = "a: [b\n  c: :" }, version = 1 } } } }
    assert.same({ "decode", 1 }, { notyaml.err.kind, notyaml.err.attempts })
    assert.matches("not valid YAML", notyaml.err.message, 1, true)
    local deep = both{ model = UUID, policy = "daily", faults = { { method = "GET", path = YAML,
      body = { files = { ["model.yaml"] = string.rep("[", 100) .. string.rep("]", 100) }, version = 1 } } } }
    assert.same({ "decode", 1 }, { deep.err.kind, deep.err.attempts })
    assert.matches("depth limit", deep.err.message, 1, true)

    for _, policy in ipairs{ "", ".", "..", string.rep("p", 70 * 1024) } do
      local bad = both{ model = UUID, policy = policy }
      assert.same({ "invalid", "policy", 0 }, { bad.err.kind, bad.err.field, bad.err.attempts })
      assert.same({}, bad.wire)
    end
    local unchecked = both{ model = UUID, policy = "zzzzzz", opts = { check_policy = false } }
    assert.is_true(unchecked.ok)
    assert.same({ "attempt reset_cache 200 1 nil" }, unchecked.events)
    local default_model = both{ client = { model_id = UUID }, policy = "dialy" }
    assert.same(near.err, default_model.err)
  end)

  it("raises the same for a policy of the wrong type, and sends nothing", function()
    for _, policy in ipairs{ 5, true, {} } do
      local c = client(nil, {})
      local ok1, single = pcall(c.reset_cache, c, UUID, policy)
      local ok2, batch = pcall(c.reset_caches, c, UUID, { policy })
      assert.is_false(ok1)
      assert.is_false(ok2)
      assert.equal(tostring(single), tostring(batch))
      assert.matches("option 'policy' must be a string", tostring(single), 1, true)
    end
    assert.equal(0, srv:count())
  end)

  it("a client's default policy and a positional nil: checked like the policy given", function()
    local events = {}
    local c = client({ policy = "dialy" }, events)
    local _, err = c:reset_cache(UUID, nil)
    assert.same({ "invalid", "policy", 1 }, { err.kind, err.field, err.attempts })
    assert.equal(1, srv:count())
  end)

  it("coalesce: two clients' identical checked resets, one reset sent, the second shared", function()
    for _, how in ipairs{ "single", "batch" } do
      srv:reset()
      local token, events = helpers.uid("tok-chk-coal"), { {}, {} }
      local out = {}
      for i = 1, 2 do
        local c = cachectl.omni.new{ token = token, base_url = srv.base, check_policy = true, coalesce = 30,
          on_event = helpers.recorder(events[i]) }
        if how == "single" then
          out[i] = c:reset_cache(UUID, "daily")
        else
          out[i] = c:reset_caches(UUID, { "daily" })[1].result
        end
      end
      assert.is_nil(out[1].coalesced)
      assert.is_true(out[2].coalesced)
      assert.same({ "attempt model_yaml 200 1 nil", "coalesced reset_cache nil nil nil" }, shapes(events[2]))
      assert.equal(1, srv:count{ method = "POST" })
      assert.equal(2, srv:count{ method = "GET" })       -- each client reads the model file once
    end
  end)

  -- Contract: "`attempts` counts the requests the call sent" (docs/lua.md,
  -- Checking a policy); "attempts counts every request sent for it: the
  -- lookup's pages ..., the policy guard's read and the reset" (Finding
  -- models); "Every option of a call is checked before anything is sent for
  -- it — the policy guard's YAML read and a model-name lookup included;
  -- `attempts` counts the requests that were sent" (API.md, Fine points).
  -- Got: a reset that failed after the read reported the reset's requests
  -- only: a 503 with retries = 1 gave attempts 2 for 3 requests (single and
  -- batch alike), 3 for 4 by name; a rate-limit refusal after the read gave
  -- 0 for the 1 request sent.
  it("DEFECT: a checked reset that fails after the read counts the read in attempts #slow", function()
    local faults = { { method = "POST", path = "/cache_reset/*", fault = "503" } }
    local failed = both{ model = UUID, policy = "daily", opts = { retries = 1 }, faults = faults }
    assert.same({ "http", 503 }, { failed.err.kind, failed.err.status })
    assert.equal(3, #failed.wire)
    assert.equal(3, failed.err.attempts)

    local named = both{ model = "Sales", policy = "daily", opts = { retries = 1 }, faults = faults }
    assert.equal(4, #named.wire)
    assert.equal(4, named.err.attempts)

    -- one turn in 60 s: the read takes it; the reset's turn comes after the deadline
    local limited = both{ model = UUID, policy = "daily", opts = { rate_limit = { requests = 1, per = 60 } } }
    assert.equal("rate_limited", limited.err.kind)
    assert.equal(1, #limited.wire)
    assert.equal(1, limited.err.attempts)
  end)

  it("a tiny rate-limit window: the read and the reset each take a turn (a wait before the reset)", function()
    local r = both{ model = UUID, policy = "daily", opts = { rate_limit = { requests = 1, per = 0.2 } } }
    assert.is_true(r.ok)
    assert.same({ "attempt model_yaml 200 1 nil", "wait reset_cache nil 1 rate_limit",
                  "attempt reset_cache 200 1 nil" }, r.events)
  end)

  it("on_event raising during the read or the reset ends the call; close() inside raises, changes nothing", function()
    for _, during in ipairs{ "model_yaml", "reset_cache" } do
      for _, how in ipairs{ "single", "batch" } do
        srv:reset()
        local c = client({ on_event = function(ev)
          if ev.call == during then error("stop in " .. during, 0) end
        end })
        local ok, why = pcall(function()
          if how == "single" then return c:reset_cache(UUID, "daily") end
          return c:reset_caches(UUID, { "daily" })
        end)
        assert.is_false(ok)
        assert.equal("stop in " .. during, why)
        assert.equal(during == "model_yaml" and 1 or 2, srv:count())
        c:close()
      end
    end
    local closer
    closer = client({ on_event = function()
      local ok, why = pcall(closer.close, closer)
      assert.is_false(ok)
      assert.matches("cannot close a client while one of its calls runs", why, 1, true)
    end })
    assert(closer:reset_cache(UUID, "daily"))
    assert(closer:reset_caches(UUID, { "hourly" })[1].result)
    closer:close()
  end)
end)

describe("checked reset adversary: by model name", function()
  local srv = server.use()

  local function client(opts)
    return cachectl.omni.new(helpers.merge({ token = helpers.uid("tok-name"), base_url = srv.base,
      check_policy = true }, opts))
  end

  -- The model list answers these records for every name.
  local function listing(records)
    srv:fault{ method = "GET", path = "/v1/models", body = { records = records, pageInfo = { hasNextPage = false } } }
  end

  it("one match, none, several, a match without a UUID id; an almost-UUID is a name", function()
    local _, near = client():reset_cache("Sales", "dialy")
    assert.same({ "invalid", "policy", 2 }, { near.kind, near.field, near.attempts })
    local _, none = client():reset_cache("3f2504e0-4f89-41d3-9a0c-0305e82c330", "daily")
    assert.same({ "invalid", "model", 1 }, { none.kind, none.field, none.attempts })
    local _, several = client():reset_cache("Finance", "daily")
    assert.same({ "invalid", "model", 1 }, { several.kind, several.field, several.attempts })
    assert.matches("6ba7b811-9dad-11d1-80b4-00c04fd430c8", several.message, 1, true)
    assert.equal(0, srv:count{ method = "POST" })
    srv:reset()
    listing{ { id = "not-a-uuid", name = "Odd" } }
    local _, odd = client():reset_cache("Odd", "daily")
    assert.same({ "decode", "model", 1 }, { odd.kind, odd.field, odd.attempts })
    srv:reset()
    listing{ { id = "not-a-uuid", name = "Odd" }, { id = UUID, name = "Odd" } }
    local two = client():reset_caches("Odd", { "daily" })[1].err
    assert.same({ "invalid", "model", 1 }, { two.kind, two.field, two.attempts })
    assert.matches("1 with an id that is not a UUID", two.message, 1, true)
    assert.equal(0, srv:count{ method = "POST" })
  end)

  it("a name with control characters or the token: one line, masked, nothing sent for a refused one", function()
    local token = helpers.secret("tok")
    local c = client{ token = token }
    local _, bad = c:reset_cache("x " .. token .. "\n\27[31my", "daily")
    assert.same({ "invalid", "model", 0 }, { bad.kind, bad.field, bad.attempts })
    assert.equal(0, srv:count())
    local _, unknown = c:reset_cache("x " .. token, "daily")
    assert.same({ "invalid", "model", 1 }, { unknown.kind, unknown.field, unknown.attempts })
    for _, text in ipairs{ bad.message, tostring(bad), unknown.message, tostring(unknown) } do
      assert.is_nil(text:find(token, 1, true), text)
      assert.is_nil(text:find("[\r\n]"), text)
    end
  end)

  it("reset_caches by name: bad items send nothing, not the lookup; the good ones are checked and sent", function()
    local c = client()
    local all_bad = c:reset_caches("Sales", { "..", "" })
    assert.same({ "invalid", "invalid" }, { all_bad[1].err.kind, all_bad[2].err.kind })
    assert.equal(0, srv:count())
    local mixed = c:reset_caches("Sales", { "daily", "..", "dialy" }, { coalesce = 30 })
    assert.is_true(mixed[1].result.success)
    assert.same({ "invalid", "policy", 0 }, { mixed[2].err.kind, mixed[2].err.field, mixed[2].err.attempts })
    assert.same({ "invalid", "policy", 2 }, { mixed[3].err.kind, mixed[3].err.field, mixed[3].err.attempts })
    assert.equal(1, srv:count{ path = "/v1/models" })
    assert.equal(1, srv:count{ method = "GET", path = YAML })
    assert.equal(1, srv:count{ method = "POST" })
    -- name + check_policy + coalesce: a second identical reset is shared, nothing more sent
    local again = c:reset_cache("Sales", "daily", { coalesce = 30 })
    assert.is_true(again.coalesced)
    assert.equal(3, srv:count())
  end)
end)

describe("checked reset adversary: cache_policies's mode and fully_resolved", function()
  local srv = server.use()

  -- Contract (docs/lua.md, Cache policies): fully resolved in the combined
  -- mode (Omni's default), the only one that resolves; an explicit value is
  -- the caller's, sent as given.
  it("fullyResolved=true only with mode nil or combined; explicit values sent as given", function()
    for _, mode in ipairs{ false, "combined", "staged" } do
      for _, resolved in ipairs{ "absent", true, false } do
        for _, where in ipairs{ "call", "client" } do
          srv:reset()
          local o = {}
          if mode then o.mode = mode end
          if resolved ~= "absent" then o.fully_resolved = resolved end
          local c = cachectl.omni.new(helpers.merge({ token = helpers.uid("tok-mode"), base_url = srv.base },
            where == "client" and o or nil))
          c:cache_policies(UUID, where == "call" and o or nil)
          c:cache_policies("Sales", where == "call" and o or nil)
          local want = resolved
          if want == "absent" then want = (not mode or mode == "combined") and true or nil end
          local gets = wire(srv)
          assert.equal(3, #gets)
          for _, i in ipairs{ 1, 3 } do
            local label = tostring(mode) .. " " .. tostring(resolved) .. " " .. where .. ": " .. gets[i]
            assert.equal(want == nil and "" or tostring(want), gets[i]:match("fullyResolved=(%a+)") or "", label)
            assert.equal(mode or "", gets[i]:match("mode=(%a+)") or "", label)
          end
        end
      end
    end
  end)
end)

describe("checked reset adversary: a timeout on a kept-alive connection #slow", function()
  local srv = server.use()

  -- Contract: err.message says "what happened, in words" (API.md, Returns);
  -- a timeout the read uses up is `timeout` (docs/lua.md, Checking a
  -- policy). Got: on a connection kept alive from an earlier call (its
  -- connect time is 0), a transfer that libcurl timed out a moment before
  -- the call's own deadline was reported as "could not connect within
  -- connect_timeout (10s)" (and marked retryable), about one time in ten
  -- with timeouts of 0.15 s and more (src/engine.c read_failure; none seen
  -- below 0.1 s); inside nginx, a timer's checked reset whose model file was
  -- held past the timeout said so.
  it("DEFECT: is never reported as 'could not connect' (the connection was made)", function()
    srv:fault{ method = "GET", path = YAML, hold = 0.5 }
    local c = cachectl.omni.new{ token = helpers.uid("tok-keep"), base_url = srv.base, rate_limit = false,
      retries = 0, check_policy = true }
    local messages = {}
    for _ = 1, 40 do
      assert(c:reset_cache(UUID, "daily", { check_policy = false }))       -- a connection kept alive
      local _, err = c:reset_cache(UUID, "daily", { timeout = 0.15 })     -- the read reuses it
      assert.equal("timeout", err.kind)
      assert.equal(1, err.attempts)
      messages[err.message] = true
    end
    assert.same({ ["no complete answer within timeout (0.15s)"] = true }, messages)
    assert.equal(40, srv:count{ method = "POST" })
    assert.equal(40, srv:count{ method = "GET" })
  end)
end)

describe("checked reset adversary: timeouts #slow", function()
  local srv = server.use()

  it("the read (held, or its on_event) or the lookup using up the timeout: timeout, the reset not sent", function()
    local sleep = require("socket").sleep
    for _, how in ipairs{ "single", "batch" } do
      for _, case in ipairs{ "held", "on_event", "lookup" } do
        srv:reset()
        if case == "held" then srv:fault{ method = "GET", path = YAML, hold = 0.8 } end
        local c = cachectl.omni.new{ token = helpers.uid("tok-slow"), base_url = srv.base, check_policy = true,
          timeout = 0.4, on_event = function(ev)
            if case ~= "held" and ev.type == "attempt" then sleep(0.5) end
          end }
        local model = case == "lookup" and "Sales" or UUID
        local err
        if how == "single" then
          err = select(2, c:reset_cache(model, "daily"))
        else
          err = c:reset_caches(model, { "daily" })[1].err
        end
        local label = how .. " " .. case
        assert.equal("timeout", err.kind, label)
        assert.equal(1, err.attempts, label)
        assert.equal(1, srv:count(), label)
        assert.equal(0, srv:count{ method = "POST" }, label)
      end
    end
  end)
end)

-- ---- inside nginx ----------------------------------------------------------

local HOOKS = [==[
local cachectl = require "cachectl"
local cjson = require "cjson.safe"
local M = {}
local function fields(err)
  if not err then return nil end
  return { kind = err.kind, message = err.message, field = err.field, attempts = err.attempts,
           status = err.status, coalesced = err.coalesced }
end
local function one_call(omni, c)
  if c.batch then
    local out = {}
    for i, item in ipairs(omni:reset_caches(c.model, c.policies, c.opts)) do
      out[i] = { ok = item.result ~= nil, coalesced = item.result and item.result.coalesced, err = fields(item.err) }
    end
    return { items = out }
  end
  local res, err = omni:reset_cache(c.model, c.policy, c.opts)
  return { ok = res ~= nil, coalesced = res and res.coalesced, err = fields(err) }
end
-- the calls of `spec`, one after another or (threads) in light threads at once
local function run(spec)
  local out = { events = {}, results = {} }
  local copts = spec.client
  copts.on_event = function(ev)
    out.events[#out.events + 1] = { type = ev.type, call = ev.call, status = ev.status }
  end
  local omni = cachectl.omni.new(copts)
  local threads = {}
  for i, c in ipairs(spec.calls) do
    if spec.threads then
      threads[i] = ngx.thread.spawn(one_call, omni, c)
    else
      local ok, r = pcall(one_call, omni, c)
      out.results[i] = ok and r or { raised = tostring(r) }
    end
  end
  for i, th in ipairs(threads) do
    local ok, r = ngx.thread.wait(th)
    out.results[i] = ok and r or { raised = tostring(r) }
  end
  return out
end
function M.run()
  ngx.req.read_body()
  local spec = cjson.decode(ngx.req.get_body_data())
  local out
  if spec.timer then
    assert(ngx.timer.at(0, function() out = run(spec) end))
    for _ = 1, 800 do
      if out then break end
      ngx.sleep(0.025)
    end
  else
    out = run(spec)
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(out or { late = true }))
end
return M
]==]

local function nginx_conf(root)
  return function(dir, port)
    return nginx_server.conf_head(dir, root, { env = { "OMNI_BASE_URL" }, threads = 4, connections = 64 })
      .. ([[
    server {
        listen 127.0.0.1:%d;
        location = /ping { content_by_lua_block { ngx.say("pong") } }
        location = /run { content_by_lua_block { require("checked_hooks").run() } }
    }
}
]]):format(port)
  end
end

describe("checked reset adversary: inside nginx #nginx", function()
  local root = nginx_server.root_dir(debug.getinfo(1, "S").source)
  local srv, nginx

  setup(function()
    nginx_server.prepare(root)
    srv = server.start()
    nginx = nginx_server.start{ conf = nginx_conf(root), files = { ["checked_hooks.lua"] = HOOKS },
      env = { OMNI_BASE_URL = srv.base } }
  end)

  teardown(function()
    if nginx then nginx:stop() end
    if srv then srv:stop() end
  end)

  local function go(spec, faults)
    srv:reset()
    for _, rule in ipairs(faults or {}) do srv:fault(rule) end
    local res = nginx_server.request(nginx.port, "POST", "/run", cjson.encode(spec))
    assert.equal(200, res.status, res.body)
    assert.is_nil(res.json.late, "the timer did not end")
    return res.json, res.body
  end

  for _, timer in ipairs{ false, true } do
    local where = timer and "from a timer" or "from a request handler"

    it(where .. ": single, batch and by name checked; a refused name not sent, the read kept", function()
      local out, body = go{ timer = timer, client = { token = helpers.uid("tok-ngx"), check_policy = true },
        calls = { { model = UUID, policy = "daily" }, { model = UUID, policy = "dialy" },
                  { batch = true, model = UUID, policies = { "hourly", "dialy", ".." } },
                  { model = "Sales", policy = "dialy" },
                  { batch = true, model = "Sales", policies = { "weekly report" } } } }
      local r = out.results
      assert.is_true(r[1].ok, body)
      assert.same({ "invalid", "policy", 0 }, { r[2].err.kind, r[2].err.field, r[2].err.attempts })
      assert.matches("did you mean 'daily'", r[2].err.message, 1, true)
      assert.is_true(r[3].items[1].ok, body)
      assert.same({ "invalid", 0 }, { r[3].items[2].err.kind, r[3].items[2].err.attempts })
      assert.same({ "invalid", 0 }, { r[3].items[3].err.kind, r[3].items[3].err.attempts })
      assert.same({ "invalid", "policy", 1 }, { r[4].err.kind, r[4].err.field, r[4].err.attempts })  -- the lookup
      assert.is_true(r[5].items[1].ok, body)
      assert.equal(1, srv:count{ method = "GET", path = YAML })
      assert.equal(1, srv:count{ path = "/v1/models" })
      assert.equal(1, srv:count{ method = "POST", path = "/cache_reset/daily" })
      assert.equal(1, srv:count{ method = "POST", path = "/cache_reset/hourly" })
      assert.equal(1, srv:count{ method = "POST", path = "/cache_reset/weekly%20report" })
      assert.equal(5, srv:count())
    end)

    it(where .. ": two identical checked resets at once with coalesce: one reset, the other shared", function()
      local out, body = go{ timer = timer, threads = true,
        client = { token = helpers.uid("tok-ngx-coal"), check_policy = true, coalesce = 30 },
        calls = { { model = "Sales", policy = "daily" }, { batch = true, model = "Sales", policies = { "daily" } } } }
      local a, b = out.results[1], out.results[2].items[1]
      assert.is_true(a.ok, body)
      assert.is_true(b.ok, body)
      assert.is_true((a.coalesced == true) ~= (b.coalesced == true), body)
      assert.equal(1, srv:count{ method = "POST" })
    end)

    -- Contract and what it got before the fix: see "DEFECT: a checked reset
    -- that fails after the read counts the read in attempts" above (3
    -- requests, attempts 2, in nginx too).
    it("DEFECT: " .. where .. ": a checked reset that fails after the read counts the read in attempts", function()
      local token = helpers.uid("tok-ngx-fail")
      local out, body = go({ timer = timer, client = { token = token, check_policy = true, retries = 1 },
        calls = { { model = UUID, policy = "daily" }, { batch = true, model = UUID, policies = { "daily" } } } },
        { { method = "POST", path = "/cache_reset/*", fault = "503" } })
      local err = out.results[1].err
      assert.same({ "http", 503, 3 }, { err.kind, err.status, err.attempts }, body)
      -- the policies kept: the batch's reset alone (2 attempts)
      assert.equal(2, out.results[2].items[1].err.attempts, body)
      assert.equal(5, srv:count())
    end)

    it(where .. ": a read held past the timeout: timeout, attempts 1, no reset sent", function()
      local out, body = go({ timer = timer, client = { token = helpers.uid("tok-ngx-held"), check_policy = true,
        timeout = 0.3 }, calls = { { model = UUID, policy = "daily" }, { batch = true, model = UUID,
        policies = { "daily" } } } }, { { method = "GET", path = YAML, hold = 0.6 } })
      for _, err in ipairs{ out.results[1].err, out.results[2].items[1].err } do
        assert.same({ "timeout", 1 }, { err.kind, err.attempts }, body)
        assert.matches("no complete answer within timeout", err.message, 1, true)
      end
      assert.equal(0, srv:count{ method = "POST" })
    end)
  end
end)
