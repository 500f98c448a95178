-- Verification with the mock: GET /_mock/requests?method=&path=&since= and
-- the handle's m:requests{...} and m:count{...}.
local socket = require "socket"
local cjson = require "cjson"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cachectl = require "cachectl"
local server = require "support.mock_server"
local helpers = require "support.helpers"

local MODEL = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
local OTHER = "1b4e28ba-2fa1-11d2-883f-0016d3cca428"

-- A control request; returns status and the decoded answer.
local function control(srv, path)
  local out = {}
  local _, status = http.request{ url = srv.url .. path, sink = ltn12.sink.table(out) }
  return status, cjson.decode(table.concat(out))
end

local function paths(list)
  local out = {}
  for i, req in ipairs(list) do out[i] = req.method .. " " .. req.path end
  return out
end

describe("mock verification", function()
  local srv = server.use()
  local omni, ml

  before_each(function()
    omni = cachectl.omni.new{ token = helpers.uid("tok"), base_url = srv.base }
    ml = cachectl.modelslab.new{ key = helpers.uid("k"), base_url = srv.base }
  end)
  after_each(function()
    omni:close()
    ml:close()
  end)

  -- Four requests: a reset of MODEL's daily, a YAML read, a queue clear, a reset of OTHER's daily.
  local function traffic()
    assert(omni:reset_cache(MODEL, "daily"))
    assert(omni:model_yaml("3f2504e0-4f89-41d3-9a0c-0305e82c3301", { file_name = "model.yaml" }))
    assert(ml:clear_queue())
    assert(omni:reset_cache(OTHER, "daily"))
  end

  describe("GET /_mock/requests", function()
    it("filters by method, by the end of the path (without the query) and by arrival time", function()
      traffic()
      local status, all = control(srv, "/_mock/requests")
      assert.equal(200, status)
      assert.equal(4, #all)

      local _, posts = control(srv, "/_mock/requests?method=post")
      assert.same({ "POST /api/v1/models/" .. MODEL .. "/cache_reset/daily", "POST /api/v1/enterprise/3d/clear_queue",
                    "POST /api/v1/models/" .. OTHER .. "/cache_reset/daily" }, paths(posts))

      local _, resets = control(srv, "/_mock/requests?method=POST&path=/v1/models/*/cache_reset/daily")
      assert.equal(2, #resets)
      local _, one = control(srv, "/_mock/requests?path=%2Fmodels%2F" .. MODEL .. "%2Fcache_reset%2Fdaily")
      assert.same({ "POST /api/v1/models/" .. MODEL .. "/cache_reset/daily" }, paths(one))
      local _, yaml = control(srv, "/_mock/requests?path=/yaml")
      assert.equal(1, #yaml)
      assert.matches("/yaml%?fileName=model%.yaml", yaml[1].path)   -- the log keeps the whole target
      local _, none = control(srv, "/_mock/requests?path=/daily/x")
      assert.same({}, none)

      local _, later = control(srv, "/_mock/requests?since=" .. string.format("%.6f", all[3].at))
      assert.same(paths({ all[3], all[4] }), paths(later))
      local _, future = control(srv, "/_mock/requests?since=" .. string.format("%.6f", all[4].at + 1))
      assert.same({}, future)
    end)

    it("refuses a bad filter with 400, naming it", function()
      for _, case in ipairs({
        { "colour=red", "unknown filter 'colour' (known: method, path, since)" },
        { "since=yesterday", "since must be a number of epoch seconds" },
        { "since=1e999", "since must be a number of epoch seconds" },
        { "method=P0ST", "method must be an HTTP method" },
        { "path=v1/models", "path must start with '/'" },
        { "path=/a%3Fb", "path must start with '/' and hold no '?'" },
        { "name=%zz", "malformed query parameter" },
      }) do
        local status, answer = control(srv, "/_mock/requests?" .. case[1])
        assert.equal(400, status, case[1])
        assert.matches(case[2], answer.message, 1, true)
      end
    end)
  end)

  describe("the handle", function()
    it("says in one line that daily of a model was reset exactly once", function()
      traffic()
      assert.equal(1, srv:count{ method = "POST", path = "/v1/models/" .. MODEL .. "/cache_reset/daily" })
      assert(omni:reset_cache(MODEL, "daily"))
      assert.equal(2, srv:count{ method = "POST", path = "/v1/models/" .. MODEL .. "/cache_reset/daily" })
      assert.equal(0, srv:count{ method = "GET", path = "/cache_reset/*" })
      assert.equal(5, srv:count())
    end)

    it("returns the requests that pass a filter, with since on the server's clock", function()
      assert(omni:reset_cache(MODEL, "daily"))
      local t = socket.gettime()
      assert(omni:reset_cache(MODEL, "hourly"))
      assert(ml:clear_cache())
      assert.same({ "POST /api/v1/models/" .. MODEL .. "/cache_reset/hourly", "POST /api/v5/clear_cache" },
        paths(srv:requests{ since = t }))
      local list = srv:requests{ path = "/cache_reset/hourly", since = t }
      assert.equal(1, #list)
      assert.matches("^Bearer tok%-", list[1].headers.authorization)

      -- a request's own `at`, as the log shows it, keeps that request
      local log = srv:requests()
      for _, entry in ipairs(log) do
        local kept = srv:requests{ since = entry.at }
        assert.same({ entry.path, entry.at }, { kept[1].path, kept[1].at })
      end
    end)

    it("raises on a bad filter, naming it", function()
      assert.error_matches(function() srv:count{ colour = "red" } end, "unknown filter 'colour'")
      assert.error_matches(function() srv:requests{ since = "soon" } end, "since must be a number")
      assert.error_matches(function() srv:requests{ path = true } end, "filter.path must be a string")
      assert.error_matches(function() srv:requests("POST") end, "the filter must be a table")
    end)
  end)
end)
