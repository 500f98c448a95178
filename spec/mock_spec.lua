-- Specs of the mock server itself (mock/lua/cachectl/mock/), driven with raw LuaSocket.
local socket = require "socket"
local cjson = require "cjson"
local mock = require "cachectl.mock"
local server = require "support.mock_server"
local helpers = require "support.helpers"

local MODEL = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"
local MISSING = "00000000-0000-0000-0000-000000000000"
local JSON = { ["Content-Type"] = "application/json" }

-- The default models, in the order the list answers them (docs/mock.md).
local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
local FINANCE = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"
local FINANCE_BRANCH = "6ba7b813-9dad-11d1-80b4-00c04fd430c8"
local FORBIDDEN = "6ba7b814-9dad-11d1-80b4-00c04fd430c8"
local DEFAULT_MODELS = {
  { SALES, "Sales", "SHARED" },
  { "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "Marketing", "SHARED" },
  { FINANCE, "Finance", "SHARED" },
  { FINANCE_BRANCH, "Finance", "BRANCH" },
  { "6ba7b812-9dad-11d1-80b4-00c04fd430c8", "Empty", "SCHEMA" },
  { FORBIDDEN, "Forbidden", "SHARED" },
}

local function decode(body)
  local ok, v = pcall(cjson.decode, body)
  if ok then return v end
end

local function connect(url)
  local host, port = url:match("^https?://([^:/]+):(%d+)")
  local c = assert(socket.tcp())
  c:settimeout(5)
  assert(c:connect(host, tonumber(port)))
  return c
end

local function send_request(c, method, path, headers, body)
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1" }
  headers = headers or {}
  local has_length = false
  for k, v in pairs(headers) do
    lines[#lines + 1] = k .. ": " .. v
    local lk = k:lower()
    has_length = has_length or lk == "content-length" or lk == "transfer-encoding"
  end
  if body and not has_length then lines[#lines + 1] = "Content-Length: " .. #body end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")))
end

-- Reads one response; returns nil, err when the connection ends before a status line.
local function read_response(c)
  local status_line, err = c:receive("*l")
  if not status_line then return nil, err end
  local res = { status = tonumber(status_line:match("^HTTP/1%.%d (%d%d%d)")), headers = {}, body = "" }
  while true do
    local line = assert(c:receive("*l"))
    if line == "" then break end
    local k, v = line:match("^([^:]+):%s*(.*)$")
    res.headers[k:lower()] = v
  end
  local n = tonumber(res.headers["content-length"] or "0")
  if n > 0 then res.body = assert(c:receive(n)) end
  res.json = decode(res.body)
  return res
end

local function request(url, method, path, headers, body)
  local c = connect(url)
  send_request(c, method, path, headers, body)
  local res, err = read_response(c)
  c:close()
  return res, err
end

local function modelslab(srv, path, key, headers)
  local body = type(key) == "table" and cjson.encode(key) or cjson.encode({ key = key })
  return request(srv.url, "POST", path, headers or JSON, body)
end

local function omni(srv, model, policy, token, body, headers)
  headers = headers or { ["Content-Type"] = "application/json" }
  if token then headers.Authorization = "Bearer " .. token end
  return request(srv.url, "POST", "/v1/models/" .. model .. "/cache_reset/" .. policy, headers, body)
end

local function clear_cache(srv, key)
  return modelslab(srv, "/v5/clear_cache", key)
end

-- A GET with a Bearer token (none when token is nil).
local function get(srv, path, token)
  return request(srv.url, "GET", path, token and { Authorization = "Bearer " .. token } or {})
end

-- Sends raw bytes on a new connection and reads one response.
local function raw(url, data)
  local c = connect(url)
  assert(c:send(data))
  local res, err = read_response(c)
  c:close()
  return res, err
end

local succeeds, sh_quote = helpers.succeeds, helpers.sh_quote

local function process_alive(pid)
  return succeeds("kill -0 " .. pid .. " 2>/dev/null")
end

describe("cachectl.mock #slow", function()
  local srv

  setup(function()
    srv = server.start()
  end)

  teardown(function()
    srv:stop()
  end)

  before_each(function()
    srv:reset()
  end)

  it("reports a loopback URL, a pid and a base", function()
    assert.matches("^http://127%.0%.0%.1:%d+$", srv.url)
    assert.is_number(srv.pid)
    assert.equals(srv.url .. "/api", srv.base)
  end)

  describe("ModelsLab v5/clear_cache", function()
    it("clears the cache", function()
      local res = clear_cache(srv, "k-123")
      assert.equals(200, res.status)
      assert.matches("^application/json", res.headers["content-type"])
      assert.same({ status = "success", message = "Cache cleared" }, res.json)
    end)

    it("accepts a base path prefix", function()
      local res = modelslab(srv, "/api/v5/clear_cache", "k-123")
      assert.same({ status = "success", message = "Cache cleared" }, res.json)
    end)

    it("answers an invalid key with HTTP 200 and an error status", function()
      local res = clear_cache(srv, "bad-key")
      assert.equals(200, res.status)
      assert.same({ status = "error", message = "Invalid API key", error_code = "invalid_key" }, res.json)
    end)

    it("requires the key", function()
      local expected = { status = "error", message = "The key field is required.", error_code = "key_required" }
      for _, body in ipairs({ {}, { key = "" }, { key = 42 } }) do
        local res = modelslab(srv, "/v5/clear_cache", body)
        assert.equals(400, res.status)
        assert.same(expected, res.json)
      end
    end)

    it("validates method, content type and body", function()
      local res = request(srv.url, "GET", "/v5/clear_cache")
      assert.equals(405, res.status)
      assert.equals("error", res.json.status)
      res = modelslab(srv, "/v5/clear_cache", "k", { ["Content-Type"] = "text/plain" })
      assert.equals(400, res.status)
      assert.equals("invalid_content_type", res.json.error_code)
      res = modelslab(srv, "/v5/clear_cache", "k", { ["Content-Type"] = "application/json; charset=utf-8" })
      assert.equals(200, res.status)
      for _, body in ipairs({ "[1]", "{", "", '"key"' }) do
        res = request(srv.url, "POST", "/v5/clear_cache", JSON, body)
        assert.equals(400, res.status)
        assert.equals("error", res.json.status)
      end
    end)
  end)

  describe("ModelsLab enterprise", function()
    it("runs every action", function()
      for _, action in ipairs({ "clear_queue", "clear_cache", "restart_server", "update_server", "system_details" }) do
        local res = modelslab(srv, "/v1/enterprise/3d/" .. action, "k-1")
        assert.equals(200, res.status)
        assert.equals("success", res.json.status)
        assert.is_string(res.json.message)
      end
      local res = modelslab(srv, "/api/v1/enterprise/3d/clear_queue", "k-1")
      assert.same({ status = "success", message = "Queue cleared successfully" }, res.json)
      res = modelslab(srv, "/v1/enterprise/image-gen/system_details", "k-1")
      assert.is_table(res.json.details)
    end)

    it("answers errors", function()
      local res = modelslab(srv, "/v1/enterprise/3d/clear_queue", "bad")
      assert.equals(401, res.status)
      assert.same({ status = "error", message = "Invalid or missing API key", error_code = "unauthorized" }, res.json)
      res = modelslab(srv, "/v1/enterprise/3d/clear_queue", "")
      assert.equals(400, res.status)
      assert.equals("key_required", res.json.error_code)
      res = modelslab(srv, "/v1/enterprise/3D_x/clear_queue", "k")
      assert.equals(400, res.status)
      assert.equals("error", res.json.status)
      assert.is_string(res.json.error_code)
      res = modelslab(srv, "/v1/enterprise/3d/explode", "k")
      assert.equals(404, res.status)
      assert.same({ error = "404", message = "Not found" }, res.json)
    end)
  end)

  describe("Omni cache_reset", function()
    it("resets a cache and decodes the policy name", function()
      local before = os.date("!%Y-%m-%dT%H:%M:%SZ")
      local res = omni(srv, MODEL, "team%2Fa%3Fb%23c%25d%20e%C3%A9", "tok")
      local after = os.date("!%Y-%m-%dT%H:%M:%SZ")
      assert.equals(200, res.status)
      assert.is_true(res.json.success)
      local r = res.json.cache_reset
      assert.matches("^%x+%-%x+%-4%x+%-%x+%-%x+$", r.id)
      assert.equals(36, #r.id)
      assert.equals(MODEL, r.model_id)
      assert.equals("team/a?b#c%d e\195\169", r.policy_name)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", r.created_at)
      assert.equals(r.created_at, r.updated_at)
      assert.equals(r.created_at, r.reset_at)
      -- the same format sorts as text in time order
      assert.is_true(before <= r.created_at and r.created_at <= after)
    end)

    it("echoes resetAt and accepts {}, an empty body and an upper-case UUID", function()
      local res = omni(srv, MODEL, "p", "tok", '{"resetAt":"2024-01-02T03:04:05.5+01:00"}')
      assert.equals(200, res.status)
      assert.equals("2024-01-02T03:04:05.5+01:00", res.json.cache_reset.reset_at)
      assert.equals(200, omni(srv, MODEL, "p", "tok", "{}").status)
      assert.equals(200, omni(srv, MODEL:upper(), "p", "tok", nil, {}).status)
    end)

    it("answers errors in the Omni shape", function()
      local res = omni(srv, MODEL, "p", nil, "{}")
      assert.equals(401, res.status)
      assert.equals("401", res.json.error)
      assert.equals(401, omni(srv, MODEL, "p", "", "{}").status)
      assert.equals(401, omni(srv, MODEL, "p", "bad-token", "{}").status)
      res = omni(srv, MODEL, "p", "tok", '{"resetAt":"2999-01-01T00:00:00Z"}')
      assert.same({ error = "400", message = "resetAt cannot be future dated" }, res.json)
      for _, body in ipairs({ '{"resetAt":"yesterday"}', '{"resetAt":"2024-02-30T00:00:00Z"}',
                              '{"resetAt":12}', "[]", "nope" }) do
        res = omni(srv, MODEL, "p", "tok", body)
        assert.equals(400, res.status)
        assert.equals("400", res.json.error)
      end
      res = omni(srv, MODEL, "p", "tok", "{}", { ["Content-Type"] = "text/plain" })
      assert.equals(400, res.status)
      res = omni(srv, "not-a-uuid", "p", "tok", "{}")
      assert.equals(400, res.status)
      res = omni(srv, "00000000-0000-0000-0000-000000000000", "p", "tok", "{}")
      assert.same({ error = "404", message = "Model with id 00000000-0000-0000-0000-000000000000 does not exist" },
        res.json)
      res = request(srv.url, "GET", "/v1/models/" .. MODEL .. "/cache_reset/p", { Authorization = "Bearer t" })
      assert.equals(405, res.status)
      assert.equals("405", res.json.error)
    end)

    it("enforces --omni-rate-limit per token", function()
      local limited = mock.start({ omni_rate_limit = 2 })
      local codes = {}
      for i = 1, 3 do codes[i] = omni(limited, MODEL, "p", "tok", "{}").status end
      local res = omni(limited, MODEL, "p", "tok", "{}")
      local other = omni(limited, MODEL, "p", "other", "{}")
      limited:stop()
      assert.same({ 200, 200, 429 }, codes)
      assert.same({ error = "429", message = "Too many requests" }, res.json)
      assert.equals(200, other.status)
    end)
  end)

  describe("HTTP handling", function()
    it("answers unknown paths with 404 JSON", function()
      local res = request(srv.url, "GET", "/nothing/here")
      assert.equals(404, res.status)
      assert.same({ error = "404", message = "Not found" }, res.json)
    end)

    it("keeps a connection alive for several requests", function()
      local c = connect(srv.url)
      send_request(c, "POST", "/v5/clear_cache", JSON, '{"key":"k1"}')
      assert.equals(200, read_response(c).status)
      send_request(c, "POST", "/v5/clear_cache", JSON, '{"key":"k2"}')
      assert.equals(200, read_response(c).status)
      local stats = srv:stats()
      assert.equals(1, stats.connections)
      assert.equals(2, stats.requests)
      assert.equals(1, stats.open)
      c:close()
      local log = srv:requests()
      assert.equals(log[1].connection, log[2].connection)
      -- the server sees the close on its next turn of the loop
      local open = srv:stats().open
      for _ = 1, 100 do
        if open == 0 then break end
        socket.sleep(0.02)
        open = srv:stats().open
      end
      assert.equals(0, open)
    end)

    it("closes after Connection: close and after HTTP/1.0", function()
      local c = connect(srv.url)
      send_request(c, "POST", "/v5/clear_cache", { ["Content-Type"] = "application/json", Connection = "close" },
        '{"key":"k"}')
      local res = read_response(c)
      assert.equals("close", res.headers.connection)
      assert.same({ nil, "closed", "" }, { c:receive("*l") })
      c:close()
      c = connect(srv.url)
      assert(c:send("POST /v5/clear_cache HTTP/1.0\r\nContent-Type: application/json\r\n"
        .. "Content-Length: 11\r\n\r\n{\"key\":\"k\"}"))
      assert.equals(200, read_response(c).status)
      assert.same({ nil, "closed", "" }, { c:receive("*l") })
      c:close()
    end)

    it("accepts chunked bodies and answers Expect: 100-continue", function()
      local c = connect(srv.url)
      send_request(c, "POST", "/v5/clear_cache", { ["Content-Type"] = "application/json",
        ["Transfer-Encoding"] = "chunked" }, "5\r\n{\"key\r\n6;x=y\r\n\":\"k\"}\r\n0\r\n\r\n")
      assert.equals(200, read_response(c).status)
      send_request(c, "POST", "/v5/clear_cache", { ["Content-Type"] = "application/json",
        ["Content-Length"] = "11", Expect = "100-continue" })
      assert.equals(100, read_response(c).status)
      assert(c:send('{"key":"k"}'))
      local res = read_response(c)
      c:close()
      assert.equals(200, res.status)
      assert.equals('{"key":"k"}', srv:requests()[2].body)
    end)

    it("reads a request that arrives one byte at a time", function()
      local c = connect(srv.url)
      c:setoption("tcp-nodelay", true)
      local req = "POST /v5/clear_cache HTTP/1.1\r\nContent-Type: application/json\r\n"
        .. "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"key\r\n6\r\n\":\"k\"}\r\n0\r\n\r\n"
      for i = 1, #req do
        assert(c:send(req:sub(i, i)))
        socket.sleep(0.001)
      end
      local res = read_response(c)
      c:close()
      assert.equals(200, res.status)
      assert.equals('{"key":"k"}', srv:requests()[1].body)
    end)

    it("answers a malformed request with 400 and closes", function()
      local c = connect(srv.url)
      assert(c:send("BLAH\r\n\r\n"))
      local res = read_response(c)
      assert.equals(400, res.status)
      assert.same({ nil, "closed", "" }, { c:receive("*l") })
      c:close()
      c = connect(srv.url)
      assert(c:send("POST /v5/clear_cache HTTP/1.1\r\nContent-Length: abc\r\n\r\n"))
      assert.equals(400, read_response(c).status)
      c:close()
      assert.equals(200, clear_cache(srv, "still-alive").status)
    end)

    it("does not let a held or stalled request delay another connection", function()
      local held = connect(srv.url)
      send_request(held, "POST", "/v5/clear_cache", JSON, '{"key":"k hold=30"}')
      local stalled = connect(srv.url)
      assert(stalled:send("POST /v5/clear_cache HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"ke"))
      assert.equals(200, clear_cache(srv, "quick").status)
      -- answered while the held request still waits for its answer
      held:settimeout(0)
      assert.same({ nil, "timeout", "" }, { held:receive("*l") })
      held:close()
      stalled:close()
      local log = srv:requests()
      assert.equals(2, #log)
      assert.equals('{"key":"k hold=30"}', log[1].body)
      assert.equals('{"key":"quick"}', log[2].body)
    end)
  end)

  describe("faults", function()
    local function expect_closed_without_answer(key)
      local c = connect(srv.url)
      send_request(c, "POST", "/v5/clear_cache", JSON, cjson.encode({ key = key }))
      local line, err = c:receive("*l")
      c:close()
      assert.is_nil(line)
      return err
    end

    it("refuse resets the connection", function()
      local err = expect_closed_without_answer("k fault=refuse")
      assert.is_truthy(err == "closed" or err:find("reset"))
    end)

    it("drop closes without answering", function()
      assert.equals("closed", expect_closed_without_answer("k fault=drop"))
    end)

    it("drop_mid_body sends 100 of 1000 bytes", function()
      local c = connect(srv.url)
      send_request(c, "POST", "/v5/clear_cache", JSON, '{"key":"k fault=drop_mid_body"}')
      assert.equals("HTTP/1.1 200 OK", c:receive("*l"))
      repeat local line = c:receive("*l") until line == ""
      local data, err, partial = c:receive(1000)
      c:close()
      assert.is_nil(data)
      assert.equals("closed", err)
      assert.equals(100, #partial)
    end)

    it("stall and stall_mid_body never finish the answer", function()
      local c = connect(srv.url)
      c:settimeout(0.5)
      send_request(c, "POST", "/v5/clear_cache", JSON, '{"key":"k fault=stall"}')
      assert.same({ nil, "timeout", "" }, { c:receive("*l") })
      c:close()
      c = connect(srv.url)
      c:settimeout(0.5)
      send_request(c, "POST", "/v5/clear_cache", JSON, '{"key":"k fault=stall_mid_body"}')
      local data, err, partial = c:receive("*a")
      c:close()
      assert.is_nil(data)
      assert.equals("timeout", err)
      assert.matches("^HTTP/1%.1 200", partial)
      assert.equals(100, #partial:match("\r\n\r\n(.*)$"))
      assert.equals(200, clear_cache(srv, "k").status)
      assert.is_true(srv:stats().open <= 1)
    end)

    it("trickle sends the body one byte at a time", function()
      local c = connect(srv.url)
      send_request(c, "POST", "/v5/clear_cache", JSON, '{"key":"k fault=trickle"}')
      assert.equals("HTTP/1.1 200 OK", c:receive("*l"))
      local headers = {}
      repeat
        local line = c:receive("*l")
        local k, v = line:match("^([^:]+):%s*(.*)$")
        if k then headers[k:lower()] = v end
      until line == ""
      assert.equals("200", headers["content-length"])
      -- within a second only the first bytes have come, one at a time
      c:settimeout(1)
      local data, err, partial = c:receive(200)
      c:close()
      assert.is_nil(data)
      assert.equals("timeout", err)
      assert.is_true(#partial >= 1 and #partial < 200, #partial .. " bytes")
      assert.equals(partial, ('{"status":"success"'):sub(1, #partial))
    end)

    it("answers 429 variants", function()
      local res = clear_cache(srv, "k fault=429")
      assert.equals(429, res.status)
      assert.equals("1", res.headers["retry-after"])
      assert.equals("error", res.json.status)
      res = clear_cache(srv, "k fault=429_no_retry_after")
      assert.equals(429, res.status)
      assert.is_nil(res.headers["retry-after"])
      res = clear_cache(srv, "k fault=429_retry_after_body")
      assert.is_nil(res.headers["retry-after"])
      assert.same({ status = "error", message = "Rate limit exceeded", retry_after = 1 }, res.json)
      res = omni(srv, MODEL, "p", "t fault=429_retry_after_body", "{}")
      assert.same({ error = "429", message = "Too many requests", retry_after = 1 }, res.json)
      res = omni(srv, MODEL, "p", "t fault=429", "{}")
      assert.same({ error = "429", message = "Too many requests" }, res.json)
      res = clear_cache(srv, "k fault=429_http_date")
      assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", res.headers["retry-after"])
    end)

    it("answers 5xx variants", function()
      local res = clear_cache(srv, "k fault=500_html")
      assert.equals(500, res.status)
      assert.matches("^text/html", res.headers["content-type"])
      assert.matches("<html>", res.body)
      for _, code in ipairs({ 502, 503, 504 }) do
        res = clear_cache(srv, "k fault=" .. code)
        assert.equals(code, res.status)
        assert.equals("error", res.json.status)
        res = omni(srv, MODEL, "p", "t fault=" .. code, "{}")
        assert.equals(tostring(code), res.json.error)
      end
      res = clear_cache(srv, "k fault=503_retry_after")
      assert.equals(503, res.status)
      assert.equals("1", res.headers["retry-after"])
    end)

    it("answers broken or surprising 200s", function()
      local res = clear_cache(srv, "k fault=invalid_json")
      assert.equals('{"status": "success",', res.body)
      res = clear_cache(srv, "k fault=empty")
      assert.equals(200, res.status)
      assert.equals("0", res.headers["content-length"])
      res = clear_cache(srv, "k fault=huge")
      assert.is_true(#res.body > 2000000)
      assert.equals("success", res.json.status)
      res = clear_cache(srv, "k fault=html200")
      assert.matches("^text/html", res.headers["content-type"])
      res = clear_cache(srv, "k fault=api_error")
      assert.same({ status = "error", message = "Something failed", error_code = "E42" }, res.json)
      res = omni(srv, MODEL, "p", "t fault=api_error", "{}")
      assert.same({ success = false, message = "Something failed", error = "E42" }, res.json)
    end)

    it("redirects to a recorded /redirect-target", function()
      local res = clear_cache(srv, "k fault=redirect")
      assert.equals(302, res.status)
      assert.equals(srv.url .. "/redirect-target", res.headers.location)
      res = request(srv.url, "POST", "/redirect-target", JSON, "{}")
      assert.same({ status = "success", redirected = true, success = true }, res.json)
      local log = srv:requests()
      assert.equals(2, #log)
      assert.equals("/redirect-target", log[2].path)
    end)

    it("limits a fault to the first N requests with times=N, until reset", function()
      local key = "k-123 fault=503 times=1"
      assert.equals(503, clear_cache(srv, key).status)
      assert.equals(200, clear_cache(srv, key).status)
      assert.equals(503, clear_cache(srv, "k-124 fault=503 times=1").status)
      srv:reset()
      assert.equals(503, clear_cache(srv, key).status)
      local token = "t fault=502 times=2"
      assert.equals(502, omni(srv, MODEL, "p", token, "{}").status)
      assert.equals(502, omni(srv, MODEL, "p", token, "{}").status)
      assert.equals(200, omni(srv, MODEL, "p", token, "{}").status)
    end)

    it("holds, then answers with the fault", function()
      local held = connect(srv.url)
      send_request(held, "POST", "/v5/clear_cache", JSON, '{"key":"k hold=2 fault=504"}')
      local other = clear_cache(srv, "other")
      held:settimeout(0)
      local early = { held:receive("*l") }
      held:settimeout(5)
      local res = read_response(held)
      held:close()
      assert.equals(200, other.status)
      assert.same({ nil, "timeout", "" }, early)
      assert.equals(504, res.status)
    end)
  end)

  describe("control API", function()
    it("records API requests, not control requests", function()
      local c = connect(srv.url)
      send_request(c, "POST", "/v1/models/" .. MODEL .. "/cache_reset/a%2Fb?x=1",
        { ["Content-Type"] = "application/json", Authorization = "Bearer tok", ["X-Custom"] = "v" },
        '{"resetAt":"2020-01-01T00:00:00Z"}')
      read_response(c)
      c:close()
      srv:stats()
      local log = srv:requests()
      assert.equals(1, #log)
      local r = log[1]
      assert.equals("POST", r.method)
      assert.equals("/v1/models/" .. MODEL .. "/cache_reset/a%2Fb?x=1", r.path)
      assert.equals("Bearer tok", r.headers.authorization)
      assert.equals("v", r.headers["x-custom"])
      assert.equals('{"resetAt":"2020-01-01T00:00:00Z"}', r.body)
      assert.is_number(r.connection)
    end)

    it("counts connections and requests, and reset clears them", function()
      clear_cache(srv, "a")
      clear_cache(srv, "b")
      local stats = srv:stats()
      assert.equals(2, stats.connections)
      assert.equals(2, stats.requests)
      assert.equals(0, stats.open)
      assert.is_true(srv:reset())
      assert.same({ connections = 0, requests = 0, open = 0, dropped = 0, bodies_dropped = 0 }, srv:stats())
      assert.same({}, srv:requests())
      local res = request(srv.url, "POST", "/_mock/reset")
      assert.same({ ok = true }, res.json)
    end)
  end)

  describe("ModelsLab enterprise products", function()
    local ACTIONS = {
      clear_queue = "Queue cleared successfully", clear_cache = "Cache cleared successfully",
      restart_server = "Server restart initiated successfully", update_server = "Server update initiated successfully",
      system_details = "System details fetched successfully",
    }

    it("serves any slug of [a-z0-9_-], 1 to 64 characters, for every action", function()
      local slugs = { "face_gen", "image_to_video_ultra", "super-resolution", "z_image_turbo", "nano_banana",
                      "x", string.rep("a", 64) }
      for _, slug in ipairs(slugs) do
        for action, message in pairs(ACTIONS) do
          local res = modelslab(srv, "/api/v1/enterprise/" .. slug .. "/" .. action, "k-1")
          assert.equals(200, res.status, slug .. "/" .. action)
          assert.equals(message, res.json.message)
        end
      end
      for _, slug in ipairs({ string.rep("a", 65), "Face_gen", "face.gen", "face%20gen" }) do
        local res = modelslab(srv, "/api/v1/enterprise/" .. slug .. "/clear_queue", "k-1")
        assert.equals(400, res.status, slug)
        assert.equals("invalid_product", res.json.error_code)
      end
    end)

    it("serves the product-less server for every action", function()
      for action, message in pairs(ACTIONS) do
        local res = modelslab(srv, "/api/v1/enterprise/" .. action, "k-1")
        assert.equals(200, res.status, action)
        assert.same("success", res.json.status)
        assert.equals(message, res.json.message)
      end
      local res = modelslab(srv, "/api/v1/enterprise/system_details", "k-1")
      assert.is_nil(res.json.details.product)
      assert.equals(404, modelslab(srv, "/api/v1/enterprise/3d", "k-1").status)
      assert.equals(401, modelslab(srv, "/api/v1/enterprise/clear_queue", "bad").status)
      local log = srv:requests()
      assert.equals("/api/v1/enterprise/clear_queue", log[#log].path)
    end)

    it("records deploy_type with the body and echoes it in system_details", function()
      local body = { key = "k-1", deploy_type = "flux_2_dev" }
      local res = modelslab(srv, "/api/v1/enterprise/flux/system_details", body)
      assert.same({ product = "flux", deploy_type = "flux_2_dev", status = "running", gpu = "mock-gpu",
                    queue_length = 0 }, res.json.details)
      assert.equals(200, modelslab(srv, "/api/v1/enterprise/flux/clear_queue", body).status)
      local log = srv:requests()
      assert.equals("/api/v1/enterprise/flux/clear_queue", log[2].path)
      assert.same(body, cjson.decode(log[2].body))
      for _, bad in ipairs({ "Flux 2", "", 42, string.rep("d", 65) }) do
        res = modelslab(srv, "/api/v1/enterprise/flux/clear_queue", { key = "k", deploy_type = bad })
        assert.equals(400, res.status)
        assert.equals("invalid_deploy_type", res.json.error_code)
      end
    end)
  end)

  describe("Omni error shapes", function()
    it("answers {detail, status} on the model list and YAML, and 422 as {error}", function()
      local res = get(srv, "/api/v1/models")
      assert.equals(401, res.status)
      assert.same({ detail = "Invalid or missing bearer token", status = 401 }, res.json)
      res = get(srv, "/api/v1/models/" .. MISSING .. "/yaml", "tok")
      assert.equals(404, res.status)
      assert.same({ detail = "Model " .. MISSING .. " not found", status = 404 }, res.json)
      res = get(srv, "/api/v1/models/" .. FORBIDDEN .. "/yaml", "tok")
      assert.equals(403, res.status)
      assert.same({ detail = "Permission denied", status = 403 }, res.json)
      res = get(srv, "/api/v1/models?pageSize=0", "tok")
      assert.equals(422, res.status)
      assert.same({ error = "pageSize must be a positive integer" }, res.json)
      res = request(srv.url, "POST", "/api/v1/models", { Authorization = "Bearer tok" }, "{}")
      assert.equals(405, res.status)
      assert.equals("GET", res.headers.allow)
      assert.same({ detail = "Method not allowed", status = 405 }, res.json)
    end)

    it("switches the shape of one request with shape= in the token", function()
      local res = omni(srv, MODEL, "p", "bad shape=detail", "{}")
      assert.same({ detail = "Invalid or missing bearer token", status = 401 }, res.json)
      res = omni(srv, MISSING, "p", "tok shape=detail", "{}")
      assert.same({ detail = "Model with id " .. MISSING .. " does not exist", status = 404 }, res.json)
      res = get(srv, "/api/v1/models/" .. MISSING .. "/yaml", "tok shape=error")
      assert.same({ error = "404", message = "Model " .. MISSING .. " not found" }, res.json)
      res = get(srv, "/api/v1/models?pageSize=x", "tok shape=error")
      assert.same({ error = "422", message = "pageSize must be a positive integer" }, res.json)
      res = get(srv, "/api/v1/models", "t shape=detail fault=503")
      assert.same({ detail = "Service unavailable", status = 503 }, res.json)
      res = get(srv, "/api/v1/models", "t fault=429_retry_after_body")
      assert.same({ detail = "Too many requests", status = 429, retry_after = 1 }, res.json)
    end)

    it("sets one shape for every endpoint with omni_error_shape", function()
      local detail = mock.start({ omni_error_shape = "detail" })
      local reset = omni(detail, MODEL, "p", nil, "{}")
      detail:stop()
      local shaped = mock.start({ omni_error_shape = "error" })
      local yaml = get(shaped, "/api/v1/models/" .. MISSING .. "/yaml", "tok")
      local list = get(shaped, "/api/v1/models?modelKind=TABLE", "tok")
      shaped:stop()
      assert.same({ detail = "Invalid or missing bearer token", status = 401 }, reset.json)
      assert.same({ error = "404", message = "Model " .. MISSING .. " not found" }, yaml.json)
      assert.equals(422, list.status)
      assert.equals("422", list.json.error)
      assert.matches("^modelKind must be one of", list.json.message)
    end)

    it("refuses a bad option before starting", function()
      for _, opts in ipairs({ { omni_error_shape = "xml" }, { omni_rate_limit = 0 }, { omni_rate_limit_per = 0 },
                              { page_size = 1.5 }, { max_body = -1 }, { max_connections = 1001 } }) do
        local ok, err = pcall(mock.start, opts)
        assert.is_false(ok)
        local name = next(opts)
        assert.matches("cachectl.mock: " .. name, err, 1, true)
      end
    end)
  end)

  describe("Omni rate limit", function()
    it("answers 429 past the limit, with Retry-After until a slot frees, per token", function()
      local limited = mock.start({ omni_rate_limit = 2, omni_rate_limit_per = 5 })
      local codes = {}
      for i = 1, 3 do codes[i] = omni(limited, MODEL, "p", "tok", "{}").status end
      local res = omni(limited, MODEL, "p", "tok", "{}")
      local list = get(limited, "/api/v1/models", "tok")
      local other = omni(limited, MODEL, "p", "other", "{}")
      limited:reset()
      local after_reset = omni(limited, MODEL, "p", "tok", "{}")
      limited:stop()
      assert.same({ 200, 200, 429 }, codes)
      assert.same({ error = "429", message = "Too many requests" }, res.json)
      local wait = tonumber(res.headers["retry-after"])
      assert.is_true(wait >= 1 and wait <= 5, "Retry-After " .. tostring(wait))
      assert.equals(429, list.status)
      assert.same({ detail = "Too many requests", status = 429 }, list.json)
      assert.equals(200, other.status)
      assert.equals(200, after_reset.status)
    end)

    it("is a sliding window that a client keeping the same window never trips", function()
      local limited = mock.start({ omni_rate_limit = 2, omni_rate_limit_per = 1 })
      -- connections opened beforehand: a start is only the sending of the request
      local conns = {}
      for i = 1, 6 do conns[i] = connect(limited.url) end
      local starts, codes = {}, {}
      for i = 1, 6 do
        if i > 2 then
          local wait = starts[i - 2] + 1 - socket.gettime()
          if wait > 0 then socket.sleep(wait) end
        end
        starts[i] = socket.gettime()
        send_request(conns[i], "POST", "/v1/models/" .. MODEL .. "/cache_reset/p",
          { ["Content-Type"] = "application/json", Authorization = "Bearer tok" }, "{}")
        codes[i] = read_response(conns[i]).status
        conns[i]:close()
      end
      local log = limited:requests()
      limited:stop()
      assert.same({ 200, 200, 200, 200, 200, 200 }, codes)
      -- on the server's own clock, no two requests before another within per minus the 50 ms grace
      assert.equals(6, #log)
      for i = 3, #log do assert.is_true(log[i].at - log[i - 2].at > 0.95, "window at " .. i) end
    end)
  end)

  describe("Omni model list", function()
    local function ids(records)
      local out = {}
      for i, r in ipairs(records) do out[i] = r.id end
      return out
    end

    it("lists the default models two to a page, following nextCursor to the end", function()
      local first = get(srv, "/api/v1/models", "tok")
      assert.equals(200, first.status)
      assert.same({ hasNextPage = true, nextCursor = FINANCE, pageSize = 2, totalRecords = 6 }, first.json.pageInfo)
      local seen, pages, cursor = {}, 0, nil
      repeat
        local res = get(srv, "/api/v1/models" .. (cursor and ("?cursor=" .. cursor) or ""), "tok")
        pages = pages + 1
        for _, r in ipairs(res.json.records) do seen[#seen + 1] = { r.id, r.name, r.modelKind } end
        cursor = res.json.pageInfo.hasNextPage and res.json.pageInfo.nextCursor or nil
        if not cursor then assert.equals(cjson.null, res.json.pageInfo.nextCursor) end
      until not cursor
      assert.equals(3, pages)
      assert.same(DEFAULT_MODELS, seen)
    end)

    it("answers the records with the fields of the OpenAPI document", function()
      local res = get(srv, "/api/v1/models?name=Finance&modelKind=BRANCH", "tok")
      assert.equals(1, #res.json.records)
      local r = res.json.records[1]
      assert.same({ "baseModelId", "connectionId", "createdAt", "deletedAt", "id", "modelKind", "name", "updatedAt" },
        (function() local keys = {} for k in pairs(r) do keys[#keys + 1] = k end table.sort(keys) return keys end)())
      assert.equals(FINANCE_BRANCH, r.id)
      assert.equals(FINANCE, r.baseModelId)
      assert.equals(cjson.null, r.deletedAt)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT", r.createdAt)
    end)

    it("filters by exact name and by kind, and pages by pageSize", function()
      assert.same({ FINANCE, FINANCE_BRANCH }, ids(get(srv, "/api/v1/models?name=Finance", "tok").json.records))
      for _, name in ipairs({ "finance", "Fin", "Finance%20" }) do
        local res = get(srv, "/api/v1/models?name=" .. name, "tok")
        assert.equals(200, res.status)
        assert.matches('"records":[]', res.body, 1, true)
        assert.equals(0, res.json.pageInfo.totalRecords)
      end
      assert.same({ DEFAULT_MODELS[5][1] }, ids(get(srv, "/api/v1/models?modelKind=SCHEMA", "tok").json.records))
      local res = get(srv, "/api/v1/models?pageSize=10", "tok")
      assert.equals(6, #res.json.records)
      assert.is_false(res.json.pageInfo.hasNextPage)
      res = get(srv, "/api/v1/models?pageSize=4&cursor=" .. DEFAULT_MODELS[2][1], "tok")
      assert.same({ DEFAULT_MODELS[2][1], FINANCE, FINANCE_BRANCH, DEFAULT_MODELS[5][1] }, ids(res.json.records))
      assert.equals(FORBIDDEN, res.json.pageInfo.nextCursor)
      srv:define_models({ { id = "11111111-2222-4333-8444-555555555555", name = "Weekly Sales+EU" } })
      for _, q in ipairs({ "Weekly%20Sales%2BEU", "Weekly+Sales%2BEU" }) do
        assert.same({ "11111111-2222-4333-8444-555555555555" },
          ids(get(srv, "/api/v1/models?name=" .. q, "tok").json.records))
      end
    end)

    it("hides deleted models unless includeDeleted", function()
      local gone = "22222222-2222-4333-8444-555555555555"
      srv:define_models({ { id = gone, name = "Old", deleted = true } })
      assert.equals(6, get(srv, "/api/v1/models", "tok").json.pageInfo.totalRecords)
      for _, yes in ipairs({ "true", "1" }) do
        local res = get(srv, "/api/v1/models?name=Old&includeDeleted=" .. yes, "tok")
        assert.same({ gone }, ids(res.json.records))
        assert.is_string(res.json.records[1].deletedAt)
      end
      assert.equals(0, get(srv, "/api/v1/models?name=Old&includeDeleted=false", "tok").json.pageInfo.totalRecords)
      assert.equals(404, get(srv, "/api/v1/models/" .. gone .. "/yaml", "tok").status)
    end)

    it("refuses a bad query with 422, an unknown cursor with 400", function()
      for _, q in ipairs({ "pageSize=0", "pageSize=-1", "pageSize=abc", "pageSize=1.5", "modelKind=TABLE",
                           "includeDeleted=maybe", "modelId=nope" }) do
        local res = get(srv, "/api/v1/models?" .. q, "tok")
        assert.equals(422, res.status, q)
        assert.is_string(res.json.error)
      end
      local res = get(srv, "/api/v1/models?cursor=nope", "tok")
      assert.same({ detail = "Invalid cursor", status = 400 }, res.json)
      res = get(srv, "/api/v1/models?name=%zz", "tok")
      assert.equals(400, res.status)
    end)

    it("records the GETs like any API request", function()
      local path = "/api/v1/models?name=Sales&modelKind=SHARED&pageSize=5&cursor=" .. SALES .. "&includeDeleted=false"
      assert.equals(200, get(srv, path, "tok-log").status)
      local yaml = "/api/v1/models/" .. SALES .. "/yaml?fileName=model.yaml&mode=combined&fullyResolved=true"
      assert.equals(200, get(srv, yaml, "tok-log").status)
      local log = srv:requests()
      assert.equals(2, #log)
      assert.equals("GET", log[1].method)
      assert.equals(path, log[1].path)
      assert.equals("Bearer tok-log", log[1].headers.authorization)
      assert.equals("", log[1].body)
      assert.equals(yaml, log[2].path)
      assert.is_number(log[2].at)
      assert.is_true(log[2].at >= log[1].at)
    end)

    it("takes its default page size from page_size", function()
      local paged = mock.start({ page_size = 4 })
      local res = get(paged, "/api/v1/models", "tok")
      paged:stop()
      assert.equals(4, #res.json.records)
      assert.equals(4, res.json.pageInfo.pageSize)
    end)
  end)

  describe("Omni model YAML", function()
    local function yaml_of(id, query, token)
      return get(srv, "/api/v1/models/" .. id .. "/yaml" .. (query or ""), token or "tok")
    end

    it("serves Sales' model.yaml as a real model file: comments, quoted names, anchors, multi-line", function()
      local res = yaml_of(SALES, "?fileName=model.yaml&mode=combined&fullyResolved=true")
      assert.equals(200, res.status)
      assert.is_number(res.json.version)
      local text = res.json.files["model.yaml"]
      assert.same({ "model.yaml" }, (function() local k = {} for n in pairs(res.json.files) do k[#k + 1] = n end
        return k end)())
      assert.matches("\n%s*#", text)
      assert.matches('\n  "weekly report":', text, 1, true)
      assert.matches("&standard", text, 1, true)
      assert.matches("*standard", text, 1, true)
      assert.matches("ai_context: |\n", text, 1, true)
      local lyaml = helpers.need("lyaml", "lua-yaml")
      local doc = lyaml.load(text)
      assert.same({
        daily = { max_cache_age = "24 hours", filter_suggestions_must_obey_policy = true },
        hourly = { max_cache_age = "1 hour" },
        ["weekly report"] = { max_cache_age = "7 days", filter_suggestions_must_obey_policy = true },
      }, doc.cache_policies)
      assert.equals("daily", doc.default_cache_policy)
      assert.matches("^Orders and revenue.-\n.-refunds%.\n$", doc.ai_context)
    end)

    it("declares the documented policies of every default model", function()
      local lyaml = helpers.need("lyaml", "lua-yaml")
      local expected = {
        ["6ba7b810-9dad-11d1-80b4-00c04fd430c8"] = { "nightly", { "nightly" } },
        [FINANCE] = { "daily", { "daily" } },
        [FINANCE_BRANCH] = { "daily", { "daily" } },
      }
      for id, want in pairs(expected) do
        local doc = lyaml.load(yaml_of(id).json.files["model.yaml"])
        local names = {}
        for name in pairs(doc.cache_policies) do names[#names + 1] = name end
        assert.same(want[2], names)
        assert.equals(want[1], doc.default_cache_policy)
      end
      local empty = lyaml.load(yaml_of(DEFAULT_MODELS[5][1]).json.files["model.yaml"])
      assert.is_table(empty)
      assert.is_nil(empty.cache_policies)
      assert.is_nil(empty.default_cache_policy)
    end)

    it("finds a model by an upper-case id and refuses an id that is not a UUID", function()
      assert.equals(200, yaml_of(SALES:upper()).status)
      local res = yaml_of("not-a-uuid")
      assert.same({ detail = "modelId must be a UUID", status = 400 }, res.json)
      assert.equals(401, yaml_of(SALES, nil, "bad-token").status)
    end)

    it("selects files by fileName: a name or a simple regular expression", function()
      local id = "33333333-2222-4333-8444-555555555555"
      srv:define_models({ { id = id, name = "Files", files = { ["model.yaml"] = "a: 1\n",
        ["orders.view.yaml"] = "b: 2\n", ["orders.topic.yaml"] = "c: 3\n" } } })
      local function names(query)
        local out = {}
        for name in pairs(yaml_of(id, query).json.files) do out[#out + 1] = name end
        table.sort(out)
        return out
      end
      assert.same({ "model.yaml", "orders.topic.yaml", "orders.view.yaml" }, names())
      assert.same({ "orders.view.yaml" }, names("?fileName=orders.view.yaml"))
      assert.same({ "orders.topic.yaml", "orders.view.yaml" }, names("?fileName=%5Eorders%5C..*"))
      assert.same({ "orders.view.yaml" }, names("?fileName=view%5C.yaml%24"))
      assert.same({}, names("?fileName=nothing"))
      assert.matches('"files":{}', yaml_of(id, "?fileName=nothing").body, 1, true)
    end)

    it("checks mode, fullyResolved and branchId", function()
      for _, mode in ipairs({ "combined", "extension", "staged", "merged", "history" }) do
        assert.equals(200, yaml_of(SALES, "?mode=" .. mode).status, mode)
      end
      assert.equals(200, yaml_of(SALES, "?branchId=" .. FINANCE_BRANCH .. "&fullyResolved=false&mode=staged").status)
      assert.equals(422, yaml_of(SALES, "?mode=bogus").status)
      assert.equals(422, yaml_of(SALES, "?fullyResolved=maybe").status)
      assert.equals(422, yaml_of(SALES, "?branchId=main").status)
      local res = yaml_of(SALES, "?fullyResolved=true&mode=staged")
      assert.same({ detail = "fullyResolved is only valid with mode=combined", status = 400 }, res.json)
    end)
  end)

  describe("POST /_mock/models", function()
    local MINE = "44444444-2222-4333-8444-555555555555"

    it("adds and replaces models; reset restores the default set", function()
      assert.equals(7, srv:define_models({ { id = MINE, name = "Mine", modelKind = "WORKBOOK",
                                             yaml = "cache_policies:\n  a:\n    max_cache_age: 1 hour\n" } }))
      local res = get(srv, "/api/v1/models?pageSize=10", "tok")
      assert.equals(7, #res.json.records)
      assert.same({ MINE, "Mine", "WORKBOOK" }, { res.json.records[7].id, res.json.records[7].name,
                                                 res.json.records[7].modelKind })
      -- the same id again replaces the model in place
      assert.equals(7, srv:define_models({ { id = MINE:upper(), name = "Mine 2", version = 5, yaml = "x: 1\n" } }))
      local yaml = get(srv, "/api/v1/models/" .. MINE .. "/yaml", "tok").json
      assert.same({ files = { ["model.yaml"] = "x: 1\n" }, version = 5 }, yaml)
      assert.equals(1, srv:define_models({ { id = MINE, name = "Only", forbidden = true } }, true))
      res = get(srv, "/api/v1/models", "tok")
      assert.same({ MINE }, { res.json.records[1].id })
      assert.equals(403, get(srv, "/api/v1/models/" .. MINE .. "/yaml", "tok").status)
      assert.equals(404, get(srv, "/api/v1/models/" .. SALES .. "/yaml", "tok").status)
      srv:reset()
      assert.equals(6, get(srv, "/api/v1/models", "tok").json.pageInfo.totalRecords)
    end)

    it("refuses a bad definition, naming the field, and changes nothing", function()
      local cases = {
        { "[]", "the body must be a JSON object" },
        { '{"models": {"id": 1}}', "models must be an array" },
        { '{"models": [{"id": "x", "name": "a"}]}', "models[1].id must be a UUID" },
        { '{"models": [{"id": "' .. MINE .. '"}]}', "models[1].name must be a non-empty string" },
        { '{"models": [{"id": "' .. MINE .. '", "name": "a", "modelKind": "TABLE"}]}', "models[1].modelKind" },
        { '{"models": [{"id": "' .. MINE .. '", "name": "a", "yaml": 1}]}', "models[1].yaml must be a string" },
        { '{"models": [{"id": "' .. MINE .. '", "name": "a", "colour": "red"}]}', "unknown field 'colour'" },
        { '{"models": [], "replace": "yes"}', "replace must be true or false" },
      }
      for _, case in ipairs(cases) do
        local res = request(srv.url, "POST", "/_mock/models", JSON, case[1])
        assert.equals(400, res.status, case[1])
        assert.matches(case[2], res.json.message, 1, true)
      end
      assert.has_error(function() srv:define_models({ { id = "x", name = "a" } }) end)
      assert.equals(6, get(srv, "/api/v1/models", "tok").json.pageInfo.totalRecords)
    end)
  end)

  describe("under abuse", function()
    -- Sends a chunked request whose first chunk size line is `size_line`.
    local function chunked(url, size_line, rest)
      return raw(url, "POST /v5/clear_cache HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        .. "Transfer-Encoding: chunked\r\n\r\n" .. size_line .. "\r\n" .. (rest or ""))
    end

    it("answers a chunk size that does not fit with 413, a malformed one with 400, and stays up", function()
      for _, size in ipairs({ "FFFFFFFFFFFFFFFF", "ffffffffffffffffffff", "100000000", "4000001" }) do
        local res = chunked(srv.url, size)
        assert.equals(413, res.status, size)
        assert.equals("close", res.headers.connection)
      end
      for _, size in ipairs({ "zz", "-1", "5 x", "" }) do
        assert.equals(400, chunked(srv.url, size).status, size)
      end
      -- leading zeros are not a size
      local res = chunked(srv.url, "000000000000000b", '{"key":"k"}\r\n0\r\n\r\n')
      assert.equals(200, res.status)
      assert.equals(200, clear_cache(srv, "still-alive").status)
      assert.equals(2, #srv:requests())
    end)

    it("answers a body over max_body with 413 before reading it", function()
      local small = mock.start({ max_body = 100 })
      local head = "POST /v5/clear_cache HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      local over = raw(small.url, head .. "Content-Length: 101\r\nExpect: 100-continue\r\n\r\n")
      local huge = raw(small.url, head .. "Content-Length: 99999999999999999999999\r\n\r\n")
      local chunks = raw(small.url, head .. "Transfer-Encoding: chunked\r\n\r\n3c\r\n" .. string.rep("x", 60)
        .. "\r\n3c\r\n")
      local body = '{"key":"k","pad":"' .. string.rep("x", 100 - 20) .. '"}'
      local exact = raw(small.url, head .. "Content-Length: " .. #body .. "\r\n\r\n" .. body)
      local count = #small:requests()
      small:stop()
      assert.equals(100, #body)
      assert.equals(413, over.status)
      assert.equals(413, huge.status)
      assert.equals(413, chunks.status)
      assert.equals(200, exact.status)
      assert.equals(1, count)
      local default = raw(srv.url, head .. "Content-Length: " .. (64 * 1024 * 1024 + 1) .. "\r\n\r\n")
      assert.equals(413, default.status)
    end)

    it("answers over-long header lines with 431 and an over-long request line with 400", function()
      local res = raw(srv.url, "GET / HTTP/1.1\r\nX-Big: " .. string.rep("a", 17 * 1024) .. "\r\n\r\n")
      assert.equals(431, res.status)
      local many = {}
      for i = 1, 101 do many[i] = "X-H" .. i .. ": v" end
      res = raw(srv.url, "GET / HTTP/1.1\r\n" .. table.concat(many, "\r\n") .. "\r\n\r\n")
      assert.equals(431, res.status)
      res = raw(srv.url, "GET /" .. string.rep("a", 17 * 1024) .. " HTTP/1.1\r\n\r\n")
      assert.equals(400, res.status)
      assert.equals(200, clear_cache(srv, "still-alive").status)
    end)

    it("serves other clients during a 60 MB upload, and reads the upload whole", function()
      local body = '{"key":"upload","pad":"' .. string.rep("x", 60 * 1024 * 1024) .. '"}'
      local up = connect(srv.url)
      assert(up:send("POST /v5/clear_cache HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        .. "Content-Length: " .. #body .. "\r\n\r\n"))
      -- Stream the upload as fast as the mock takes it; half-way, another
      -- client sends a request, and its answer must come before the upload ends.
      up:settimeout(0)
      local quick, sent, sent_when_answered, answer = nil, 0, nil, nil
      while sent < #body do
        -- 64 KiB at a time, so the answer is looked for often even when this
        -- process is slow (the valgrind pass runs it)
        local last, err, partial = up:send(body, sent + 1, math.min(sent + 65536, #body))
        sent = last or partial or sent
        assert(last or err == "timeout", err)
        if not quick and sent >= #body / 2 then
          quick = connect(srv.url)
          send_request(quick, "POST", "/v5/clear_cache", JSON, '{"key":"quick"}')
        end
        if quick and not answer and socket.select({ quick }, nil, 0)[quick] then
          answer, sent_when_answered = read_response(quick), sent
        end
        if sent < #body then socket.select((quick and not answer) and { quick } or {}, { up }, 1) end
      end
      up:settimeout(30)
      local res = read_response(up)
      up:close()
      quick:close()
      assert.is_number(sent_when_answered, "the other request was answered only after the upload")
      assert.is_true(sent_when_answered < #body)
      assert.equals(200, answer.status)
      assert.equals(200, res.status)
      local log = srv:requests()
      assert.equals(2, #log)
      assert.equals('{"key":"quick"}', log[1].body)
      assert.equals(#body, #log[2].body)
      assert.equals(body, log[2].body)
    end)

    -- A separate process (its own descriptor limit) holds n connections open.
    local HOLDER = [[
local socket = require "socket"
local host, port, n = arg[1], tonumber(arg[2]), tonumber(arg[3])
local held = {}
for i = 1, n do
  local c, err = socket.tcp()
  if c then c:settimeout(10); local ok; ok, err = c:connect(host, port); if not ok then c = nil end end
  if not c then io.write("failed ", i, ": ", tostring(err), "\n"); io.flush(); os.exit(1) end
  held[i] = c
end
io.write("open ", #held, "\n")
io.flush()
socket.sleep(600)
]]

    local function hold_connections(url, n)
      local host, port = url:match("^http://([^:/]+):(%d+)")
      local file = os.tmpname()
      helpers.write_file(file, HOLDER)
      local inner = "ulimit -n 4096 2>/dev/null || ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec lua5.4 "
        .. sh_quote(file) .. " " .. host .. " " .. port .. " " .. n
      local proc = assert(io.popen("echo $$; exec sh -c " .. sh_quote(inner), "r"))
      local pid = tonumber(proc:read("*l"))
      local line = proc:read("*l") or ""
      local stopped = false
      return {
        line = line,
        stop = function()
          if stopped then return end
          stopped = true
          os.execute("kill " .. pid .. " 2>/dev/null")
          proc:close()
          os.remove(file)
        end,
      }
    end

    it("keeps serving while a client holds more connections than select can watch", function()
      local m = mock.start()
      local holder = hold_connections(m.url, 1100)
      finally(function()   -- one finally per test: busted keeps only the last
        holder:stop()
        m:stop()
      end)
      if holder.line ~= "open 1100" then
        return pending("could not open 1100 sockets (" .. holder.line .. "): raise `ulimit -n` above 1200")
      end
      local res = clear_cache(m, "still-served")
      assert.is_table(res, "no answer while 1100 connections are open")
      assert.equals(200, res.status)
      local stats = m:stats()
      assert.equals(1, stats.requests)
      assert.is_true(stats.open < 1000, stats.open .. " open")
      holder:stop()
      local open = helpers.eventually(function()
        local n = m:stats().open
        return n == 0, n
      end, 250)
      assert.equals(0, open)
    end)
    it("keeps serving when it runs out of descriptors (ulimit -n) first", function()
      local m = mock.start({ lua = [[sh -c 'ulimit -n 40 && exec lua5.4 "$@"' sh]] })
      local held = {}
      finally(function()
        for _, c in ipairs(held) do c:close() end
        m:stop()
      end)
      for i = 1, 100 do held[i] = connect(m.url) end
      local res = clear_cache(m, "still-served")
      assert.is_table(res, "no answer while the mock is out of descriptors")
      assert.equals(200, res.status)
      assert.is_true(m:stats().open < 40)
    end)
  end)

  describe("cachectl-mock command", function()
    local function run(args)
      local out, err = os.tmpname(), os.tmpname()
      -- no path to the mock's modules: bin/cachectl-mock finds the checkout's mock/lua/ itself
      local ok, how, code = os.execute("LUA_PATH=';;' "
        .. "LUA_PATH_5_4=';;' lua5.4 bin/cachectl-mock " .. args .. " >" .. out .. " 2>" .. err)
      if type(ok) == "number" then code = ok / 256 elseif ok == true then code = 0 end
      if how and how ~= "exit" then code = -1 end
      local o, e = helpers.read_file(out), helpers.read_file(err)
      os.remove(out)
      os.remove(err)
      return code, o, e
    end

    it("prints its help with every option", function()
      local code, out = run("--help")
      assert.equals(0, code)
      for _, flag in ipairs({ "--host", "--port", "--omni-rate-limit", "--omni-rate-limit-per", "--omni-error-shape",
                              "--page-size", "--max-body", "--max-connections", "--tls-cert", "--tls-key",
                              "--exit-with-parent" }) do
        assert.matches(flag, out, 1, true)
      end
    end)

    it("exits 2 on bad usage, naming what is wrong", function()
      local cases = {
        { "--port x", "--port must be an integer" }, { "--port 70000", "--port must be an integer" },
        { "--omni-rate-limit 0", "--omni-rate-limit must be" }, { "--omni-error-shape xml", "detail" },
        { "--tls-cert a.pem", "--tls-cert and --tls-key go together" }, { "--bogus", "--bogus" },
      }
      for _, case in ipairs(cases) do
        local code, out, err = run(case[1])
        assert.equals(2, code, case[1])
        assert.equals("", out)
        assert.matches(case[2], err, 1, true)
      end
    end)
  end)

  it("serves HTTPS when given a certificate", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(succeeds("mkdir -p " .. dir))
    local ok = succeeds("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout "
      .. dir .. "/key.pem -out " .. dir .. "/cert.pem >/dev/null 2>&1")
    if not ok then
      os.execute("rm -rf " .. dir)
      pending("openssl is not available")
      return
    end
    local tls = mock.start({ tls = { certificate = dir .. "/cert.pem", key = dir .. "/key.pem" } })
    local ssl = require "ssl"
    local c = connect(tls.url)
    c = assert(ssl.wrap(c, { mode = "client", protocol = "any", verify = "none" }))
    assert(c:dohandshake())
    send_request(c, "POST", "/v5/clear_cache", JSON, '{"key":"k"}')
    local res = read_response(c)
    send_request(c, "POST", "/v5/clear_cache", JSON, '{"key":"k fault=refuse"}')
    local line = c:receive("*l")
    c:close()
    local count = #tls:requests()
    tls:stop()
    os.execute("rm -rf " .. dir)
    assert.matches("^https://", tls.url)
    assert.equals(200, res.status)
    assert.is_nil(line)
    assert.equals(2, count)
  end)

  it("runs under other Lua interpreters", function()
    for _, lua in ipairs({ "lua5.1", "lua5.3", "luajit" }) do
      if succeeds("command -v " .. lua .. " >/dev/null 2>&1") then
        local other = mock.start({ lua = lua })
        local res = omni(other, MODEL, "a%20b", "tok", '{"resetAt":"2020-01-01T00:00:00Z"}')
        other:stop()
        assert.equals(200, res.status)
        assert.equals("a b", res.json.cache_reset.policy_name)
      end
    end
  end)

  it("stop() kills the process, waits and is idempotent", function()
    local extra = mock.start()
    assert.is_true(process_alive(extra.pid))
    assert.is_true(extra:stop())
    assert.is_false(process_alive(extra.pid))
    assert.is_true(extra:stop())
    local host, port = extra.url:match("^http://([^:/]+):(%d+)")
    assert.is_nil(socket.connect(host, tonumber(port)))
    assert.has_error(function() extra:stats() end)
  end)
end)
