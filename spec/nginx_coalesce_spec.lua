-- coalesce inside nginx: identical calls that overlap in one worker (each
-- yields while its request runs on the thread pool) send one request; the
-- later ones wait for the first's outcome. Real nginx (one worker), real mock.
local server = require "support.mock_server"
local helpers = require "support.helpers"

local nginx_server = require "support.nginx_server"

local UUID = helpers.UUID

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
                  base_url = os.getenv("MOCK_BASE"), coalesce = 30 }
                local res, err = omni:reset_cache(ngx.var.arg_model, "daily")
                ngx.say(cjson.encode{ ok = res ~= nil, coalesced = res and res.coalesced or false,
                  policy = res and res.cache_reset.policy_name, err = err and tostring(err) })
            }
        }
    }
}
]]):format(port)
  end
end

describe("coalesce inside nginx #nginx", function()
  local srv, nginx

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

  it("sends one request for identical calls in flight together; the others share it", function()
    -- the mock holds the answer 0.5 s: the four requests overlap in the worker
    local token = helpers.uid("tok-nginx-co") .. ";hold=0.5"
    local path = "/reset?model=" .. UUID .. "&token=" .. token:gsub("[^%w%-_.]", function(c)
      return ("%%%02X"):format(c:byte())
    end)
    local conns = {}
    for i = 1, 4 do conns[i] = nginx_server.send(nginx.port, "GET", path) end
    local shared = 0
    for i = 1, 4 do
      local res = nginx_server.receive(conns[i])
      assert.equal(200, res.status, res.body)
      assert.is_true(res.json.ok, res.json.err)
      assert.equal("daily", res.json.policy)
      if res.json.coalesced then shared = shared + 1 end
    end
    assert.equal(3, shared)
    assert.equal(1, #srv:requests())
  end)
end)
