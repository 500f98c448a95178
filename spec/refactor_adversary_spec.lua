-- An adversary's pass over today's refactors (fleet.lua + perform.lua: the
-- batch's claims and the outcome stored as JSON; openresty.lua; init.lua's
-- by_name; C: error messages on one line, secrets scrubbed), held to the
-- contract (API.md v3, docs/fleet.md, docs/lua.md).
--
-- Each test quotes the contract line it holds the code to and what it got
-- when written ("got:"): every defect found is fixed. Real parts only: the mock, a real redis-server (free
-- loopback port, stopped by its pid), a child Lua process, real nginx.
local string = string
local assert, ipairs, pcall, require, tostring =
  assert, ipairs, pcall, require, tostring

local helpers = require "support.helpers"
local server = require "support.mock_server"
local redis_server = require "support.redis_server"
local nginx_server = require "support.nginx_server"
local lua_child = require "support.lua_child"
local core = require "cachectl.core"
local cachectl = require "cachectl"

local UUID = helpers.UUID
local cjson_encode = require("cjson").encode

-- The claims (`cachectl:co:*`) of a Redis whose value is still a pending mark.
local function pending_claims(red)
  local c = red:client()
  local out = {}
  for _, k in ipairs(c:keys("cachectl:co:*")) do
    local v = c:get(k)
    if v and v:sub(1, 8) == "pending:" then out[#out + 1] = k end
  end
  return out
end

describe("refactor adversary: C error messages", function()
  local srv = server.use()

  -- API.md "Secrets": "The key and the token never appear in err.message,
  -- tostring(err) ... neither as given nor percent-encoded or JSON-escaped (a
  -- service may echo them in those forms)."
  -- got: a token holding U+2028 (or a bidi control such as U+202E) between
  -- pieces of 7 bytes, echoed by the service, came back whole in err.message
  -- and err.code, the separators made spaces: "bad token abcdefg hijklmn
  -- opqrstu here" (cc_push_line put the text on one line before it scrubbed
  -- it, so no run of 8 of the secret's bytes was left to mask).
  for _, sep in ipairs{ "\226\128\168", "\226\128\169", "\226\128\174", "\226\129\166", "\226\128\143" } do
    it(("masks an echoed token that holds %q between short pieces"):format(sep), function()
      local token = "abcdefg" .. sep .. "hijklmn" .. sep .. "opqrstu"
      srv:fault{ path = "/cache_reset/*", status = 401,
        body = '{"error":"E' .. token .. '","message":"bad token ' .. token .. ' here"}' }
      local res, err = core.omni.reset_cache{ token = token, base_url = srv.base, model_id = UUID,
        policy = "daily", retries = 0 }
      assert.is_nil(res)
      assert.equal("http", err.kind)
      for _, text in ipairs{ err.message, err.code, tostring(err) } do
        assert.is_nil(text:find("hijklmn", 1, true), text)
        assert.is_nil(text:find("abcdefg", 1, true), text)
        assert.is_nil(text:find("[\r\n]"), text)
      end
    end)
  end

  -- same line, through core.error(fields, secret): one-lined and scrubbed
  it("core.error masks a secret with a line separator inside, and keeps the line whole", function()
    local secret = "1234567\226\128\168abcdefg\226\128\169ABCDEFG"
    local err = core.error({ kind = "api", message = "echo " .. secret .. "\r\nnext\226\128\174" }, secret)
    assert.is_nil(err.message:find("abcdefg", 1, true), err.message)
    assert.is_nil(err.message:find("1234567", 1, true), err.message)
    assert.is_nil(err.message:find("[\r\n]"), err.message)
    assert.is_nil(err.message:find("\226\128\174", 1, true), err.message)
  end)
end)

describe("refactor adversary: fleet #redis", function()
  local srv, red

  setup(function()
    redis_server.need_redis_lua()
    srv = server.start()
    red = redis_server.start()
  end)
  teardown(function()
    if red then red:stop() end
    if srv then srv:stop() end
  end)
  before_each(function()
    srv:reset()
    red:client():flushall()
  end)

  local function client(token, extra)
    local o = { token = token, base_url = srv.base, coalesce = 10,
      rate_limit = { requests = 60, per = 60, redis = red:url() } }
    for k, v in pairs(extra or {}) do o[k] = v end
    return cachectl.omni.new(o)
  end

  -- API.md "Fleet": "Coalescing never strands and never shares nothing: ...
  -- a first caller that cannot store its outcome releases its claim, and its
  -- waiters go on by themselves at once"; "Events": "an error it [on_event]
  -- raises ends the call cleanly (nothing leaked)".
  -- got: a batch whose on_event raised on a `coalesced` event (an item
  -- sharing an outcome kept in the process) while the batch took its claims
  -- left the claim of an earlier item in Redis as "pending:..." for the whole
  -- window: every other process's identical call waited on it.
  it("a batch raising from on_event while it takes its claims releases the claims it took", function()
    local boom, token = {}, helpers.uid("tok-adv-batch")
    local c = client(token, {
      on_event = function(ev) if ev.type == "coalesced" then error(boom) end end })
    assert.truthy(c:reset_cache(UUID, "hourly"))           -- kept in the process
    local ok, why = pcall(c.reset_caches, c, UUID, { "daily", "hourly" })
    assert.is_false(ok)
    assert.equal(boom, why)
    assert.same({}, pending_claims(red))
    -- and an identical call goes by itself, sending its own (a claim left
    -- pending would hold it past its timeout: nil, timeout)
    local res = assert(client(token, { timeout = 2 }):reset_cache(UUID, "daily"))
    assert.is_nil(res.coalesced)
  end)

  -- API.md "Returns": "err is a table with a metatable whose __tostring
  -- gives one readable line"; change 4: "every error message is put on one
  -- line".
  -- got: an error stored in Redis (by another process, another version, or
  -- anyone who can write there) came back as stored, its metatable set:
  -- tostring(err) was "cachectl: api: line one\nline two ... (code c\nd)".
  it("a stored error read by a waiter is one line; a stored non-error is no outcome", function()
    local token = helpers.uid("tok-adv-stored")
    local opts = { token = token, base_url = srv.base, model_id = UUID, policy = "daily" }
    local key = "cachectl:co:" .. assert(core.identity("omni", "reset_cache", opts)):lower()
    local admin = red:client()
    admin:set(key, cjson_encode{ err = { kind = "api", message = "line one\nline two \226\128\174x",
      code = "c\nd", attempts = 1 } }, "PX", 10000)
    local res, err = client(token):reset_cache(UUID, "daily")
    assert.is_nil(res)
    assert.is_true(err.coalesced)
    assert.equal(0, #srv:requests())
    assert.is_nil(tostring(err):find("[%c\127]"), tostring(err))
    assert.is_nil(tostring(err):find("\226\128\174", 1, true), tostring(err))
    -- not an error of cachectl: the waiter goes by itself (and sends)
    opts.policy = "hourly"
    key = "cachectl:co:" .. assert(core.identity("omni", "reset_cache", opts)):lower()
    admin:set(key, cjson_encode{ err = { kind = "nonsense", attempts = 1 } }, "PX", 10000)
    -- (a waiter taking it as an outcome to wait for would time out first)
    res = client(token, { timeout = 2 }):reset_cache(UUID, "hourly")
    assert.truthy(res)
    assert.equal(1, #srv:requests())
  end)

  -- API.md "Fleet": "A shared success is the same table content with
  -- coalesced = true added".
  -- got: a waiter in another process got 0.12345678901234999 for the first
  -- caller's 0.12345678901234568, and 1234567890123500032 for
  -- 1.2345678901234568e+18 (the outcome went through lua-cjson at 14 digits).
  it("a waiter in another process gets the first caller's numbers exactly", function()
    local token = helpers.uid("tok-adv-num")
    srv:fault{ path = "/cache_reset/*", body = '{"success":true,"n":1234567890123456789,'
      .. '"f":0.1234567890123456789,"small":7,"s":"\\u0000n:5","t":"\\u0000s:x"}' }
    local code = redis_server.prelude() .. ([[
local cachectl = require "cachectl"
local o = cachectl.omni.new{ token = %q, base_url = %q, coalesce = 10,
  rate_limit = { requests = 60, per = 60, redis = %q } }
local r, e = assert(o:reset_cache(%q, "daily"))
io.write(string.format("%%.17g %%.17g %%q %%q", r.n, r.f, r.s, r.t))
]]):format(token, srv.base, red:url(), UUID)
    local out, ok = lua_child.run(code)
    assert.is_true(ok, out)
    local res = assert(client(token):reset_cache(UUID, "daily"))
    assert.is_true(res.coalesced)
    assert.equal(1, #srv:requests())
    assert.equal(out, string.format("%.17g %.17g %q %q", res.n, res.f, res.s, res.t))
    assert.equal(7, res.small)
  end)
end)

describe("refactor adversary: coalesced calls' mistakes", function()
  local srv = server.use()

  -- API.md "Bad input": "A programming mistake raises a Lua error that names
  -- the option" -- the same error whether the call is coalesced or not.
  -- got: with coalesce, "/.../lua/cachectl/perform.lua:55: omni.reset_cache:
  -- option 'user_agent' must be a string, got table" (a line of the library,
  -- where without coalesce the message is "omni.reset_cache: option ...").
  it("a coalesced call raises a mistake as an uncoalesced one does, without a line of the library", function()
    local c = cachectl.omni.new{ token = helpers.uid("tok-adv-mistake"), base_url = srv.base }
    local _, plain = pcall(c.reset_cache, c, UUID, "daily", { user_agent = {} })
    local _, one = pcall(c.reset_cache, c, UUID, "daily", { user_agent = {}, coalesce = 5 })
    local _, batch = pcall(c.reset_caches, c, UUID, { "daily" }, { user_agent = {}, coalesce = 5 })
    assert.equal("omni.reset_cache: option 'user_agent' must be a string, got table", plain)
    assert.equal(plain, one)
    assert.equal(plain, batch)
    assert.equal(0, #srv:requests())
  end)
end)

describe("refactor adversary: Redis going away #redis #slow", function()
  local srv

  setup(function()
    redis_server.need_redis_lua()
    srv = server.start()
  end)
  teardown(function()
    if srv then srv:stop() end
  end)

  -- API.md "Fleet": "waiters stop waiting as soon as the claim is gone"; "A
  -- Redis that is slow, frozen or failing never holds a call past its
  -- timeout". A waiter whose Redis dies while the first caller (another
  -- process) runs goes by itself at once, and succeeds.
  -- (held: a path no spec covered: the waiter's polls failing mid-wait)
  it("a waiter whose Redis is stopped mid-wait goes by itself at once", function()
    local red = redis_server.start()
    local ok, why = pcall(function()
      local token = helpers.uid("tok-adv-gone")
      srv:fault{ path = "/cache_reset/*", hold = 3, times = 1 }
      local code = redis_server.prelude() .. ([[
local cachectl = require "cachectl"
local o = cachectl.omni.new{ token = %q, base_url = %q, coalesce = 10, timeout = 8,
  rate_limit = { requests = 60, per = 60, redis = %q } }
o:reset_cache(%q, "daily")
]]):format(token, srv.base, red:url(), UUID)
      local file = os.tmpname()
      helpers.write_file(file, string.format("package.path = %q\npackage.cpath = %q\n", package.path,
        package.cpath) .. code)
      local lua = lua_child.interpreter()
      assert(helpers.succeeds(("(%s %s; rm -f %s) >/dev/null 2>&1 &"):format(lua, file, file)))
      -- the child's claim is taken once its request is held at the mock
      assert(helpers.eventually(function() local up = #srv:requests() == 1; return up, up end, 250))
      assert(helpers.succeeds(("(sleep 0.7; kill %d) >/dev/null 2>&1 &"):format(red.pid)))
      local started = core.monotonic()
      local c = cachectl.omni.new{ token = token, base_url = srv.base, coalesce = 10, timeout = 8,
        rate_limit = { requests = 60, per = 60, redis = red:url() } }
      local res, err = c:reset_cache(UUID, "daily")
      local took = core.monotonic() - started
      assert.truthy(res, tostring(err))
      assert.is_nil(res.coalesced)
      assert.is_true(took > 0.5 and took < 2, "took " .. took)
    end)
    red:stop()
    assert(ok, why)
  end)
end)

-- A fake Redis: answers every command with an error whose text holds a
-- line feed, an escape sequence and a bidi control.
local FAKE_REDIS = [=[
local socket = require "socket"
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname()
io.stdout:write("port=", port, "\n")
io.stdout:flush()
srv:settimeout(30)
while true do
  local c = srv:accept()
  if not c then break end
  c:settimeout(5)
  while true do
    local line = c:receive("*l")
    if not line then break end
    if line:sub(1, 1) == "*" then
      for _ = 1, tonumber(line:sub(2)) do c:receive("*l"); c:receive("*l") end
      c:send("-ERR refused\nnext line \27[31m\226\128\174reversed\r\n")
      break
    end
  end
  c:close()
end
]=]

describe("refactor adversary: a hostile Redis's words #redis", function()
  local srv = server.use()

  -- API.md "Events": the redis_fallback event reports the fallback; today's
  -- change 4: "every error message is put on one line (C0, DEL, C1 ..., bidi
  -- controls -> spaces)", as the call's own error is under
  -- redis_required.
  -- got: the event's message carried Redis's text as it came: "Redis at
  -- 127.0.0.1:N: ...: ERR refused\nnext line \27[31m\226\128\174reversed".
  it("the redis_fallback event's message is one line without controls", function()
    local file = os.tmpname()
    helpers.write_file(file, string.format("package.path = %q\npackage.cpath = %q\n", package.path,
      package.cpath) .. FAKE_REDIS)
    local p = assert(io.popen(lua_child.interpreter() .. " " .. file .. " & echo pid=$!"))
    local port, pid
    for _ = 1, 2 do
      local line = p:read("*l") or ""
      port = port or line:match("^port=(%d+)$")
      pid = pid or line:match("^pid=(%d+)$")
    end
    local ok, why = pcall(function()
      local events = {}
      local c = cachectl.omni.new{ token = helpers.uid("tok-adv-fake"), base_url = srv.base, timeout = 5,
        rate_limit = { requests = 60, per = 60, redis = "redis://127.0.0.1:" .. port },
        on_event = function(ev) events[#events + 1] = ev end }
      assert.truthy(c:reset_cache(UUID, "daily"))
      local seen = 0
      for _, ev in ipairs(events) do
        if ev.type == "redis_fallback" then
          seen = seen + 1
          assert.is_nil(ev.message:find("[%c\127]"), ev.message)
          assert.is_nil(ev.message:find("\226\128\174", 1, true), ev.message)
          assert.truthy(ev.message:find("refused", 1, true), ev.message)
        end
      end
      assert.equal(1, seen)
      local _, err = c:reset_cache(UUID, "hourly", { rate_limit = { requests = 60, per = 60,
        redis = "redis://127.0.0.1:" .. port, redis_required = true } })
      assert.equal("connect", err.kind)
      assert.is_nil(err.message:find("[%c\127]"), err.message)
    end)
    p:close()
    if pid then helpers.succeeds("kill " .. pid .. " 2>/dev/null") end
    os.remove(file)
    assert(ok, why)
  end)
end)

describe("refactor adversary: models by name (init.lua)", function()
  local srv = server.use()

  local function client()
    return cachectl.omni.new{ token = helpers.uid("tok-adv-name"), base_url = srv.base }
  end

  -- API.md "Omni models": "find_model ... none or several is kind =
  -- "invalid", field = "model""; "Bad input": "err.field naming the option".
  -- got: reset_cache("No\nSuch", "daily") -> invalid with field = "name" and
  -- "name must be non-empty text without control characters": a field of
  -- models{} that reset_cache has no option for (nothing was sent: that held).
  it("a model name with control characters is refused with field 'model' (init.lua by_name)", function()
    local c = client()
    local res, err = c:reset_cache("No\nSuch\226\128\174Model", "daily")
    assert.is_nil(res)
    assert.equal("invalid", err.kind)
    assert.equal("model", err.field)
    assert.equal(0, err.attempts)
    assert.equal(0, #srv:requests())
  end)

  -- API.md "Bad input": "A programming mistake raises a Lua error that names
  -- the option" -- as the same call by UUID does, with the caller's position.
  -- got: by name, the raise carries the library's own position:
  -- ".../lua/cachectl/init.lua:836: omni.reset_cache: unknown option 'modelId'"
  -- (by UUID: "omni.reset_cache: unknown option 'modelId'").
  it("a mistake in the options of a call by name raises as the call by UUID does (init.lua by_name)", function()
    local c = client()
    local _, by_uuid = pcall(c.reset_cache, c, UUID, "daily", { modelId = 1 })
    local _, by_name = pcall(c.reset_cache, c, "Sales", "daily", { modelId = 1 })
    assert.is_nil(tostring(by_name):find("init%.lua"), by_name)
    assert.equal(tostring(by_uuid):gsub("^.-: omni", "omni"), tostring(by_name):gsub("^.-: omni", "omni"))
    assert.equal(0, #srv:requests())
  end)

  -- API.md "Omni models": "find_model(...): the one model whose name is
  -- exactly that ...; none or several is kind = "invalid", field = "model",
  -- with the candidates' ids in the message. Wherever a call takes a model
  -- UUID ... a value that is not a UUID is taken as a model name and
  -- resolved this way first".
  -- got: a list answering two records named "Dup", one with an id that is
  -- not a UUID, made find_model("Dup") return the other, and reset_cache("Dup",
  -- "daily") reset its cache (2 requests): the ambiguity was hidden, where a
  -- single such record is `decode` ("no usable id").
  it("two records of one name, one without a usable id, is not resolved to the other (init.lua)", function()
    srv:fault{ method = "GET", path = "/v1/models", body = { pageInfo = { hasNextPage = false },
      records = { { id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427\n\226\128\174", name = "Dup" },
        { id = UUID, name = "Dup" } } } }
    local c = client()
    local res, err = c:reset_cache("Dup", "daily")
    assert.is_nil(res)
    assert.equal("model", err.field)
    assert.equal(1, #srv:requests())
    assert.is_nil(err.message:find("[\r\n]"))
  end)

  -- held (a path no spec covered): a batch by name whose lookup fails gives
  -- every item the lookup's error, except the items refused before the
  -- lookup, which keep their own (attempts 0); API.md "Fine points":
  -- "attempts counts the requests that were sent".
  it("a batch by name whose lookup fails: refused items keep their own error", function()
    srv:fault{ method = "GET", path = "/v1/models", fault = "503" }
    local c = client()
    local results = c:reset_caches("Sales", { "daily", "", "hourly" }, { retries = 1 })
    assert.equal(3, #results)
    assert.equal("http", results[1].err.kind)
    assert.equal(2, results[1].err.attempts)
    assert.equal("invalid", results[2].err.kind)
    assert.equal("policy", results[2].err.field)
    assert.equal(0, results[2].err.attempts)
    assert.equal("http", results[3].err.kind)
    assert.equal(2, #srv:requests())
  end)
end)

-- nginx: one worker, a thread pool, the mock; each location takes the token,
-- the model and the policy from the query.
local function nginx_conf(root)
  return function(dir, port)
    return nginx_server.conf_head(dir, root, { env = { "MOCK_BASE" } }) .. ([[
    server {
        listen 127.0.0.1:%d;
        location = /ping { content_by_lua_block { ngx.say("pong") } }
        location = /one {
            default_type application/json;
            content_by_lua_block {
                local cjson = require "cjson"
                local omni = require("cachectl").omni.new{ token = ngx.var.arg_token,
                  base_url = os.getenv("MOCK_BASE"), coalesce = 30 }
                local res, err = omni:reset_cache(ngx.var.arg_model, "daily",
                  { timeout = tonumber(ngx.var.arg_timeout) })
                ngx.say(cjson.encode{ ok = res ~= nil, coalesced = res and res.coalesced or false,
                  err = err and tostring(err), kind = err and err.kind, field = err and err.field,
                  attempts = err and err.attempts })
            }
        }
        location = /mistake {
            default_type text/plain;
            content_by_lua_block {
                local omni = require("cachectl").omni.new{ token = ngx.var.arg_token,
                  base_url = os.getenv("MOCK_BASE") }
                local ok, why = pcall(omni.reset_cache, omni, ngx.var.arg_model, "daily",
                  { user_agent = function() end, coalesce = tonumber(ngx.var.arg_coalesce) })
                ngx.say(tostring(ok), " ", tostring(why))
            }
        }
        location = /killed {
            default_type application/json;
            content_by_lua_block {
                local cjson = require "cjson"
                local omni = require("cachectl").omni.new{ token = ngx.var.arg_token,
                  base_url = os.getenv("MOCK_BASE"), coalesce = 30, timeout = 4 }
                local model = ngx.var.arg_model
                local call = ngx.var.arg_batch and function() return omni:reset_caches(model, { "daily" }) end
                  or function() return omni:reset_cache(model, "daily") end
                local t = ngx.thread.spawn(call)
                ngx.sleep(0.2)
                assert(ngx.thread.kill(t))
                local started = ngx.now()
                local res, err = omni:reset_cache(ngx.var.arg_model, "daily")
                ngx.update_time()
                ngx.say(cjson.encode{ ok = res ~= nil, err = err and tostring(err), took = ngx.now() - started })
            }
        }
        location = /batch {
            default_type application/json;
            content_by_lua_block {
                local cjson = require "cjson"
                local omni = require("cachectl").omni.new{ token = ngx.var.arg_token,
                  base_url = os.getenv("MOCK_BASE"), coalesce = 30 }
                local out, names, started = {}, {}, ngx.now()
                for p in (ngx.var.arg_policies or "daily"):gmatch("[^,]+") do names[#names + 1] = p end
                local items = omni:reset_caches(ngx.var.arg_model, names,
                  { timeout = tonumber(ngx.var.arg_timeout) })
                ngx.update_time()
                for i, it in ipairs(items) do
                  out[i] = { ok = it.result ~= nil, coalesced = it.result and it.result.coalesced or false,
                    err = it.err and tostring(it.err), kind = it.err and it.err.kind, took = ngx.now() - started }
                end
                ngx.say(cjson.encode(out))
            }
        }
    }
}
]]):format(port)
  end
end

describe("refactor adversary: coalescing inside nginx #nginx", function()
  local srv, nginx

  setup(function()
    local root = nginx_server.root_dir(debug.getinfo(1, "S").source)
    nginx_server.prepare(root)
    srv = server.start()
    nginx = nginx_server.start{ conf = nginx_conf(root), env = { MOCK_BASE = srv.base } }
  end)
  teardown(function()
    if nginx then nginx:stop() end
    if srv then srv:stop() end
  end)
  before_each(function() srv:reset() end)

  local function path(loc, token, extra)
    return ("/%s?model=%s&token=%s%s"):format(loc, UUID, token, extra or "")
  end

  -- API.md "Fleet": "identical calls ... that start within coalesce seconds
  -- of a first one share that one request's outcome instead of sending their
  -- own: concurrent ones in the process (a batch, several clients)".
  -- got: a single call made while a batch's identical item was in flight in
  -- the same worker sent its own request (2 at the mock, the single call not
  -- coalesced): a batch marked none of its first calls in flight.
  it("a call made while a batch's identical item is in flight in the worker shares its outcome", function()
    srv:fault{ path = "/cache_reset/*", hold = 0.6 }
    local token = helpers.uid("tok-adv-ngx-b")
    local first = nginx_server.send(nginx.port, "GET", path("batch", token))
    require("socket").sleep(0.2)
    local second = nginx_server.send(nginx.port, "GET", path("one", token))
    local b, o = nginx_server.receive(first), nginx_server.receive(second)
    assert.equal(200, b.status, b.body)
    assert.equal(200, o.status, o.body)
    assert.is_true(b.json[1].ok, b.body)
    assert.is_true(o.json.ok, o.body)
    assert.equal(1, #srv:requests())
    assert.is_true(o.json.coalesced, o.body)
  end)

  -- the same line, the other way round.
  -- got: a batch item made while an identical single call was in flight in
  -- the same worker sent its own request (2 at the mock); perform.batch's own
  -- comment said so ("one in flight elsewhere in the worker: the item sends
  -- its own").
  it("a batch item made while an identical call is in flight in the worker shares its outcome", function()
    srv:fault{ path = "/cache_reset/*", hold = 0.6 }
    local token = helpers.uid("tok-adv-ngx-o")
    local first = nginx_server.send(nginx.port, "GET", path("one", token))
    require("socket").sleep(0.2)
    local second = nginx_server.send(nginx.port, "GET", path("batch", token))
    local o, b = nginx_server.receive(first), nginx_server.receive(second)
    assert.equal(200, o.status, o.body)
    assert.equal(200, b.status, b.body)
    assert.is_true(o.json.ok, o.body)
    assert.is_true(b.json[1].ok, b.body)
    assert.equal(1, #srv:requests())
    assert.is_true(b.json[1].coalesced, b.body)
  end)

  -- API.md "Fleet": "The call's timeout covers everything the call does: ...
  -- waiting for a coalesced outcome, and every attempt". A batch item that
  -- waits for an identical call in flight in the worker waits only for what
  -- is left of its timeout once the batch's own items have run.
  -- (guards the fix above: a first version waited a whole timeout more)
  it("a batch item awaiting a call in flight in the worker keeps to the batch's timeout", function()
    srv:fault{ path = "/cache_reset/daily", hold = 3.5, times = 1 }
    srv:fault{ path = "/cache_reset/hourly", hold = 1.5, times = 1 }
    local token = helpers.uid("tok-adv-ngx-w")
    local first = nginx_server.send(nginx.port, "GET", path("one", token))
    require("socket").sleep(0.2)
    local b = nginx_server.request(nginx.port, "GET", path("batch", token, "&policies=hourly,daily&timeout=2.5"))
    nginx_server.receive(first)
    assert.equal(200, b.status, b.body)
    assert.is_true(b.json[1].ok, b.body)
    assert.equal("timeout", b.json[2].kind, b.body)
    assert.is_true(b.json[2].took < 3, b.body)
  end)

  -- API.md "Fleet": "Coalescing never strands ...: waiters stop waiting as
  -- soon as the claim is gone".
  -- got: with the first caller's light thread killed (ngx.thread.kill) while
  -- its request ran, an identical call of the worker waited its whole
  -- timeout (4 s) and ended with "timeout: coalesced call omni.reset_cache:
  -- no outcome from the first caller within 4 s": the mark of the killed call
  -- stayed until the window's end.
  for _, batch in ipairs{ "", "&batch=1" } do
    it("a call whose identical first call was killed goes by itself at once" .. batch, function()
      srv:fault{ path = "/cache_reset/*", hold = 1, times = 1 }
      local res = nginx_server.request(nginx.port, "GET", path("killed", helpers.uid("tok-adv-ngx-k"), batch))
      assert.equal(200, res.status, res.body)
      assert.is_true(res.json.ok, res.body)
      assert.is_true(res.json.took < 0.5, res.body)
    end)
  end

  -- API.md "Bad input": "A programming mistake raises a Lua error that names
  -- the option: ... an option has the wrong type".
  -- got: "unsupported Lua type: LUA_TFUNCTION in the argument" (nginx's
  -- words, from ngx.run_worker_thread) for user_agent = function() end; with
  -- coalesce, "/.../lua/cachectl/perform.lua:52: omni.reset_cache: option
  -- 'user_agent' must be a string, got function" (a line of the library).
  for _, co in ipairs{ "", "&coalesce=5" } do
    it("an option of the wrong type (a function) raises naming it inside nginx" .. co, function()
      local res = nginx_server.request(nginx.port, "GET", path("mistake", helpers.uid("tok-adv-ngx-m"), co))
      assert.equal(200, res.status, res.body)
      assert.equal("false omni.reset_cache: option 'user_agent' must be a string, got function\n", res.body)
      assert.equal(0, #srv:requests())
    end)
  end

  -- API.md "Fine points": "timeout, connect_timeout ... must be > 0 ...,
  -- else invalid"; "Every numeric option outside its documented range ... is
  -- invalid or raises naming the option, never an internal error".
  for _, t in ipairs{ "0", "-1", "nan", "inf", "1e300" } do
    it("a coalesced call with timeout " .. t .. " is invalid at once inside nginx, nothing sent", function()
      local res = nginx_server.request(nginx.port, "GET", path("one", helpers.uid("tok-adv-ngx-t"), "&timeout=" .. t))
      assert.equal(200, res.status, res.body)
      assert.equal("invalid", res.json.kind, res.body)
      assert.equal("timeout", res.json.field, res.body)
      assert.equal(0, res.json.attempts)
      assert.equal(0, #srv:requests())
    end)
  end
end)
