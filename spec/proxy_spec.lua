-- A credential never crosses a proxy in cleartext: plain http:// calls
-- (loopback only) never go through a proxy, neither one from the
-- environment (http_proxy) nor the `proxy` option; https:// calls do, as a
-- CONNECT tunnel. Checked with a real tinyproxy started on a free port: its
-- log says which connections it opened for a client.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local core = require "cachectl.core"
local socket = require "socket"

local uid, UUID, sh_quote = helpers.uid, helpers.UUID, helpers.sh_quote

-- Starts tinyproxy in the foreground on a free port; returns a handle with
-- url, port, pid, and the path of its log.
local function tinyproxy_start()
  local dir = os.tmpname()
  os.remove(dir)
  assert(helpers.succeeds("mkdir -m 700 " .. sh_quote(dir)))
  local port = helpers.free_port()
  local log = dir .. "/tinyproxy.log"
  helpers.write_file(dir .. "/tinyproxy.conf", table.concat({
    "Port " .. port, "Listen 127.0.0.1", "Timeout 30", "MaxClients 20", "Allow 127.0.0.1",
    "LogFile \"" .. log .. "\"", "LogLevel Info", "",
  }, "\n"))
  local proc = assert(io.popen("echo $$; exec tinyproxy -d -c " .. sh_quote(dir .. "/tinyproxy.conf")
    .. " >/dev/null 2>&1", "r"))
  local pid = assert(tonumber(proc:read("*l")))
  local up = helpers.eventually(function()
    local c = socket.tcp()
    c:settimeout(0.2)
    local ok = c:connect("127.0.0.1", port)
    c:close()
    return ok ~= nil, ok ~= nil
  end)
  local h = { url = "http://127.0.0.1:" .. port, port = port, pid = pid, proc = proc, dir = dir, log = log }
  function h.stop()
    helpers.succeeds("kill " .. pid .. " 2>/dev/null")
    proc:close()
    os.remove(log)
    os.remove(dir .. "/tinyproxy.conf")
    os.remove(dir)
  end
  assert(up, "tinyproxy did not start")
  return h
end

-- How many connections tinyproxy opened to `port` for its clients.
local function relayed_to(proxy, port)
  local n = 0
  for _ in (helpers.read_file(proxy.log) or ""):gmatch("opening connection to 127%.0%.0%.1:" .. port .. "\n") do
    n = n + 1
  end
  return n
end

local function port_of(srv)
  return tonumber(srv.url:match(":(%d+)$"))
end

describe("proxies #proxy", function()
  local srv = server.use()
  local proxy

  setup(function() proxy = tinyproxy_start() end)
  teardown(function() if proxy then proxy.stop() end end)

  it("are not used by an http:// call given `proxy`", function()
    local token = helpers.secret("TOKEN")
    local res, err = core.omni.reset_cache{ token = token, base_url = srv.base, model_id = UUID, policy = "daily",
      proxy = proxy.url, retries = 0 }
    assert.is_nil(err, err and tostring(err))
    assert.is_true(res.success)
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    assert.equal("Bearer " .. token, reqs[1].headers["authorization"])
    assert.is_nil(reqs[1].headers["via"])
    assert.equal(0, relayed_to(proxy, port_of(srv)))
  end)

  it("are not used by an http:// call when http_proxy says so", function()
    if _VERSION ~= "Lua 5.4" then
      return pending("runs a lua5.4 with this process's module paths: Lua 5.4 only")
    end
    local script = os.tmpname()
    helpers.write_file(script, string.format([[
      package.path = %q
      package.cpath = %q
      local core = require "cachectl.core"
      local res, err = core.omni.reset_cache{ token = %q, base_url = %q, model_id = %q, policy = "daily",
        retries = 0 }
      io.write(res and "ok" or tostring(err))
    ]], package.path, package.cpath, uid("tok"), srv.base, UUID))
    local env = "env -u no_proxy -u NO_PROXY http_proxy=" .. proxy.url .. " HTTP_PROXY=" .. proxy.url
      .. " all_proxy=" .. proxy.url .. " ALL_PROXY=" .. proxy.url
    local p = assert(io.popen(env .. " lua5.4 " .. sh_quote(script) .. " 2>&1"))
    local out = p:read("*a")
    p:close()
    os.remove(script)
    assert.equal("ok", out)
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    assert.is_nil(reqs[1].headers["via"])
    assert.equal(0, relayed_to(proxy, port_of(srv)))
  end)

  describe("for https://", function()
    local secure = server.use_tls()

    it("carry the call through a CONNECT tunnel when `proxy` is given", function()
      local before = relayed_to(proxy, port_of(secure))
      local res, err = core.omni.reset_cache{ token = uid("tok"), base_url = secure.base, model_id = UUID,
        policy = "daily", proxy = proxy.url, ca_file = secure.ca, retries = 0 }
      assert.is_nil(err, err and tostring(err))
      assert.is_true(res.success)
      -- tinyproxy may write its log line a moment after the tunnel closes
      assert.equal(before + 1, helpers.eventually(function()
        local n = relayed_to(proxy, port_of(secure))
        return n > before, n
      end))
      assert.equal(1, #secure:requests())
    end)
  end)
end)
