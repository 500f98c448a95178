--- Test harness for nginx's lifecycles: an nginx configured as docs/nginx.md
-- says (one worker, the `cachectl` thread pool, `configure` and `warm` in
-- init_worker), a handler module whose calls each ask for a policy named by
-- the request (so every answer can be told apart), the worker's pid,
-- descriptors and memory, reload and quit through nginx's own `-s` with
-- this nginx's config and pid file, and bursts of requests. No assertions
-- about the code under test here.
local io, table = io, table
local assert, ipairs, pcall, tonumber, tostring = assert, ipairs, pcall, tonumber, tostring

local socket = require "socket"
local helpers = require "support.helpers"
local nginx_server = require "support.nginx_server"

local M = {}

M.MODEL = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

-- The handlers (a module the worker loads from the temp folder):
--   GET /reset?policy=P[&timeout=S]  resets P (held by the mock as the token says),
--                             answers { policy = the answer's policy_name, kind, message, pid }
--   GET /kill?policy=P        the same reset in a light thread killed mid-call: { killed }
--   GET /timer?policy=P       the same reset from ngx.timer.at; the answer's
--                             policy_name goes into the shared dict `results`
--   GET /result?policy=P      what the timer stored for P ("nil" until then)
--   GET /probe?n=N            N worker-thread tasks at once, each telling whether its
--                             VM had loaded cachectl.openresty: { loaded = count, vms = N }
--   GET /warmed               how many VMs warm readied (waits for it to finish)
--   GET /misuse               what configure and warm raise with bad numbers: { errors }
M.HANDLERS = [[
local cachectl = require "cachectl"
local cjson = require "cjson.safe"
local M = {}
local client

local function answer(t)
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(t))
end

function M.reset()
  client = client or cachectl.omni.new{ rate_limit = false, retries = 0 }
  local res, err = client:reset_cache("]] .. M.MODEL .. [[", ngx.var.arg_policy,
    { timeout = tonumber(ngx.var.arg_timeout) })
  answer{ policy = res and res.cache_reset.policy_name, kind = err and err.kind,
          message = err and tostring(err), pid = ngx.worker.pid() }
end

-- A light thread makes the call and is killed (ngx.thread.kill) while the
-- call is in flight; the request answers at once.
function M.kill()
  client = client or cachectl.omni.new{ rate_limit = false, retries = 0 }
  local t = ngx.thread.spawn(function() return client:reset_cache("]] .. M.MODEL .. [[", ngx.var.arg_policy) end)
  ngx.sleep(0.2)
  local killed, why = ngx.thread.kill(t)
  answer{ killed = killed and true or false, why = why, pid = ngx.worker.pid() }
end

function M.timer()
  local policy = ngx.var.arg_policy
  assert(ngx.timer.at(0, function()
    local res, err = cachectl.omni.new{ rate_limit = false, retries = 0 }:reset_cache("]] .. M.MODEL .. [[", policy)
    ngx.shared.results:set(policy, res and res.cache_reset.policy_name or tostring(err))
  end))
  answer{ started = policy, pid = ngx.worker.pid() }
end

function M.result()
  answer{ result = tostring(ngx.shared.results:get(ngx.var.arg_policy)) }
end

function M.probe()
  local n, threads, loaded = tonumber(ngx.var.arg_n), {}, 0
  for i = 1, n do
    threads[i] = ngx.thread.spawn(function()
      return ngx.run_worker_thread("cachectl", "nginx_life_probe", "loaded")
    end)
  end
  for i = 1, n do
    local _, ok, yes = ngx.thread.wait(threads[i])
    if ok and yes then loaded = loaded + 1 end
  end
  answer{ loaded = loaded, vms = n }
end

-- configure and warm with bad numbers: what each raises.
function M.misuse()
  local openresty = require "cachectl.openresty"
  local out = {}
  for _, v in ipairs{ 0 / 0, 1 / 0, -1, 0, 0.5, 1e300, "8" } do
    out[#out + 1] = select(2, pcall(openresty.configure, { vms = v }))
    out[#out + 1] = select(2, pcall(openresty.warm, "cachectl", v))
  end
  out[#out + 1] = select(2, pcall(openresty.configure, { vms = 8 }))   -- after the worker's first call
  out[#out + 1] = select(2, pcall(openresty.configure, { threads = 8 }))
  answer{ errors = out }
end

function M.warmed()
  local openresty = require "cachectl.openresty"
  for _ = 1, 500 do
    if openresty.warmed then break end
    ngx.sleep(0.01)
  end
  answer{ warmed = openresty.warmed or cjson.null }
end

return M
]]

-- What the probe runs in a worker-thread VM: a module of its own, which
-- loads nothing of cachectl.
M.PROBE = [[
return { loaded = function() return package.loaded["cachectl.openresty"] ~= nil end }
]]

--- nginx.conf as docs/nginx.md has it, for one worker: `o.threads` (the
-- pool's threads=, and configure's vms and warm's count unless `o.vms`
-- says otherwise; `o.vms = false` leaves vms at its default),
-- `o.vm_pool` (lua_worker_thread_vm_pool_size, or nginx's default),
-- `o.client_abort` (lua_check_client_abort on: a client that goes ends its
-- request, and its light threads are killed).
function M.conf(root, o)
  local threads = o.threads or 16
  local vms = o.vms == nil and threads or o.vms
  local init = vms and ("local openresty = require \"cachectl.openresty\"\n"
    .. "        openresty.configure{ vms = " .. vms .. " }\n        openresty.warm(\"cachectl\", " .. threads .. ")")
    or ("require(\"cachectl.openresty\").warm(\"cachectl\", " .. threads .. ")")
  return function(dir, port)
    return ([[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off;
worker_processes 1;
error_log %s/error.log notice;
pid %s/nginx.pid;
thread_pool cachectl threads=%d;
env OMNI_API_KEY;
env OMNI_BASE_URL;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %s/body;
    lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;;";
    lua_package_cpath "%s/build/luajit/?.so;;";
    %s
    %s
    lua_shared_dict results 1m;
    init_worker_by_lua_block {
        %s
    }
    server {
        listen 127.0.0.1:%d;
        location = /ping { content_by_lua_block { ngx.say("pong") } }
        location = /reset { content_by_lua_block { require("nginx_life_handlers").reset() } }
        location = /timer { content_by_lua_block { require("nginx_life_handlers").timer() } }
        location = /kill { content_by_lua_block { require("nginx_life_handlers").kill() } }
        location = /result { content_by_lua_block { require("nginx_life_handlers").result() } }
        location = /probe { content_by_lua_block { require("nginx_life_handlers").probe() } }
        location = /warmed { content_by_lua_block { require("nginx_life_handlers").warmed() } }
        location = /misuse { content_by_lua_block { require("nginx_life_handlers").misuse() } }
    }
}
]]):format(dir, dir, threads, dir, root, root, dir, root,
      o.vm_pool and ("lua_worker_thread_vm_pool_size " .. o.vm_pool .. ";") or "",
      o.client_abort and "lua_check_client_abort on;" or "", init, port)
  end
end

--- Starts such an nginx with `token` (its mock directives included; kept
-- as `token` of the handle) and the mock at `base`.
function M.start(root, o, token, base)
  local n = nginx_server.start{ conf = M.conf(root, o),
    files = { ["nginx_life_handlers.lua"] = M.HANDLERS, ["nginx_life_probe.lua"] = M.PROBE },
    env = { OMNI_API_KEY = token, OMNI_BASE_URL = base } }
  n.token = token
  return n
end

--- The pids of the master's worker processes (its children), sorted.
function M.workers(master)
  local out = {}
  local p = assert(io.popen("ps -o pid= --ppid " .. master))
  for pid in p:read("*a"):gmatch("%d+") do out[#out + 1] = tonumber(pid) end
  p:close()
  table.sort(out)
  return out
end

--- How many descriptors process `pid` holds.
function M.fds(pid)
  local p = assert(io.popen("ls /proc/" .. pid .. "/fd"))
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

--- Process `pid`'s resident memory, in kB.
function M.rss_kb(pid)
  return tonumber((helpers.read_file("/proc/" .. pid .. "/status") or ""):match("VmRSS:%s*(%d+)"))
end

--- `nginx -s signal` (reload, quit) for this nginx: its own config and
-- prefix, so its own pid file.
function M.signal(n, signal)
  assert(helpers.succeeds("env -u LD_PRELOAD nginx -p " .. helpers.sh_quote(n.dir) .. " -c "
    .. helpers.sh_quote(n.dir .. "/nginx.conf") .. " -s " .. signal .. " 2>/dev/null"))
end

--- Sends GET /reset?policy=<prefix><i> for i = 1..count, each on its own
-- connection (`query` appended); returns the connections, in order.
function M.fire(port, prefix, count, query)
  local conns = {}
  for i = 1, count do
    conns[i] = nginx_server.send(port, "GET", "/reset?policy=" .. prefix .. i .. (query or ""))
  end
  return conns
end

--- Reads every answer of `fire`: how many were the caller's own (200 and
-- its own policy), and a list of the others as text (nothing, or another
-- answer), and the pids that answered.
function M.tally(conns, prefix)
  local own, others, pids = 0, {}, {}
  for i, c in ipairs(conns) do
    local ok, res = pcall(nginx_server.receive, c)
    if not ok then
      others[#others + 1] = prefix .. i .. ": no answer (" .. tostring(res) .. ")"
    elseif res.status == 200 and res.json and res.json.policy == prefix .. i then
      own = own + 1
      pids[res.json.pid] = true
    else
      others[#others + 1] = prefix .. i .. ": " .. res.status .. " " .. tostring(res.body):sub(1, 200)
    end
  end
  return own, others, pids
end

--- Waits until the mock has seen `count` requests with `token` (or 10 s).
function M.arrived(srv, token, count)
  return helpers.eventually(function()
    local n = 0
    for _, r in ipairs(srv:requests()) do
      if r.headers.authorization == "Bearer " .. token then n = n + 1 end
    end
    return n >= count, n
  end, 500)
end

--- Waits until process `pid` is gone (or 20 s); true when it is.
function M.gone(pid)
  local deadline = socket.gettime() + 20
  while nginx_server.alive(pid) and socket.gettime() < deadline do socket.sleep(0.05) end
  return not nginx_server.alive(pid)
end

return M
