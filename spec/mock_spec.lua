-- Specs of the mock server itself (lua/cachectl/mock.lua), driven with raw LuaSocket.
local socket = require "socket"
local cjson = require "cjson"
local mock = require "cachectl.mock"
local server = require "support.mock_server"

local MODEL = "3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b"
local JSON = { ["Content-Type"] = "application/json" }

local function decode(body)
  local ok, v = pcall(cjson.decode, body)
  if ok then return v end
end

local function connect(url)
  local host, port = url:match("^https?://([^:/]+):(%d+)")
  local c = assert(socket.connect(host, tonumber(port)))
  c:settimeout(5)
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

local succeeds = require("support.helpers").succeeds

local function process_alive(pid)
  return succeeds("kill -0 " .. pid .. " 2>/dev/null")
end

describe("cachectl.mock", function()
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
      local before = os.time()
      local res = omni(srv, MODEL, "team%2Fa%3Fb%23c%25d%20e%C3%A9", "tok")
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
      assert.is_true(os.time() - before < 5)
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

    it("does not let a held request delay another connection", function()
      local held = connect(srv.url)
      send_request(held, "POST", "/v5/clear_cache", JSON, '{"key":"k hold=2"}')
      local stalled = connect(srv.url)
      assert(stalled:send("POST /v5/clear_cache HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"ke"))
      local t0 = socket.gettime()
      assert.equals(200, clear_cache(srv, "quick").status)
      assert.is_true(socket.gettime() - t0 < 1.0)
      local res = read_response(held)
      assert.equals(200, res.status)
      assert.is_true(socket.gettime() - t0 > 1.7)
      held:close()
      stalled:close()
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
      local t0 = socket.gettime()
      assert.equals("{\"", c:receive(2))
      c:close()
      assert.is_true(socket.gettime() - t0 > 0.8)
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
      local t0 = socket.gettime()
      local res = clear_cache(srv, "k hold=0.3 fault=504")
      assert.equals(504, res.status)
      assert.is_true(socket.gettime() - t0 >= 0.3)
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
      assert.same({ connections = 0, requests = 0, open = 0 }, srv:stats())
      assert.same({}, srv:requests())
      local res = request(srv.url, "POST", "/_mock/reset")
      assert.same({ ok = true }, res.json)
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
