-- cachectl inside a real nginx (Debian's nginx + lua-nginx-module, LuaJIT):
-- the webhook of examples/openresty, calls offloaded to a thread pool so the
-- worker keeps serving, bad input, misuse, and the rate limit shared by
-- workers through a lua_shared_dict. This file runs under Lua 5.4 like the
-- rest: it builds the LuaJIT module, writes nginx.conf into a temp folder,
-- starts nginx and the mock as processes and speaks HTTP with LuaSocket.
local socket = require "socket"
local cjson = require "cjson"
local server = require "support.mock_server"

local MODEL = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
local MISSING = "00000000-0000-0000-0000-000000000000"
local HOLD = 2             -- seconds the mock holds the "slow" token's calls

local function root_dir()
  local p = assert(io.popen("pwd"))
  local cwd = p:read("*l")
  p:close()
  local src = debug.getinfo(1, "S").source:sub(2)
  local dir = src:match("^(.*)/spec/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then dir = cwd .. "/" .. dir end
  return (dir:gsub("/%./", "/"):gsub("/%.$", ""))
end

local helpers = require "support.helpers"
local free_port, sh_quote, read_file, write_file, run =
  helpers.free_port, helpers.sh_quote, helpers.read_file, helpers.write_file, helpers.succeeds

-- A process that is there and not a zombie.
local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end

-- ---- HTTP/1.0 over LuaSocket: one request per connection, read to the end.

local function send(port, method, path, body, headers)
  local c = assert(socket.tcp())
  c:settimeout(15)
  assert(c:connect("127.0.0.1", port))
  local lines = { method .. " " .. path .. " HTTP/1.0", "Host: 127.0.0.1" }
  if body then
    lines[#lines + 1] = "Content-Type: application/json"
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")))
  return c
end

local function receive(c)
  local all, err, partial = c:receive("*a")
  c:close()
  all = all or partial
  assert(all and all ~= "", "no answer: " .. tostring(err))
  local head, body = all:match("^(.-)\r\n\r\n(.*)$")
  local res = { status = tonumber(head:match("^HTTP/%d%.%d (%d%d%d)")), headers = {}, body = body }
  for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do res.headers[k:lower()] = v end
  if (res.headers["content-type"] or ""):find("json", 1, true) then res.json = cjson.decode(body) end
  return res
end

local function request(port, method, path, body, headers)
  return receive(send(port, method, path, body, headers))
end

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
M.secret = webhook.handler{ secret = "hook-secret" }

function M.keys()
  ngx.say(cjson.encode(ngx.shared.cachectl_limits:get_keys(0)))
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
  out.thread = select(2, pcall(omni.reset_cache, omni, UUID, "daily", { rate_limit = { requests = 5, burst = 2 } }))
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
  for _ = 1, 200 do
    if done then break end
    ngx.sleep(0.025)
  end
  out.timer = done
  ngx.say(cjson.encode(out))
end
return M
]]

local function nginx_conf(o)
  return ([[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
master_process on;
worker_processes %d;
error_log %s/error.log notice;
pid %s/nginx.pid;
env OMNI_API_KEY;
env OMNI_BASE_URL;
env CACHECTL_SLOW_TOKEN;
env CACHECTL_LIMITED_TOKEN;
thread_pool cachectl threads=4;
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
    server {
        listen 127.0.0.1:%d%s;
        add_header X-Worker-Pid $pid always;
        location = /ping { content_by_lua_block { ngx.say("pong") } }
        %s
        location = /slow/hooks/data-loaded { content_by_lua_block { require("nginx_spec_hooks").slow() } }
        location = /blocking/hooks/data-loaded { content_by_lua_block { require("nginx_spec_hooks").blocking() } }
        location = /limited/hooks/data-loaded { content_by_lua_block { require("nginx_spec_hooks").limited() } }
        location = /secret/hooks/data-loaded { content_by_lua_block { require("nginx_spec_hooks").secret() } }
        location = /limit-keys { content_by_lua_block { require("nginx_spec_hooks").keys() } }
        location = /misuse { content_by_lua_block { require("nginx_spec_hooks").misuse() } }
        location = /set-phase {
            set_by_lua_block $phase_error { return require("nginx_spec_hooks").in_set_phase() }
            return 200 "$phase_error\n";
        }
    }
}
]]):format(o.workers, o.dir, o.dir, o.dir, o.dir, o.dir, o.dir, o.dir,
    o.root, o.root, o.root, o.dir, o.root, o.port, o.reuseport and " reuseport" or "",
    example_location(o.root))
end

local Nginx = {}
Nginx.__index = Nginx

function Nginx:stop()
  if self.stopped then return end
  self.stopped = true
  local pid = self.pid
  if pid then
    run("kill -TERM " .. pid .. " 2>/dev/null")
    local deadline = socket.gettime() + 10
    while alive(pid) and socket.gettime() < deadline do socket.sleep(0.05) end
    if alive(pid) then run("kill -KILL " .. pid .. " 2>/dev/null") end
  end
  self.proc:close()    -- reaps the master; it has waited for its workers
  run("rm -rf " .. sh_quote(self.dir))
end

-- Starts nginx with `o.workers` workers in a fresh temp folder, its
-- environment from `o.env`; returns once /ping answers.
local function start_nginx(o)
  local p = assert(io.popen("mktemp -d /tmp/cachectl-nginx.XXXXXX"))
  local dir = p:read("*l")
  p:close()
  run("chmod 755 " .. sh_quote(dir))    -- workers run as nobody
  o.dir, o.port = dir, free_port()
  write_file(dir .. "/nginx.conf", nginx_conf(o))
  write_file(dir .. "/nginx_spec_hooks.lua", HOOKS)
  local env = {}
  for k, v in pairs(o.env) do env[#env + 1] = k .. "=" .. sh_quote(v) end
  -- LD_PRELOAD goes: under `make spec-asan` it would load ASan into nginx.
  local proc = assert(io.popen("exec env -u LD_PRELOAD " .. table.concat(env, " ") .. " nginx -p "
    .. sh_quote(dir) .. " -c " .. sh_quote(dir .. "/nginx.conf") .. " >" .. sh_quote(dir .. "/stderr.log")
    .. " 2>&1", "r"))
  local self = setmetatable({ dir = dir, port = o.port, proc = proc }, Nginx)
  local deadline = socket.gettime() + 10
  while true do
    self.pid = self.pid or tonumber(read_file(dir .. "/nginx.pid") or "")
    if self.pid then
      local c = socket.tcp()
      c:settimeout(1)
      if c:connect("127.0.0.1", o.port) then
        c:close()
        local ok, res = pcall(request, o.port, "GET", "/ping")
        if ok and res.status == 200 then return self end
      else
        c:close()
      end
    end
    if socket.gettime() > deadline then
      local log = (read_file(dir .. "/stderr.log") or "") .. (read_file(dir .. "/error.log") or "")
      self:stop()
      error("nginx did not start:\n" .. log, 2)
    end
    socket.sleep(0.05)
  end
end

-- The recorded Omni calls whose Bearer token is `token`.
local function calls_with(srv, token)
  local out = {}
  for _, r in ipairs(srv:requests()) do
    if r.headers.authorization == "Bearer " .. token then out[#out + 1] = r end
  end
  return out
end

-- Sends a webhook for the held token to `path` and, once the mock holds the
-- call, times a GET /ping: returns its latency and the webhook's answer.
local function ping_while_held(srv, nginx, path, token)
  srv:reset()
  local started = socket.gettime()
  local slow = send(nginx.port, "POST", path, hook_body(MODEL, { "held" }))
  local deadline = started + HOLD - 0.5
  while #calls_with(srv, token) == 0 do
    assert(socket.gettime() < deadline, "the held call did not reach the mock in time")
    socket.sleep(0.01)
  end
  local t0 = socket.gettime()
  local ping = request(nginx.port, "GET", "/ping")
  local latency = socket.gettime() - t0
  assert.equal(200, ping.status)
  assert.equal("pong\n", ping.body)
  local answer = receive(slow)
  return latency, answer, socket.gettime() - started
end

describe("cachectl in nginx (lua-nginx-module, LuaJIT)", function()
  local root = root_dir()
  local TOKEN = "tok-nginx-" .. os.time()
  local SLOW = "tok-slow-" .. os.time() .. " hold=" .. HOLD
  local LIMITED = "tok-limited-" .. os.time()
  local srv, one, two

  setup(function()
    assert(run("cd " .. sh_quote(root) .. " && env -u LD_PRELOAD make -s LUA=luajit >/dev/null"),
      "make LUA=luajit failed")
    assert(io.open(root .. "/build/luajit/cachectl/core.so"), "no build/luajit/cachectl/core.so")
    assert(run("command -v nginx >/dev/null"), "nginx is not installed (apt-get install nginx libnginx-mod-http-lua)")
    srv = server.start()
    local env = { OMNI_API_KEY = TOKEN, OMNI_BASE_URL = srv.base, CACHECTL_SLOW_TOKEN = SLOW,
                  CACHECTL_LIMITED_TOKEN = LIMITED }
    one = start_nginx{ root = root, workers = 1, env = env }
    two = start_nginx{ root = root, workers = 2, reuseport = true, env = env }
  end)

  teardown(function()
    if one then one:stop() end
    if two then two:stop() end
    if srv then srv:stop() end
    for _, n in ipairs{ one, two } do
      assert.is_false(alive(n.pid), "nginx " .. n.pid .. " still runs")
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

  it("keeps the worker serving while a call is in flight (thread pool)", function()
    local latency, answer, total = ping_while_held(srv, one, "/slow/hooks/data-loaded", SLOW)
    print(("\n  nginx: /ping answered in %.1f ms while a held call was in flight (offload on)")
      :format(latency * 1000))
    assert.is_true(latency < 1, ("/ping took %.3f s"):format(latency))
    assert.equal(200, answer.status)
    assert.is_true(answer.json.ok)
    assert.is_true(total >= HOLD - 0.1, ("the held webhook took only %.3f s"):format(total))
  end)

  it("blocks the worker with the offload turned off (thread_pool = false)", function()
    local latency, answer = ping_while_held(srv, one, "/blocking/hooks/data-loaded", SLOW)
    print(("\n  nginx: /ping answered in %.1f ms while a held call was in flight (offload off)")
      :format(latency * 1000))
    assert.is_true(latency > 1, ("/ping took only %.3f s"):format(latency))
    assert.equal(200, answer.status)
    assert.is_true(answer.json.ok)
  end)

  it("shares the rate limit between workers through a lua_shared_dict: requests wait, none fails", function()
    local n, started = 6, socket.gettime()
    local conns, answers, workers, nworkers = {}, {}, {}, 0
    for i = 1, n do
      conns[i] = send(two.port, "POST", "/limited/hooks/data-loaded", hook_body(MODEL, { "p" .. i }))
    end
    for i = 1, n do answers[i] = receive(conns[i]) end
    local total = socket.gettime() - started
    for i = 1, n do
      assert.equal(200, answers[i].status, answers[i].body)
      assert.is_true(answers[i].json.ok)
      local pid = answers[i].headers["x-worker-pid"]
      if not workers[pid] then workers[pid], nworkers = true, nworkers + 1 end
    end
    print(("\n  nginx: %d resets at 2 per second (shared dict, %d worker%s served them) took %.2f s")
      :format(n, nworkers, nworkers == 1 and "" or "s", total))
    -- A burst of 2, then one slot every 0.5 s: the 6th leaves at 2 s.
    assert.is_true(total > 1.5, ("%d resets took only %.3f s"):format(n, total))
    assert.equal(n, #calls_with(srv, LIMITED))
    -- The bucket is keyed by a hash, never by the credential.
    local keys = request(two.port, "GET", "/limit-keys").body
    assert.matches("cachectl:", keys, 1, true)
    assert.is_nil(keys:find(LIMITED, 1, true))
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
    assert.matches("^omni.reset_cache: option 'rate_limit' takes only 'requests', 'per'", out.thread)
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

describe("cachectl outside nginx", function()
  local srv
  setup(function() srv = server.start() end)
  teardown(function() srv:stop() end)

  it("takes the nginx options, never loads cachectl.openresty, and limits with the core's own bucket", function()
    local cachectl = require "cachectl"
    assert.is_nil(package.loaded["cachectl.openresty"])
    local token = "tok-plain-" .. os.time() .. "-" .. math.random(1e6)
    local omni = cachectl.omni.new{ token = token, base_url = srv.base, thread_pool = "cachectl",
      rate_limit = { requests = 2, per = 1, shared_dict = "cachectl_limits" } }
    local started = socket.gettime()
    local items = omni:reset_caches(MODEL, { "a", "b", "c", "d" })
    local took = socket.gettime() - started
    for _, item in ipairs(items) do assert.is_nil(item.err) end
    -- a burst of 2, then one every 0.5 s: the 4th leaves at 1 s
    assert.is_true(took > 0.8, ("4 resets at 2 per second took only %.3f s"):format(took))
    assert.truthy(omni:reset_cache(MODEL, "e", { rate_limit = { shared_dict = "cachectl_limits" } }))
    omni:close()
    assert.is_nil(package.loaded["cachectl.openresty"])
  end)
end)
