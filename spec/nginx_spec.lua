-- cachectl inside a real nginx (Debian's nginx + lua-nginx-module, LuaJIT):
-- the webhook of examples/openresty, calls offloaded to a thread pool so the
-- worker keeps serving, bad input, misuse, events, and the rate limit shared
-- by workers through a lua_shared_dict or Redis. This file runs under Lua 5.4
-- like the rest: it builds the LuaJIT module, writes nginx.conf into a temp
-- folder, starts nginx, the mock (and Redis) as processes and speaks HTTP
-- with LuaSocket. Windows are computed from the mock's arrival times.
local cjson = require "cjson"
local server = require "support.mock_server"
local helpers = require "support.helpers"
local nginx_server = require "support.nginx_server"
local redis_server = require "support.redis_server"

local read_file, uid = helpers.read_file, helpers.uid
local send, send_on, receive, request = nginx_server.send, nginx_server.send_on, nginx_server.receive,
  nginx_server.request
local busiest_window = nginx_server.busiest_window

local MODEL = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
local MISSING = "00000000-0000-0000-0000-000000000000"
local HOLD = 3             -- seconds the mock holds the "slow" token's calls
-- Starts reserved `per` seconds apart may arrive at the mock a little less
-- than `per` apart: each goes through a thread hop and a loopback connection
-- whose latency varies. Arrivals closer than per - TOLERANCE share a window.
local TOLERANCE = 0.05

local function hook_body(model_id, policies)
  return cjson.encode{ model_id = model_id, policies = policies }
end

-- ---- nginx ---------------------------------------------------------------

-- The webhook location exactly as examples/openresty/nginx.conf has it.
local function example_location(root)
  local conf = assert(read_file(root .. "/examples/openresty/nginx.conf"))
  local at = assert(conf:find("location = /hooks/data-loaded", 1, true), "no webhook location in the example")
  return conf:match("^location = /hooks/data%-loaded%s*%b{}", at)
end

-- Handlers for the test's own locations: the example's handler with other
-- client options, and a few probes. Loaded by the workers from the temp folder.
local HOOKS = [[
local webhook = require "webhook"
local cachectl = require "cachectl"
local cjson = require "cjson.safe"
local getenv = os.getenv
local UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
local M = {}
M.slow = webhook.handler{ client = { token = getenv("CACHECTL_SLOW_TOKEN") } }
M.blocking = webhook.handler{ client = { token = getenv("CACHECTL_SLOW_TOKEN"), thread_pool = false } }
M.limited = webhook.handler{ client = { token = getenv("CACHECTL_LIMITED_TOKEN"),
  rate_limit = { requests = 2, per = 1, shared_dict = "cachectl_limits" } } }
M.per_worker = webhook.handler{ client = { token = getenv("CACHECTL_PER_WORKER_TOKEN"),
  rate_limit = { requests = 2, per = 1 } } }
M.redis = webhook.handler{ client = { token = getenv("CACHECTL_REDIS_TOKEN"),
  rate_limit = { requests = 2, per = 1, redis = getenv("CACHECTL_SPEC_REDIS_URL") } } }
M.secret = webhook.handler{ secret = "hook-secret" }
-- every request answered 503 until the token's faults are used up: the retries take turns too
M.retry_dict = webhook.handler{ client = { token = getenv("CACHECTL_RETRY_DICT_TOKEN"),
  rate_limit = { requests = 2, per = 1, shared_dict = "cachectl_limits" } } }
M.retry_redis = webhook.handler{ client = { token = getenv("CACHECTL_RETRY_REDIS_TOKEN"),
  rate_limit = { requests = 2, per = 1, redis = getenv("CACHECTL_SPEC_REDIS_URL") } } }

function M.keys()
  ngx.say(cjson.encode(ngx.shared.cachectl_limits:get_keys(0)))
end

-- the options tables this worker's module has read (its thread VMs' included)
function M.parsed()
  ngx.say(require("cachectl.core").parsed())
end

local function fields(err)
  if not err then return nil end
  return { kind = err.kind, message = err.message, field = err.field, retry_after = err.retry_after,
           attempts = err.attempts, line = tostring(err) }
end

-- POST /call {token, rate_limit, timeout, policies, raise, batch, check_policy,
-- model}: resets the
-- policies one after another (or as one batch) with an on_event that records
-- every event (and raises, with raise); answers the results, events and what
-- was raised.
function M.call()
  ngx.req.read_body()
  local spec = cjson.decode(ngx.req.get_body_data())
  local out = { events = {}, results = {} }
  local omni = cachectl.omni.new{ token = spec.token, rate_limit = spec.rate_limit, timeout = spec.timeout,
    check_policy = spec.check_policy, model_id = spec.model or UUID, on_event = function(ev)
      out.events[#out.events + 1] = ev
      if spec.raise then error("on_event says no", 0) end
    end }
  local ok, why = pcall(function()
    if spec.batch then
      for i, item in ipairs(omni:reset_caches(nil, spec.policies)) do
        out.results[i] = { ok = item.result ~= nil, err = fields(item.err) }
      end
      return
    end
    for i, policy in ipairs(spec.policies) do
      local res, err = omni:reset_cache(nil, policy)
      out.results[i] = { ok = res ~= nil, err = fields(err) }
    end
  end)
  if not ok then out.raised = tostring(why) end
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(out))
end

-- A call made from the set phase, which cannot yield: the error it raises.
function M.in_set_phase()
  local omni = cachectl.omni.new()
  local ok, err = pcall(omni.reset_cache, omni, UUID, "daily")
  return ok and "no error" or tostring(err)
end

-- Mistakes in nginx's configuration or in the options, and a call from a timer.
function M.misuse()
  local out = {}
  local nopool = cachectl.omni.new{ thread_pool = "no-such-pool" }
  out.pool = select(2, pcall(nopool.reset_cache, nopool, UUID, "daily"))
  local nodict = cachectl.omni.new{ rate_limit = { requests = 5, per = 1, shared_dict = "no_such_dict" } }
  out.dict = select(2, pcall(nodict.reset_cache, nodict, UUID, "daily"))
  local omni = cachectl.omni.new()
  out.option = select(2, pcall(omni.reset_cache, omni, UUID, "daily", { rate_limit = { requests = 5, burst = 2 } }))
  local res, err = omni:reset_cache(UUID, "daily",
    { rate_limit = { requests = 0, per = 1, shared_dict = "cachectl_limits" } })
  out.invalid = { res = res, kind = err and err.kind, field = err and err.field, line = tostring(err) }
  local _, notfound = omni:reset_cache("00000000-0000-0000-0000-000000000000", "daily")
  out.notfound = { kind = notfound.kind, status = notfound.status, line = tostring(notfound) }
  local done
  assert(ngx.timer.at(0, function()
    local r, e = cachectl.omni.new():reset_cache(UUID, "from-timer")
    done = r and r.cache_reset.policy_name or tostring(e)
  end))
  for _ = 1, 400 do
    if done then break end
    ngx.sleep(0.025)
  end
  out.timer = done
  ngx.say(cjson.encode(out))
end
return M
]]

-- nginx's environment. The Redis URL goes under a name of the spec's own: as
-- $CACHECTL_REDIS_URL the Lua layer would make it every client's default.
local ENV = { "OMNI_API_KEY", "OMNI_BASE_URL", "CACHECTL_SLOW_TOKEN", "CACHECTL_LIMITED_TOKEN",
  "CACHECTL_PER_WORKER_TOKEN", "CACHECTL_REDIS_TOKEN", "CACHECTL_SPEC_REDIS_URL", "CACHECTL_RETRY_DICT_TOKEN",
  "CACHECTL_RETRY_REDIS_TOKEN" }

local function nginx_conf(root, workers)
  return function(dir, port)
    local env = {}
    for i, name in ipairs(ENV) do env[i] = "env " .. name .. ";" end
    return ([[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
master_process on;
worker_processes %d;
error_log %s/error.log notice;
pid %s/nginx.pid;
%s
thread_pool cachectl threads=8;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %s/body;
    proxy_temp_path %s/proxy;
    fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi;
    scgi_temp_path %s/scgi;
    lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;%s/examples/openresty/?.lua;%s/?.lua;;";
    lua_package_cpath "%s/build/luajit/?.so;;";
    lua_shared_dict cachectl_limits 1m;
    init_worker_by_lua_block { require("cachectl.openresty").warm("cachectl", 8) }
    server {
        listen 127.0.0.1:%d reuseport;
        add_header X-Worker-Pid $pid always;
        location = /ping { content_by_lua_block { ngx.say("pong") } }
        location = /pid { return 200 $pid; }
        %s
        location = /slow/hooks/data-loaded { content_by_lua_block { require("nginx_spec_hooks").slow() } }
        location = /blocking/hooks/data-loaded { content_by_lua_block { require("nginx_spec_hooks").blocking() } }
        location = /limited/hooks/data-loaded { content_by_lua_block { require("nginx_spec_hooks").limited() } }
        location = /per-worker/hooks/data-loaded {
            content_by_lua_block { require("nginx_spec_hooks").per_worker() }
        }
        location = /redis/hooks/data-loaded { content_by_lua_block { require("nginx_spec_hooks").redis() } }
        location = /secret/hooks/data-loaded { content_by_lua_block { require("nginx_spec_hooks").secret() } }
        location = /retry-dict/hooks/data-loaded {
            content_by_lua_block { require("nginx_spec_hooks").retry_dict() }
        }
        location = /retry-redis/hooks/data-loaded {
            content_by_lua_block { require("nginx_spec_hooks").retry_redis() }
        }
        location = /limit-keys { content_by_lua_block { require("nginx_spec_hooks").keys() } }
        location = /parsed { content_by_lua_block { require("nginx_spec_hooks").parsed() } }
        location = /call { content_by_lua_block { require("nginx_spec_hooks").call() } }
        location = /misuse { content_by_lua_block { require("nginx_spec_hooks").misuse() } }
        location = /set-phase {
            set_by_lua_block $phase_error { return require("nginx_spec_hooks").in_set_phase() }
            return 200 "$phase_error\n";
        }
    }
}
]]):format(workers, dir, dir, table.concat(env, "\n"), dir, dir, dir, dir, dir,
      root, root, root, dir, root, port, example_location(root))
  end
end

-- ---- the mock's log -----------------------------------------------------------

-- The recorded Omni calls whose Bearer token is `token`.
local function calls_with(srv, token)
  local out = {}
  for _, r in ipairs(srv:requests()) do
    if r.headers.authorization == "Bearer " .. token then out[#out + 1] = r end
  end
  return out
end

-- The arrival times (the mock's clock) of the calls with `token`, sorted.
local function arrivals(srv, token)
  local times = {}
  for i, r in ipairs(calls_with(srv, token)) do
    assert(type(r.at) == "number", "the mock's request log carries no arrival time (field 'at')")
    times[i] = r.at
  end
  table.sort(times)
  return times
end

local function show(label, times)
  local rel = {}
  for i, t in ipairs(times) do rel[i] = ("%.3f"):format(t - times[1]) end
  print(("\n  nginx: %s: arrivals at the mock (s after the first): %s"):format(label, table.concat(rel, " ")))
end

-- One webhook call (one policy each) on each of `each` connections held by
-- each of two workers, sent all at once; returns the answers with the pid of
-- the worker that served each.
local function burst(nginx, path, each)
  local sent = {}
  for pid, conns in pairs(nginx_server.connections_per_worker(nginx.port, 2, each)) do
    for _, c in ipairs(conns) do sent[#sent + 1] = { pid = pid, c = c } end
  end
  for i, s in ipairs(sent) do send_on(s.c, "POST", path, hook_body(MODEL, { "p" .. i })) end
  for _, s in ipairs(sent) do s.answer = receive(s.c) end
  return sent
end

-- Asserts that every call of a burst succeeded, served by the worker that
-- held its connection, three by each of the two.
local function assert_burst_ok(sent)
  local per_pid = {}
  for _, s in ipairs(sent) do
    assert.equal(200, s.answer.status, s.answer.body)
    assert.is_true(s.answer.json.ok)
    assert.equal(s.pid, s.answer.headers["x-worker-pid"])
    per_pid[s.pid] = (per_pid[s.pid] or 0) + 1
  end
  local counts = {}
  for _, n in pairs(per_pid) do counts[#counts + 1] = n end
  assert.same({ 3, 3 }, counts)
end

-- Sends a webhook for the held token to `path` and, once the mock holds the
-- call, asks GET /ping. Returns whether the webhook's answer had already
-- arrived when /ping answered, and the webhook's answer.
local function ping_while_held(srv, nginx, path, token)
  srv:reset()
  local slow = send(nginx.port, "POST", path, hook_body(MODEL, { "held" }))
  local ok = helpers.eventually(function()
    local n = #calls_with(srv, token)
    return n > 0, n > 0
  end, 500)
  assert.is_true(ok, "the held call did not reach the mock")
  local ping = request(nginx.port, "GET", "/ping")
  local held_done = nginx_server.answered(slow)
  assert.equal(200, ping.status)
  assert.equal("pong\n", ping.body)
  return held_done, receive(slow)
end

local function call(nginx, spec)
  local res = request(nginx.port, "POST", "/call", cjson.encode(spec))
  assert.equal(200, res.status, res.body)
  return res.json
end

local function types(events)
  local out = {}
  for i, ev in ipairs(events) do out[i] = ev.type end
  return out
end

describe("cachectl in nginx (lua-nginx-module, LuaJIT) #nginx #redis", function()
  local root = nginx_server.root_dir(debug.getinfo(1, "S").source)
  local TOKEN = uid("tok-nginx")
  local SLOW = uid("tok-slow") .. ";hold=" .. HOLD
  local LIMITED, PER_WORKER, REDIS_TOKEN = uid("tok-limited"), uid("tok-per-worker"), uid("tok-redis")
  local RETRY_DICT, RETRY_REDIS = uid("tok-retry-dict") .. ";fault=503;times=2",
    uid("tok-retry-redis") .. ";fault=503;times=2"
  local srv, redis, one, two

  setup(function()
    nginx_server.prepare(root)
    srv = server.start()
    redis = redis_server.start{ password = helpers.secret("redis-pw") }
    local env = { OMNI_API_KEY = TOKEN, OMNI_BASE_URL = srv.base, CACHECTL_SLOW_TOKEN = SLOW,
                  CACHECTL_LIMITED_TOKEN = LIMITED, CACHECTL_PER_WORKER_TOKEN = PER_WORKER,
                  CACHECTL_REDIS_TOKEN = REDIS_TOKEN, CACHECTL_RETRY_DICT_TOKEN = RETRY_DICT,
                  CACHECTL_RETRY_REDIS_TOKEN = RETRY_REDIS }
    env.CACHECTL_SPEC_REDIS_URL = redis:url{ password = true }
    local files = { ["nginx_spec_hooks.lua"] = HOOKS }
    one = nginx_server.start{ conf = nginx_conf(root, 1), files = files, env = env }
    two = nginx_server.start{ conf = nginx_conf(root, 2), files = files, env = env }
  end)

  teardown(function()
    if one then one:stop() end
    if two then two:stop() end
    if srv then srv:stop() end
    if redis then redis:stop() end
    for _, n in ipairs{ one, two } do
      assert.is_false(nginx_server.alive(n.pid), "nginx " .. n.pid .. " still runs")
    end
  end)

  before_each(function() srv:reset() end)

  it("the example's webhook resets the policies and answers with a summary", function()
    local res = request(one.port, "POST", "/hooks/data-loaded",
      hook_body(MODEL, { "daily", "hourly", "weekly reports" }))
    assert.equal(200, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.is_true(res.json.ok)
    assert.same({
      { policy = "daily", ok = true, error = cjson.null },
      { policy = "hourly", ok = true, error = cjson.null },
      { policy = "weekly reports", ok = true, error = cjson.null },
    }, res.json.results)
    local seen = srv:requests()
    assert.equal(3, #seen)
    local paths = {}
    for _, r in ipairs(seen) do
      assert.equal("POST", r.method)
      assert.equal("Bearer " .. TOKEN, r.headers.authorization)
      paths[r.path] = true
    end
    assert.same({
      ["/api/v1/models/" .. MODEL .. "/cache_reset/daily"] = true,
      ["/api/v1/models/" .. MODEL .. "/cache_reset/hourly"] = true,
      ["/api/v1/models/" .. MODEL .. "/cache_reset/weekly%20reports"] = true,
    }, paths)
  end)

  it("answers 502 with each failure when Omni refuses a reset", function()
    local res = request(one.port, "POST", "/hooks/data-loaded", hook_body(MISSING, { "daily" }))
    assert.equal(502, res.status)
    assert.is_false(res.json.ok)
    assert.equal("daily", res.json.results[1].policy)
    assert.is_false(res.json.results[1].ok)
    assert.matches("cachectl: http: Model with id " .. MISSING .. " does not exist (HTTP 404",
      res.json.results[1].error, 1, true)
    assert.is_nil(res.json.results[1].error:find(TOKEN, 1, true))
  end)

  it("refuses bad input with a 4xx and a clear message, and keeps serving", function()
    local cases = {
      { "not json", 400, "not a JSON object" },
      { "", 400, "empty body" },
      { "[1, 2]", 400, "not a JSON object" },
      { cjson.encode{ policies = { "daily" } }, 400, "model_id is required" },
      { hook_body("not-a-uuid", { "daily" }), 400, "model_id must be a UUID" },
      { hook_body(MODEL, "daily"), 400, "policies is required: a list" },
      { hook_body(MODEL, {}), 400, "non-empty list" },
      { cjson.encode{ model_id = MODEL, policies = { a = "daily" } }, 400, "non-empty list" },
      { hook_body(MODEL, { "daily", 7 }), 400, "policies[2] must be a non-empty string" },
      { hook_body(MODEL, { "daily", "" }), 400, "policies[2] must be a non-empty string" },
    }
    for _, case in ipairs(cases) do
      local res = request(one.port, "POST", "/hooks/data-loaded", case[1])
      assert.equal(case[2], res.status, case[1])
      assert.is_false(res.json.ok)
      assert.matches(case[3], res.json.error, 1, true)
    end
    local get = request(one.port, "GET", "/hooks/data-loaded")
    assert.equal(405, get.status)
    assert.equal("POST", get.headers.allow)
    assert.equal(0, #srv:requests())
    local res = request(one.port, "POST", "/hooks/data-loaded", hook_body(MODEL, { "daily" }))
    assert.equal(200, res.status)
    assert.is_true(res.json.ok)
    assert.equal(1, #srv:requests())
  end)

  it("checks the webhook secret when one is set", function()
    local body = hook_body(MODEL, { "daily" })
    assert.equal(401, request(one.port, "POST", "/secret/hooks/data-loaded", body).status)
    assert.equal(401, request(one.port, "POST", "/secret/hooks/data-loaded", body,
      { Authorization = "Bearer wrong" }).status)
    assert.equal(0, #srv:requests())
    local res = request(one.port, "POST", "/secret/hooks/data-loaded", body, { Authorization = "Bearer hook-secret" })
    assert.equal(200, res.status)
  end)

  it("keeps the worker serving while a call is in flight (thread pool): /ping answers first", function()
    local held_done, answer = ping_while_held(srv, one, "/slow/hooks/data-loaded", SLOW)
    assert.is_false(held_done, "the held call had ended before /ping answered")
    assert.equal(200, answer.status)
    assert.is_true(answer.json.ok)
  end)

  it("blocks the worker with the offload turned off (thread_pool = false): /ping answers after", function()
    local held_done, answer = ping_while_held(srv, one, "/blocking/hooks/data-loaded", SLOW)
    assert.is_true(held_done, "/ping answered while the worker should have been blocked")
    assert.equal(200, answer.status)
    assert.is_true(answer.json.ok)
  end)

  it("shares a sliding window between workers through a lua_shared_dict: no second holds more than 2", function()
    local sent = burst(two, "/limited/hooks/data-loaded", 3)
    assert_burst_ok(sent)
    local times = arrivals(srv, LIMITED)
    assert.equal(6, #times)
    show("6 calls, 2 workers, {2, 1} in a shared dict", times)
    assert.is_true(busiest_window(times, 1, TOLERANCE) <= 2)
    -- the window is keyed by a digest, never by the credential
    local keys = request(two.port, "GET", "/limit-keys").body
    assert.matches("cachectl:rl:omni:" .. ("%x"):rep(64) .. ":2:1", keys)
    assert.is_nil(keys:find(LIMITED, 1, true))
  end)

  -- Six calls from two workers under {2 per 1 s}, the first two requests
  -- answered 503: eight requests, the two retries each with a turn of their own.
  for _, case in ipairs{ { "shared dict", "/retry-dict", RETRY_DICT }, { "Redis", "/retry-redis", RETRY_REDIS } } do
    it("takes a turn for every retry (" .. case[1] .. ", 2 workers): no second holds more than 2", function()
      assert_burst_ok(burst(two, case[2] .. "/hooks/data-loaded", 3))
      local times = arrivals(srv, case[3])
      assert.equal(8, #times)
      show("6 calls, the first 2 requests answered 503, {2, 1} in the " .. case[1], times)
      assert.is_true(busiest_window(times, 1, TOLERANCE) <= 2)
    end)
  end

  it("without the shared dict each worker keeps its own window: the same burst exceeds 2 a second", function()
    assert_burst_ok(burst(two, "/per-worker/hooks/data-loaded", 3))
    local times = arrivals(srv, PER_WORKER)
    assert.equal(6, #times)
    show("6 calls, 2 workers, {2, 1} per worker (no shared dict)", times)
    assert.is_true(busiest_window(times, 1, TOLERANCE) > 2)
  end)

  it("ends a call whose turn lies past its timeout with rate_limited, nothing sent", function()
    local token = uid("tok-late")
    local out = call(one, { token = token, timeout = 1, policies = { "a", "b" },
      rate_limit = { requests = 1, per = 30, shared_dict = "cachectl_limits" } })
    assert.is_true(out.results[1].ok)
    local err = out.results[2].err
    assert.equal("rate_limited", err.kind)
    assert.equal(0, err.attempts)
    assert.is_true(err.retry_after > 1 and err.retry_after <= 30, tostring(err.retry_after))
    assert.matches("shared dict 'cachectl_limits'", err.message, 1, true)
    assert.equal(1, #calls_with(srv, token))
  end)

  it("reads each call's options once (in the pool thread; the worker reads none)", function()
    local before = tonumber(request(one.port, "GET", "/parsed").body)
    local out = call(one, { token = uid("tok-parsed"), policies = { "a", "b", "c" } })
    for i = 1, 3 do assert.is_true(out.results[i].ok) end
    assert.equal(3, tonumber(request(one.port, "GET", "/parsed").body) - before)
  end)

  it("replays the thread's events on the main side, in order", function()
    local token = uid("tok-events") .. ";fault=503;times=1"
    local out = call(one, { token = token, policies = { "a" } })
    assert.is_true(out.results[1].ok)
    assert.same({ "attempt", "wait", "attempt" }, types(out.events))
    local first, wait, second = out.events[1], out.events[2], out.events[3]
    for _, ev in ipairs(out.events) do
      assert.equal("omni", ev.service)
      assert.equal("reset_cache", ev.call)
    end
    assert.equal(503, first.status)
    assert.equal("POST", first.method)
    assert.equal(srv.base .. "/v1/models/" .. MODEL .. "/cache_reset/a", first.url)
    assert.equal("backoff", wait.reason)
    assert.equal(200, second.status)
    assert.equal(2, second.attempt)
    assert.is_nil(cjson.encode(out.events):find(token:match("^[^;]+"), 1, true))
    assert.equal(2, #calls_with(srv, token))
  end)

  it("reports the shared dict's wait before the attempt it delays", function()
    local token = uid("tok-wait")
    local out = call(one, { token = token, policies = { "a", "b" },
      rate_limit = { requests = 1, per = 1, shared_dict = "cachectl_limits" } })
    assert.is_true(out.results[1].ok and out.results[2].ok)
    assert.same({ "attempt", "wait", "attempt" }, types(out.events))
    assert.equal("rate_limit", out.events[2].reason)
    assert.is_true(out.events[2].wait > 0 and out.events[2].wait <= 1)
    assert.equal(2, #calls_with(srv, token))
  end)

  it("checks a reset's policy (check_policy): the model file read once, a refused name not sent", function()
    local token = uid("tok-check")
    local out = call(one, { token = token, policies = { "daily", "dialy" }, check_policy = true,
      model = helpers.UUID })
    assert.is_true(out.results[1].ok, cjson.encode(out.results[1]))
    assert.is_false(out.results[2].ok)
    assert.equal("invalid", out.results[2].err.kind)
    assert.matches("did you mean 'daily'", out.results[2].err.message, 1, true)
    local sent = calls_with(srv, token)
    assert.equal(2, #sent)
    assert.equal("GET", sent[1].method)
    assert.equal("POST", sent[2].method)
  end)

  it("raises what on_event raises: no later call is made", function()
    local token = uid("tok-raise")
    local out = call(one, { token = token, policies = { "a", "b" }, raise = true })
    assert.equal("on_event says no", out.raised)
    assert.same({}, out.results)
    assert.equal(1, #calls_with(srv, token))
    local batch = call(one, { token = uid("tok-raise-batch"), policies = { "a", "b", "c" }, raise = true,
      batch = true })
    assert.equal("on_event says no", batch.raised)
  end)

  describe("with rate_limit.redis", function()
    it("shares the window through Redis between workers: no second holds more than 2", function()
      assert_burst_ok(burst(two, "/redis/hooks/data-loaded", 3))
      local times = arrivals(srv, REDIS_TOKEN)
      assert.equal(6, #times)
      show("6 calls, 2 workers, {2, 1} in Redis", times)
      assert.is_true(busiest_window(times, 1, TOLERANCE) <= 2)
      local admin = redis:client()
      local keys = admin:keys("cachectl:*")
      assert.is_true(#keys >= 1)
      for _, key in ipairs(keys) do
        assert.is_nil(key:find(REDIS_TOKEN, 1, true))
        assert.is_true(admin:pttl(key) > 0)
      end
    end)

    it("falls back to the shared dict when Redis cannot be reached, and says so", function()
      local token = uid("tok-fallback")
      local url = "redis://127.0.0.1:" .. helpers.free_port() .. "/0"
      local out = call(one, { token = token, policies = { "a" }, rate_limit = { requests = 2, per = 1,
        redis = url, shared_dict = "cachectl_limits", } })
      assert.is_true(out.results[1].ok)
      assert.same({ "redis_fallback", "attempt" }, types(out.events))
      assert.matches("Redis", out.events[1].message, 1, true)
      assert.equal(1, #calls_with(srv, token))
    end)

    it("fails with connect and sends nothing when Redis is required and cannot be reached", function()
      local token = uid("tok-required")
      local url = "redis://:pw-" .. token .. "@127.0.0.1:" .. helpers.free_port() .. "/0"
      local out = call(one, { token = token, policies = { "a" }, rate_limit = { requests = 2, per = 1,
        redis = url, redis_required = true } })
      local err = out.results[1].err
      assert.equal("connect", err.kind)
      assert.equal(0, err.attempts)
      assert.matches("Redis", err.message, 1, true)
      assert.is_nil(err.line:find("pw-", 1, true))
      assert.same({}, out.events)
      assert.equal(0, #calls_with(srv, token))
    end)
  end)

  it("raises clear errors for misuse, and works from a timer", function()
    local res = request(one.port, "GET", "/set-phase")
    assert.equal(200, res.status)
    assert.matches("cachectl: calls cannot run in nginx's set phase", res.body, 1, true)
    assert.matches("ngx.timer.at", res.body, 1, true)

    local out = cjson.decode(request(one.port, "GET", "/misuse").body)
    assert.matches("thread pool no-such-pool not found", out.pool, 1, true)
    assert.matches("thread_pool no-such-pool threads=", out.pool, 1, true)
    assert.matches("lua_shared_dict no_such_dict", out.dict, 1, true)
    assert.matches("option 'rate_limit' takes only 'requests', 'per'", out.option, 1, true)
    assert.same("invalid", out.invalid.kind)
    assert.same("rate_limit", out.invalid.field)
    assert.matches("^cachectl: invalid: rate_limit must be", out.invalid.line)
    -- errors from the thread get the core's __tostring back
    assert.equal("http", out.notfound.kind)
    assert.equal(404, out.notfound.status)
    assert.matches("^cachectl: http: Model with id .* %(HTTP 404, code 404, 1 attempt%)$", out.notfound.line)
    assert.equal("from-timer", out.timer)
  end)
end)

describe("cachectl outside nginx #slow", function()
  local srv = server.use()

  it("takes the nginx options, never loads cachectl.openresty, and keeps the window in the process", function()
    local cachectl = require "cachectl"
    assert.is_nil(package.loaded["cachectl.openresty"])
    local token = uid("tok-plain")
    local omni = cachectl.omni.new{ token = token, base_url = srv.base, thread_pool = "cachectl",
      rate_limit = { requests = 2, per = 1, shared_dict = "cachectl_limits" } }
    local items = omni:reset_caches(MODEL, { "a", "b", "c", "d" })
    for _, item in ipairs(items) do assert.is_nil(item.err) end
    assert.truthy(omni:reset_cache(MODEL, "e", { rate_limit = { shared_dict = "cachectl_limits" } }))
    omni:close()
    assert.is_nil(package.loaded["cachectl.openresty"])
    local times = arrivals(srv, token)
    assert.equal(5, #times)
    assert.is_true(busiest_window({ times[1], times[2], times[3], times[4] }, 1, TOLERANCE) <= 2)
  end)
end)
