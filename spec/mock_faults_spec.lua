-- Fault rules of the mock server: POST/GET/DELETE /_mock/faults and the
-- handle's m:fault{...} and m:faults(). Rules match a method and the end of
-- a path, apply in order, count their uses, and are cleared by reset.
local socket = require "socket"
local cjson = require "cjson"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cachectl = require "cachectl"
local server = require "support.mock_server"
local helpers = require "support.helpers"

local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
local RESET = "/api/v1/models/" .. SALES .. "/cache_reset/daily"
local YAML = "/api/v1/models/" .. SALES .. "/yaml"

-- One request with LuaSocket; returns status, decoded JSON (or the raw body), headers.
local function call(srv, method, path, body, headers)
  local out = {}
  headers = headers or {}
  if body then
    headers["Content-Type"] = headers["Content-Type"] or "application/json"
    headers["Content-Length"] = #body
  end
  local _, status, hdrs = http.request{
    url = srv.url .. path, method = method, headers = headers,
    source = body and ltn12.source.string(body), sink = ltn12.sink.table(out),
  }
  local text = table.concat(out)
  local ok, decoded = pcall(cjson.decode, text)
  return status, ok and decoded or text, hdrs
end

local function omni_call(srv, method, path, token)
  return call(srv, method, path, method == "POST" and "{}" or nil, { Authorization = "Bearer " .. (token or "tok") })
end

-- Whether the first rule gets its use (the held request arrived), asking up to 500 times.
local function held(srv)
  return helpers.eventually(function()
    local _, list = call(srv, "GET", "/_mock/faults")
    return list[1].uses == 1, list[1].uses == 1
  end, 500)
end

local function add_rule(srv, rule)
  return call(srv, "POST", "/_mock/faults", type(rule) == "string" and rule or cjson.encode(rule))
end

describe("mock fault rules #slow", function()
  local srv = server.use()

  describe("through the control API", function()
    it("answers the reset with 503 once while the YAML answers normally", function()
      local status, answer = add_rule(srv, { method = "POST", path = "/v1/models/*/cache_reset/*", fault = "503",
                                             times = 1 })
      assert.equal(200, status)
      assert.same({ ok = true, id = 1 }, answer)

      assert.equal(200, (omni_call(srv, "GET", YAML)))
      local reset_status, body = omni_call(srv, "POST", RESET)
      assert.equal(503, reset_status)
      assert.same({ error = "503", message = "Service unavailable" }, body)   -- the reset page's shape
      assert.equal(200, (omni_call(srv, "GET", YAML)))
      assert.equal(200, (omni_call(srv, "POST", RESET)))

      local _, list = call(srv, "GET", "/_mock/faults")
      assert.same({ { id = 1, method = "POST", path = "/v1/models/*/cache_reset/*", fault = "503", times = 1,
                      uses = 1 } }, list)
    end)

    it("applies the first matching rule with uses left, in order, and counts each", function()
      add_rule(srv, { method = "GET", path = RESET, fault = "500_html" })        -- wrong method: never used
      add_rule(srv, { path = "/cache_reset/daily", fault = "503", times = 1 })
      add_rule(srv, { path = "/cache_reset/*", fault = "429", times = 2 })
      add_rule(srv, { path = "/v2/models/*/cache_reset/*", fault = "502" })      -- matches no request
      local seen = {}
      for i = 1, 4 do seen[i] = (omni_call(srv, "POST", RESET)) end
      assert.same({ 503, 429, 429, 200 }, seen)
      local _, list = call(srv, "GET", "/_mock/faults")
      local uses = {}
      for i, r in ipairs(list) do uses[i] = r.uses end
      assert.same({ 0, 1, 2, 0 }, uses)
    end)

    it("matches the last segments of the path, * standing for one segment's text", function()
      add_rule(srv, { path = "/models/*/yaml", fault = "503" })
      add_rule(srv, { path = "/api/v1/enterprise/*_gen/clear_queue", fault = "502" })
      add_rule(srv, { path = "/api/v1/enterprise/clear_queue", fault = "502" })
      assert.equal(503, (omni_call(srv, "GET", YAML)))
      assert.equal(503, (omni_call(srv, "GET", "/other/prefix/v1/models/" .. SALES .. "/yaml?fileName=x")))
      assert.equal(200, (omni_call(srv, "GET", "/api/v1/models")))
      local key = cjson.encode({ key = "k" })
      assert.equal(502, (call(srv, "POST", "/api/v1/enterprise/face_gen/clear_queue", key)))
      assert.equal(502, (call(srv, "POST", "/api/v1/enterprise/clear_queue", key)))
      assert.equal(200, (call(srv, "POST", "/v1/enterprise/face_gen/clear_queue", key)))   -- no /api
      assert.equal(200, (call(srv, "POST", "/api/v1/enterprise/3d/clear_queue", key)))
    end)

    it("matches a long path of many segments in one pass (a hostile path cannot stall the server)", function()
      add_rule(srv, { path = "/*/x/*/*/*/*/*/*/*/z", fault = "503" })
      local status = omni_call(srv, "GET", ("/x"):rep(7000) .. "/v1/models")
      assert.equal(200, status)
      assert.equal(0, select(2, call(srv, "GET", "/_mock/faults"))[1].uses)
    end)

    it("answers a status and a body of the rule's own, in the vendor's shape when no body is given", function()
      add_rule(srv, { path = "/v1/enterprise/3d/clear_queue", status = 500, times = 1 })
      add_rule(srv, { path = "/v1/enterprise/3d/clear_queue", status = 503, headers = { ["Retry-After"] = "7" },
                      body = { status = "error", message = "Queue busy" }, times = 1 })
      add_rule(srv, { path = "/v1/enterprise/3d/clear_queue", status = 200, body = "<html>maintenance</html>",
                      headers = { ["Content-Type"] = "text/html" }, times = 1 })
      local key = cjson.encode({ key = "k" })
      local status, body = call(srv, "POST", "/v1/enterprise/3d/clear_queue", key)
      assert.equal(500, status)
      assert.same({ status = "error", message = "Internal server error", error_code = "http_500" }, body)
      local headers
      status, body, headers = call(srv, "POST", "/v1/enterprise/3d/clear_queue", key)
      assert.equal(503, status)
      assert.same({ status = "error", message = "Queue busy" }, body)
      assert.equal("7", headers["retry-after"])
      status, body, headers = call(srv, "POST", "/v1/enterprise/3d/clear_queue", key)
      assert.same({ 200, "<html>maintenance</html>", "text/html" }, { status, body, headers["content-type"] })
      assert.equal(200, (call(srv, "POST", "/v1/enterprise/3d/clear_queue", key)))
    end)

    it("answers before the route's own checks: no token, no body", function()
      add_rule(srv, { method = "GET", path = "/v1/models", fault = "503" })
      local status, body = call(srv, "GET", "/api/v1/models")
      assert.same({ 503, { detail = "Service unavailable", status = 503 } }, { status, body })
    end)

    it("refuses a bad rule with 400, naming what is wrong, and keeps the others", function()
      add_rule(srv, { path = "/v5/clear_cache", fault = "503" })
      local cases = {
        { "{", "the body must be a JSON object" },
        { "[1]", "the body must be a JSON object" },
        { { colour = "red", fault = "503" }, "unknown field 'colour'" },
        { { method = 5, fault = "503" }, "method must be an HTTP method" },
        { { method = "PO ST", fault = "503" }, "method must be an HTTP method" },
        { { path = "v1/models", fault = "503" }, "path must be a string that starts with '/'" },
        { { path = "/v1/models?name=x", fault = "503" }, "path must not hold '?' or '#'" },
        { { path = "/v1/**/yaml", fault = "503" }, "path must not hold '**'" },
        { { fault = "teapot" }, "fault 'teapot' is unknown (known: 429, " },
        { { fault = "503", hold = -1 }, "hold must be a number of seconds" },
        { { fault = "503", hold = "2" }, "hold must be a number of seconds" },
        { { fault = "503", times = 0 }, "times must be a whole number >= 1" },
        { { fault = "503", times = 1.5 }, "times must be a whole number >= 1" },
        { { status = 99 }, "status must be a whole number from 200 to 599" },
        { { status = 200 }, "a status below 400 needs a body" },
        { { status = 204, body = "x" }, "body: a 204 answer carries no body" },
        { { fault = "503", status = 500 }, "give fault, or status/body/headers, not both" },
        { { status = 500, headers = { ["Content-Length"] = "3" } }, "headers may not set Content-Length" },
        { { status = 500, headers = { ["X-A"] = "a\r\nX-B: b" } }, "headers.X-A must be a string without control" },
        { { headers = { ["X-A"] = "a" } }, "headers go with status or body" },
        { { method = "POST", path = "/v5/clear_cache" }, "a rule needs fault, hold, status or body" },
        { {}, "a rule needs fault, hold, status or body" },
      }
      for _, case in ipairs(cases) do
        local status, body = add_rule(srv, case[1])
        local label = type(case[1]) == "string" and case[1] or cjson.encode(case[1])
        assert.equal(400, status, label)
        assert.equal("400", body.error, label)
        assert.matches(case[2], body.message, 1, true)
      end
      local _, list = call(srv, "GET", "/_mock/faults")
      assert.equal(1, #list)
    end)

    it("takes JSON null as absent", function()
      assert.equal(200, (add_rule(srv, '{"fault": "503", "times": null, "method": null, "path": "/v5/clear_cache"}')))
      local _, list = call(srv, "GET", "/_mock/faults")
      assert.same({ { id = 1, fault = "503", path = "/v5/clear_cache", uses = 0 } }, list)
    end)

    it("is cleared by reset and by DELETE, and lists [] when empty", function()
      add_rule(srv, { path = "/v5/clear_cache", fault = "503" })
      assert.equal(200, (call(srv, "POST", "/_mock/reset", "")))
      local _, list = call(srv, "GET", "/_mock/faults")
      assert.same({}, list)
      assert.equal(200, (call(srv, "GET", "/_mock/faults")))
      add_rule(srv, { path = "/v5/clear_cache", fault = "503" })
      assert.equal(200, (call(srv, "DELETE", "/_mock/faults")))
      assert.equal(200, (call(srv, "POST", "/v5/clear_cache", cjson.encode({ key = "k" }))))
      local status, body, headers = call(srv, "PUT", "/_mock/faults", "{}")
      assert.same({ 405, "Method not allowed", "DELETE, GET, POST" }, { status, body.message, headers.allow })
    end)

    it("leaves the credential directives working beside them", function()
      add_rule(srv, { path = "/yaml", fault = "502" })
      assert.equal(503, (omni_call(srv, "POST", RESET, "tok fault=503 times=1")))
      assert.equal(200, (omni_call(srv, "POST", RESET, "tok fault=503 times=1")))
      assert.equal(502, (omni_call(srv, "GET", YAML, "tok fault=503")))   -- the rule first
    end)

    it("keeps the rule a held request matched on arrival; a rule added meanwhile applies to later ones", function()
      add_rule(srv, { path = RESET, hold = 4, times = 1 })
      local c = assert(socket.connect(srv.url:match("//([^:]+):(%d+)")))
      c:settimeout(10)
      assert(c:send("POST " .. RESET .. " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
        .. "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"))
      assert.is_true(held(srv))
      add_rule(srv, { path = RESET, fault = "503", times = 1 })
      assert.equal("HTTP/1.1 200 OK", c:receive("*l"))   -- held, then answered normally
      c:close()
      assert.equal(503, (omni_call(srv, "POST", RESET)))
      assert.equal(200, (omni_call(srv, "POST", RESET)))
    end)

    it("answers normally a request held when a reset clears its rule", function()
      add_rule(srv, { path = RESET, hold = 4, fault = "503" })
      local c = assert(socket.connect(srv.url:match("//([^:]+):(%d+)")))
      c:settimeout(10)
      assert(c:send("POST " .. RESET .. " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
        .. "Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"))
      assert.is_true(held(srv))
      assert.equal(200, (call(srv, "POST", "/_mock/reset", "")))
      assert.equal("HTTP/1.1 200 OK", c:receive("*l"))
      c:close()
    end)
  end)

  it("work under Lua 5.1, 5.3 and LuaJIT too, with filters and validation", function()
    local mock = require "cachectl.mock"
    for _, lua in ipairs({ "lua5.1", "lua5.3", "luajit" }) do
      if helpers.succeeds("command -v " .. lua .. " >/dev/null 2>&1") then
        local other = mock.start{ lua = lua }
        local ok, err = pcall(function()
          assert.equal(1, other:fault{ method = "POST", path = "/cache_reset/*", fault = "503", times = 1 })
          local seen = {}
          for i = 1, 2 do seen[i] = (omni_call(other, "POST", RESET)) end
          seen[3] = (omni_call(other, "GET", "/api/v1/models?sortDirection=up"))
          assert.same({ 503, 200, 422 }, seen, lua)
          assert.equal(1, other:faults()[1].uses, lua)
          assert.equal(2, other:count{ method = "POST", path = "/v1/models/*/cache_reset/daily" }, lua)
        end)
        other:stop()
        assert(ok, err)
      end
    end
  end)

  describe("through the handle", function()
    it("fails the reset once with 503 while the policy check's YAML read answers", function()
      assert.equal(1, srv:fault{ method = "POST", path = "/v1/models/*/cache_reset/*", fault = "503", times = 1 })
      local omni = cachectl.omni.new{ token = helpers.uid("tok"), base_url = srv.base, retries = 0,
                                      check_policy = true }
      local res, err = omni:reset_cache(SALES, "daily")
      assert.is_nil(res)
      assert.equal(503, err.status)
      res, err = omni:reset_cache(SALES, "daily")
      assert.is_nil(err)
      assert.is_true(res.success)
      omni:close()

      local methods = {}
      for i, req in ipairs(srv:requests()) do
        methods[i] = req.method .. " " .. req.path:match("^[^?]*"):match("[^/]+$")
      end
      assert.same({ "GET yaml", "POST daily", "POST daily" }, methods)
      local rules = srv:faults()
      assert.equal(1, #rules)
      assert.same({ 1, 1, 1 }, { rules[1].id, rules[1].times, rules[1].uses })
    end)

    it("lets the client retry past a rule used up, and shows the uses", function()
      srv:fault{ path = "/cache_reset/daily", fault = "503_retry_after", times = 2 }
      local omni = cachectl.omni.new{ token = helpers.uid("tok"), base_url = srv.base, retries = 2 }
      local res, err = omni:reset_cache(SALES, "daily")
      omni:close()
      assert.is_nil(err)
      assert.is_true(res.success)
      assert.equal(3, srv:count())
      assert.equal(2, srv:faults()[1].uses)
    end)

    it("raises on a bad rule, naming the field", function()
      assert.error_matches(function() srv:fault{ fault = "503", times = 0 } end, "times must be a whole number")
      assert.error_matches(function() srv:fault{ fault = "nope" } end, "fault 'nope' is unknown")
      assert.error_matches(function() srv:fault("503") end, "takes a table")
      assert.same({}, srv:faults())
    end)

    it("is cleared by m:reset()", function()
      srv:fault{ fault = "503" }
      srv:reset()
      assert.same({}, srv:faults())
      local ml = cachectl.modelslab.new{ key = helpers.uid("k"), base_url = srv.base }
      assert.is_table((ml:clear_cache()))
      ml:close()
    end)
  end)
end)
