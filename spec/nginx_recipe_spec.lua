-- The nginx.conf of docs/nginx.md ("nginx.conf"), run as it is in a real
-- nginx (Debian's nginx + lua-nginx-module, LuaJIT), started from a shell
-- whose LUA_PATH and LUA_CPATH are Lua 5.4's (what `luarocks path` sets):
-- the webhook resets policies, a policy check reads a model file during a
-- request, and the error log holds no error and no "writing a global"
-- warning. A control shows what the recipe prevents: with ";;" in the paths
-- the 5.4 modules are loaded (the webhook fails); without the preload the
-- policy check still writes no global (the C core reads the YAML). Only the
-- file locations (the checkout, a temp folder, a free port) and a /ping
-- location are changed.
local cjson = require "cjson"
local server = require "support.mock_server"
local helpers = require "support.helpers"
local nginx_server = require "support.nginx_server"

local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

-- The ```nginx block of docs/nginx.md's "## nginx.conf" section.
local function recipe(root)
  local page = assert(helpers.read_file(root .. "/docs/nginx.md"))
  local section = assert(page:match("\n## nginx%.conf\n(.-)\n## "), "no nginx.conf section in docs/nginx.md")
  return assert(section:match("```nginx\n(.-)\n```"), "no nginx block in the nginx.conf section")
end

-- The recipe with the checkout at `root`, its files in `dir`, on `port`,
-- and the spec's own locations; `change` edits it first (the controls).
local function conf_of(root, change)
  return function(dir, port)
    local conf = recipe(root):gsub("/srv/cachectl", root)
    if change then conf = change(conf) end
    local n
    conf, n = conf:gsub("listen 127%.0%.0%.1:8080;", ([[listen 127.0.0.1:%d;
        location = /ping { content_by_lua_block { ngx.say("pong") } }
        location = /policies {
            content_by_lua_block {
                local omni = require("cachectl").omni.new()
                local list = assert(omni:cache_policies("Sales"))
                ngx.say(#list, " ", list.default)
            }
        }]]):format(port))
    assert(n == 1, "no listen line in the recipe")
    conf, n = conf:gsub("\nhttp {\n", ("\nhttp {\n    access_log off;\n    client_body_temp_path %s/body;\n"
      .. "    proxy_temp_path %s/proxy;\n    fastcgi_temp_path %s/fastcgi;\n    uwsgi_temp_path %s/uwsgi;\n"
      .. "    scgi_temp_path %s/scgi;\n"):format(dir, dir, dir, dir, dir))
    assert(n == 1, "no http block in the recipe")
    return conf .. ("\ndaemon off;\npid %s/nginx.pid;\nerror_log %s/error.log info;\n"):format(dir, dir)
  end
end

-- The [error] lines of a log, but for the warm-up timer's: openresty.lua's
-- warm() hands ngx.thread.spawn a C function (ngx.run_worker_thread), which
-- lua-nginx-module refuses whatever the configuration (a bug of its own).
local function errors(log)
  local out = {}
  for line in log:gmatch("[^\n]+") do
    if line:find("[error]", 1, true) and not line:find("bad argument #1 to 'spawn'", 1, true) then
      out[#out + 1] = line
    end
  end
  return out
end

-- What `luarocks --lua-version=5.4 path` would set, as nginx's environment.
local function lua54_env(srv)
  local p = assert(io.popen("env -u LD_PRELOAD luarocks --lua-version=5.4 path --no-bin"))
  local out = p:read("*a")
  p:close()
  -- LUA_PATH, or LUA_PATH_5_4 when the environment has that one (make exports it)
  local path, cpath = out:match("LUA_PATH[_%d]*='([^']*)'"), out:match("LUA_CPATH[_%d]*='([^']*)'")
  assert(cpath and cpath:find("/lua/5.4/?.so", 1, true), out)
  return { LUA_PATH = path, LUA_CPATH = cpath, OMNI_API_KEY = helpers.uid("tok"), OMNI_BASE_URL = srv.base }
end

describe("the nginx recipe of docs/nginx.md #nginx", function()
  local srv = server.use()
  local root = nginx_server.root_dir(debug.getinfo(1, "S").source)
  setup(function() nginx_server.prepare(root) end)

  local function hook(n)
    return nginx_server.request(n.port, "POST", "/hooks/data-loaded",
      cjson.encode{ model_id = SALES, policies = { "daily", "hourly" } })
  end

  it("spells out every path, with no ;;", function()
    local conf = recipe(root)
    local lines = 0
    for line in conf:gmatch("lua_package_c?path[^\n]*") do
      lines = lines + 1
      assert.is_nil(line:find(";;", 1, true), line)
    end
    assert.equal(2, lines)
    assert.matches("init_by_lua_block", conf, 1, true)
  end)

  it("runs in nginx started with Lua 5.4's LUA_PATH and LUA_CPATH: no error, no global warning", function()
    local n = nginx_server.start{ conf = conf_of(root), env = lua54_env(srv) }
    local ok, err = pcall(function()
      local res = hook(n)
      assert.equal(200, res.status, res.body)
      assert.is_true(res.json.ok)
      local resets = 0
      for _, r in ipairs(srv:requests()) do
        if r.method == "POST" and r.path:find("/cache_reset/", 1, true) then resets = resets + 1 end
      end
      assert.equal(2, resets)
      res = nginx_server.request(n.port, "GET", "/policies")
      assert.equal(200, res.status, res.body)
      assert.equal("3 daily\n", res.body)
      local log = n:logs()
      assert.is_nil(log:find("writing a global", 1, true), log)
      assert.is_nil(log:find("%[alert%]"), log)
      assert.same({}, errors(log))
    end)
    n:stop()
    assert(ok, err)
  end)

  it("would fail with the former recipe's ;; in the paths: the shell's 5.4 modules are loaded", function()
    local conf = conf_of(root, function(c)
      c = c:gsub('lua_package_path "[^"]*"', ('lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;'
        .. '%s/examples/openresty/?.lua;;"'):format(root, root, root))
      c = c:gsub('lua_package_cpath "[^"]*"', ('lua_package_cpath "%s/build/luajit/?.so;;"'):format(root))
      return (c:gsub("init_by_lua_block %b{}", ""))
    end)
    local n = nginx_server.start{ conf = conf, env = lua54_env(srv) }
    local ok, res = pcall(hook, n)
    local log = n:logs()
    n:stop()
    assert(ok, res)
    assert.equal(500, res.status)
    assert.matches("5%.4", log)
  end)

  it("writes no global during a request even without the preload (no lyaml)", function()
    local conf = conf_of(root, function(c) return (c:gsub("init_by_lua_block %b{}", "")) end)
    local n = nginx_server.start{ conf = conf, env = lua54_env(srv) }
    local ok, res = pcall(nginx_server.request, n.port, "GET", "/policies")
    local log = n:logs()
    n:stop()
    assert(ok, res)
    assert.equal(200, res.status)
    assert.is_nil(log:find("writing a global Lua variable", 1, true), log)
  end)
end)
