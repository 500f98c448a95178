-- An adversary's pass over cachectl-mock (docs/mock.md, API.md "Command line
-- and mock server"): fault rules, verification filters, --models FILE, the
-- validation against the vendors' documents, the handle and the busted
-- helper, the rock. Failing tests are defects found; passing ones are what held.
--
-- Every request here is raw (LuaSocket, Connection: close, a short timeout), so
-- that a server that stops answering shows up as a nil status, not a hang.
local socket = require "socket"
local cjson = require "cjson"
local mock = require "cachectl.mock"

local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
local RESET = "/api/v1/models/" .. SALES .. "/cache_reset/"
local YAML = "/api/v1/models/" .. SALES .. "/yaml"
local NEW_ID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

-- One raw request. Returns status, body (raw text), seconds taken; or nil, why, seconds.
local function raw(m, method, path, body, headers, timeout)
  local host, port = m.url:match("^http://([^:/]+):(%d+)$")
  local t0 = socket.gettime()
  local sock = socket.tcp()
  sock:settimeout(timeout or 5)
  local ok, err = sock:connect(host, tonumber(port))
  if not ok then sock:close(); return nil, err, socket.gettime() - t0 end
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: " .. host, "Connection: close" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  local _, serr = sock:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or ""))
  if serr then sock:close(); return nil, serr, socket.gettime() - t0 end
  local data, rerr, partial = sock:receive("*a")
  sock:close()
  data = data or partial or ""
  local status = tonumber(data:match("^HTTP/1%.%d (%d%d%d)") or "")
  if not status then return nil, rerr or "closed without an answer", socket.gettime() - t0 end
  return status, data:match("\r\n\r\n(.*)$") or "", socket.gettime() - t0, data:match("^(.-)\r\n\r\n")
end

local JSON = { ["Content-Type"] = "application/json" }
local function bearer(token)
  return { Authorization = "Bearer " .. (token or "t"), ["Content-Type"] = "application/json" }
end

local function add_rule(m, rule)
  return raw(m, "POST", "/_mock/faults", type(rule) == "string" and rule or cjson.encode(rule), JSON)
end

-- Sends a request and leaves without reading the answer (the socket stays open).
local function fire(m, method, path, body, headers)
  local host, port = m.url:match("^http://([^:/]+):(%d+)$")
  local sock = assert(socket.connect(host, tonumber(port)))
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: " .. host }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  assert(sock:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")))
  return sock
end

-- utf8.len is Lua 5.3's; under 5.1 and LuaJIT (make spec-abis), a scan of the same sequences.
local function utf8_len(s)
  if rawget(_G, "utf8") then return utf8.len(s) end
  local i, n = 1, 0
  while i <= #s do
    local c = s:byte(i)
    local len = (c < 0x80 and 1) or (c >= 0xC2 and c <= 0xDF and 2) or (c >= 0xE0 and c <= 0xEF and 3)
      or (c >= 0xF0 and c <= 0xF4 and 4)
    if not len then return nil end
    for j = i + 1, i + len - 1 do
      local d = s:byte(j)
      if not d or d < 0x80 or d > 0xBF then return nil end
    end
    i, n = i + len, n + 1
  end
  return n
end

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

describe("cachectl-mock under an adversary #slow", function()
  local m
  setup(function() m = mock.start() end)
  teardown(function() if m then m:stop() end end)
  before_each(function() m:reset() end)

  -- A server that one request froze is replaced, so that the tests after it run.
  local function restart()
    m:stop()
    m = mock.start()
  end

  describe("keeps serving other clients whatever one client sends", function()
    it("DEFECT: a 50-byte fileName (a 'simple regular expression') freezes the whole server", function()
      local attacker = fire(m, "GET", YAML .. "?fileName=" .. string.rep(".*", 24) .. "x", nil, bearer())
      socket.sleep(0.3)
      local status, _, took = raw(m, "GET", "/_mock/stats", nil, nil, 1)
      attacker:close()
      restart()
      assert.equal(200, status, "another client got no answer within 1 s (took " .. took .. " s)")
    end)

    it("DEFECT: a rule path with a few '*' in a segment backtracks exponentially on a long policy name", function()
      assert.equal(200, (add_rule(m, { path = "/*a*a*a*a*b", status = 503 })))
      local attacker = fire(m, "POST", RESET .. string.rep("a", 200), nil, bearer())
      socket.sleep(0.3)
      local status, _, took = raw(m, "GET", "/_mock/stats", nil, nil, 1)
      attacker:close()
      restart()
      assert.equal(200, status, "another client got no answer within 1 s (took " .. took .. " s)")
    end)

    -- Counted in Lua VM steps (a count hook, the compiler off), never in
    -- time: twice the segment costs about twice the steps.
    it("DEFECT: util.path_glob is not linear in the path, as its comment and docs/mock.md claim", function()
      local util = require "cachectl.mock.util"
      local match = util.path_glob("/*a*b")
      local jit = rawget(_G, "jit")
      local function steps(n)
        local count = 0
        if jit then jit.off() end
        debug.sethook(function() count = count + 1 end, "", 100)
        local ok, res = pcall(match, "/x/" .. string.rep("a", n))
        debug.sethook()
        if jit then jit.on() end
        assert(ok, res)
        assert.is_false(res)
        return count
      end
      local once, twice = steps(4000), steps(8000)
      assert.is_true(twice < 3 * once + 100, ("%d steps, then %d for twice the segment"):format(once, twice))
    end)

    it("DEFECT: connections held by a client's own hold= directive lock every other client out", function()
      local small = mock.start{ max_connections = 5 }
      local held = {}
      for i = 1, 5 do held[i] = fire(small, "GET", "/api/v1/models", nil, bearer("t hold=30")) end
      socket.sleep(0.3)
      local status = raw(small, "GET", "/_mock/stats", nil, nil, 2)
      for _, s in ipairs(held) do s:close() end
      small:stop()
      assert.equal(200, status, "the control API (and every other client) is refused while 5 requests are held")
    end)

    it("DEFECT: GET /_mock/requests is not valid UTF-8 JSON once a client sent a non-UTF-8 byte", function()
      raw(m, "POST", "/api/v5/clear_cache", '{"key":"k\255\254"}', JSON)
      local status, body = raw(m, "GET", "/_mock/requests")
      assert.equal(200, status)
      assert.is_not_nil(utf8_len(body), "the log is not UTF-8: a non-Lua test cannot parse it")
    end)

    it("DEFECT: POST /_mock/models is quadratic in the models (8000 models block the loop for seconds)", function()
      local list = {}
      for i = 1, 8000 do
        list[i] = string.format('{"id":"1b4e28ba-2fa1-11d2-883f-%012x","name":"m%d"}', i, i)
      end
      -- no time measured: another client is answered within a socket
      -- timeout of 1 s while the definition is being read
      local def = fire(m, "POST", "/_mock/models", '{"models":[' .. table.concat(list, ",") .. ']}', JSON)
      local status = raw(m, "GET", "/api/v1/models", nil, bearer(), 1)
      assert.equal(200, status, "another client was not answered while 8000 models were defined")
      def:settimeout(30)
      assert.equal("HTTP/1.1 200 OK", def:receive("*l"))
      def:close()
    end)

    it("held: a slow 30 MB chunked upload does not delay another client", function()
      local host, port = m.url:match("^http://([^:/]+):(%d+)$")
      local up = assert(socket.connect(host, tonumber(port)))
      up:send("POST /api/v5/clear_cache HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        .. "Transfer-Encoding: chunked\r\n\r\n")
      local chunk = string.rep("a", 1024 * 1024)
      for _ = 1, 30 do
        up:send(string.format("%x\r\n", #chunk) .. chunk .. "\r\n")
        -- answered within the socket timeout (1 s): no time measured
        local status = raw(m, "POST", "/api/v5/clear_cache", '{"key":"k"}', JSON, 1)
        assert.equal(200, status)
      end
      up:close()
    end)

    it("held: 30 clients held by a rule; others answered meanwhile; a reset lets them through normally", function()
      assert.equal(200, (add_rule(m, { path = "/v5/clear_cache", hold = 1.5, fault = "503" })))
      local socks = {}
      for i = 1, 30 do socks[i] = fire(m, "POST", "/api/v5/clear_cache", '{"key":"k"}', JSON) end
      socket.sleep(0.3)
      local status = raw(m, "GET", "/api/v1/models", nil, bearer(), 1)   -- within the hold (1.5 s)
      assert.equal(200, status)
      assert.equal(200, (raw(m, "POST", "/_mock/reset")))
      for _, s in ipairs(socks) do
        s:settimeout(5)
        local line = s:receive("*l")
        assert.equal("HTTP/1.1 200 OK", line)
        s:close()
      end
    end)
  end)

  describe("a request the vendor's document would reject gets the vendor's 4xx", function()
    it("DEFECT: a ModelsLab body that is not JSON (NaN, Infinity, hex, leading zeros) is answered 200", function()
      for _, body in ipairs({ '{"key":"k","x":NaN}', '{"key":"k","x":Infinity}', '{"key":"k","x":0x1F}',
                              '{"key":"k","x":007}' }) do
        local status, answer = raw(m, "POST", "/api/v1/enterprise/3d/clear_queue", body, JSON)
        assert.equal(400, status, body .. " -> " .. tostring(answer))
        assert.matches("invalid_body", answer)
      end
    end)

    it("DEFECT: an Omni reset body that is not JSON is answered 200", function()
      local status, answer = raw(m, "POST", RESET .. "daily", '{"resetAt":null,"n":-Infinity}', bearer())
      assert.equal(400, status, tostring(answer))
    end)

    it("held: wrong types name the field, in the vendor's shape", function()
      for _, path in ipairs({ "/api/v1/enterprise/3d/clear_queue", "/api/v1/enterprise/flux/update_server",
                              "/api/v1/enterprise/clear_cache", "/api/v1/enterprise/new-product/system_details" }) do
        for _, v in ipairs({ "42", "true", "[]", "{}" }) do
          local status, answer = raw(m, "POST", path, '{"key":' .. v .. '}', JSON)
          assert.equal(400, status)
          assert.same({ status = "error", message = "The key field must be a string.", error_code = "invalid_key" },
            cjson.decode(answer))
        end
        local status, answer = raw(m, "POST", path, '{"key":null}', JSON)
        assert.equal(400, status)
        assert.equal("key_required", cjson.decode(answer).error_code)
      end
      local cases = {
        { "GET", "/api/v1/models?pageSize=0", 422, { error = "pageSize must be a positive integer" } },
        { "GET", "/api/v1/models?modelKind=shared", 422,
          { error = "modelKind must be one of SCHEMA, SHARED, SHARED_EXTENSION, BRANCH, WORKBOOK, QUERY" } },
        { "GET", YAML .. "?branchId=x", 422, { error = "branchId must be a UUID" } },
        { "GET", "/api/v1/models/sales/yaml", 400, { detail = "modelId must be a UUID", status = 400 } },
      }
      for _, c in ipairs(cases) do
        local status, answer = raw(m, c[1], c[2], nil, bearer())
        assert.equal(c[3], status, c[2])
        assert.same(c[4], cjson.decode(answer))
      end
      local status, answer = raw(m, "POST", RESET .. "daily", '{"resetAt":1767225600}', bearer())
      assert.equal(400, status)
      assert.same({ error = "400", message = "resetAt must be a string" }, cjson.decode(answer))
    end)

    it("held: cachectl's own calls are not rejected", function()
      local cachectl = require "cachectl"
      local omni = cachectl.omni.new{ token = "t", base_url = m.url .. "/api" }
      assert.truthy(omni:reset_cache(SALES, "daily"))
      assert.truthy(omni:reset_cache(SALES, "weekly report", { reset_at = os.time() - 60 }))
      assert.truthy(omni:models{ name = "x", kind = "SHARED" })
      assert.truthy(omni:model_yaml(SALES, { mode = "combined" }))
      local ml = cachectl.modelslab.new{ key = "k", base_url = m.url .. "/api" }
      assert.truthy(ml:clear_queue{ product = "face_gen", deploy_type = "x" })
      assert.truthy(ml:clear_cache())
      assert.truthy(ml:system_details{ product = "flux", deploy_type = "flux_2_dev" })
      assert.truthy(ml:update_server{ product = "flux" })
      omni:close()
      assert.equal(8, m:count())
    end)
  end)

  describe("fault rules", function()
    it("DEFECT: a rule body holding 1e400 is accepted, then GET /_mock/faults and the route never answer", function()
      local status = add_rule(m, '{"path":"/v5/clear_cache","body":{"x":1e400}}')
      if status == 400 then return end   -- refusing it would be fine
      assert.equal(200, (raw(m, "GET", "/_mock/faults")), "GET /_mock/faults closed without an answer")
      assert.is_not_nil((raw(m, "POST", "/api/v5/clear_cache", '{"key":"k"}', JSON)),
        "the route closed without an answer")
    end)

    it("DEFECT: an empty array in a rule's body is answered as an empty object", function()
      assert.equal(200, (add_rule(m, '{"path":"/v1/models","body":{"records":[]}}')))
      local status, body = raw(m, "GET", "/api/v1/models", nil, bearer())
      assert.equal(200, status)
      assert.equal('{"records":[]}', body)
    end)

    it("DEFECT: a 204 (or 304) answer of a rule carries Content-Length and a body", function()
      local status = add_rule(m, { path = "/v5/clear_cache", status = 204, body = { status = "success" } })
      if status == 400 then return end   -- refusing a body with 204 would be fine
      local s, body, _, head = raw(m, "POST", "/api/v5/clear_cache", '{"key":"k"}', JSON)
      assert.equal(204, s)
      assert.equal("", body)
      assert.is_nil(head:lower():match("content%-length: [1-9]"))
    end)

    it("held: bad rules are refused with a 400 naming the field", function()
      local bad = {
        { '{"path":"/x","fault":"503","times":-1}', "times" },
        { '{"path":"/x","fault":"503","times":1.5}', "times" },
        { '{"path":"/x","fault":"503","times":0}', "times" },
        { '{"path":"/x","fault":"503","times":1e300}', "times" },
        { '{"path":"/x","hold":-1}', "hold" },
        { '{"path":"/x","hold":3601}', "hold" },
        { '{"path":"/x","hold":"1"}', "hold" },
        { '{"path":"x","fault":"503"}', "path" },
        { '{"path":"/x?y=1","fault":"503"}', "path" },
        { '{"path":"/**","fault":"503"}', "path" },
        { '{"method":"G E T","path":"/x","fault":"503"}', "method" },
        { '{"status":100,"body":"x"}', "status" },
        { '{"status":999}', "status" },
        { '{"status":200}', "body" },
        { '{"status":503,"headers":{"X-A":"1\\r\\nX-B: 2"}}', "X%-A" },
        { '{"status":503,"headers":{"X-A\\r\\nX-B":"2"}}', "header name" },
        { '{"status":503,"headers":{"content-length":"2"}}', "content%-length" },
        { '{"fault":"503","status":503}', "fault" },
        { '{"fault":"nope"}', "nope" },
        { '{"bogus":1,"fault":"503"}', "bogus" },
        { '[]', "JSON object" },
        { '{"fault":"503"} x', "JSON object" },
      }
      for _, c in ipairs(bad) do
        local status, body = add_rule(m, c[1])
        assert.equal(400, status, c[1])
        assert.matches(c[2], cjson.decode(body).message, 1, false)
      end
      assert.equal(0, #m:faults())
    end)

    it("held: a lower-case method matches; glob metacharacters are literal; rules never touch /_mock/", function()
      m:fault{ method = "get", path = "/v1/models", status = 503 }
      m:fault{ path = "/cache_reset/d.ily", status = 502 }
      m:fault{ path = "/_mock/reset", fault = "drop" }
      m:fault{ path = "/_mock/faults", status = 503 }
      assert.equal(503, (raw(m, "GET", "/api/v1/models", nil, bearer())))
      assert.equal(200, (raw(m, "POST", RESET .. "daily", nil, bearer())))
      assert.equal(502, (raw(m, "POST", RESET .. "d.ily", nil, bearer())))
      assert.equal(200, (raw(m, "GET", "/_mock/faults")))
      assert.equal(200, (raw(m, "POST", "/_mock/reset")))
    end)

    it("held: 1000 rules, the 1001st refused, a request still answered at once; a 10 MB body served", function()
      for i = 1, 1000 do
        assert.equal(200, (add_rule(m, { path = "/nomatch" .. i .. "/*x*", status = 503 })))
      end
      local status, body = add_rule(m, { path = "/v5/clear_cache", status = 503 })
      assert.equal(400, status)
      assert.matches("too many rules", body)
      local s = raw(m, "POST", "/api/v5/clear_cache", '{"key":"k"}', JSON, 1)   -- answered within 1 s
      assert.equal(200, s)
      m:reset()
      local big = string.rep("x", 10 * 1000 * 1000)
      m:fault{ path = "/v5/clear_cache", status = 200, body = big, times = 1 }
      local s2, b2 = raw(m, "POST", "/api/v5/clear_cache", '{"key":"k"}', JSON, 20)
      assert.equal(200, s2)
      assert.equal(#big, #b2)
    end)
  end)

  describe("verification filters", function()
    it("held: since in the future, negative, not a number; exact at; path with pattern chars", function()
      for i = 1, 3 do raw(m, "POST", "/api/v5/clear_cache?i=" .. i, '{"key":"k"}', JSON) end
      raw(m, "POST", RESET .. "weekly%20report", nil, bearer())
      assert.equal(0, m:count{ since = socket.gettime() + 1000 })
      assert.equal(4, m:count{ since = -5 })
      for _, q in ipairs({ "since=abc", "since=", "since=nan", "since=1e400", "method=", "foo=1", "%zz=1",
                           "path=*", "path=/a%3Fb" }) do
        assert.equal(400, (raw(m, "GET", "/_mock/requests?" .. q)), q)
      end
      local log = m:requests()
      assert.equal(3, m:count{ since = log[2].at })
      assert.equal(2, m:count{ since = log[2].at + 0.0001 })
      assert.equal(3, m:count{ method = "post", path = "/clear_cache" })
      assert.equal(0, m:count{ path = "/cache_reset/weekly report" })
      assert.equal(1, m:count{ path = "/cache_reset/weekly%20report" })
      assert.equal(0, m:count{ path = "/cache_reset/w.*" })
      assert.equal(1, m:count{ path = "/cache_reset/w*t" })
    end)

    it("held: a thousand requests, then filters", function()
      local host, port = m.url:match("^http://([^:/]+):(%d+)$")
      local s = assert(socket.connect(host, tonumber(port)))
      s:settimeout(10)
      local reqs = {}
      for i = 1, 1000 do
        reqs[i] = "POST /api/v5/clear_cache?i=" .. i .. " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          .. (i == 1000 and "Connection: close\r\n" or "") .. "Content-Length: 11\r\n\r\n{\"key\":\"k\"}"
      end
      s:send(table.concat(reqs))
      local answers = s:receive("*a")
      s:close()
      local _, n = answers:gsub("HTTP/1%.1 200", "")
      assert.equal(1000, n)
      assert.is_true(require("support.helpers").eventually(function()
        local done = m:count() == 1000
        return done, done
      end, 200))
      assert.equal(1000, m:count{ method = "POST", path = "/v5/clear_cache" })
      assert.equal(1, m:stats().connections)
    end)
  end)

  describe("--models FILE", function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    teardown(function() os.execute("rm -rf " .. dir) end)

    it("DEFECT: version 1e400 (JSON) / .inf (YAML) is accepted, then the model's YAML never answers", function()
      local status = raw(m, "POST", "/_mock/models",
        '{"models":[{"id":"' .. NEW_ID .. '","name":"X","version":1e400,"yaml":"a: 1"}]}', JSON)
      if status == 200 then
        assert.equal(200, (raw(m, "GET", "/api/v1/models/" .. NEW_ID .. "/yaml", nil, bearer())),
          "POST /_mock/models took it; the YAML closed without an answer")
      end
      local file = write_file(dir .. "/inf.yaml",
        "models:\n  - id: " .. NEW_ID .. "\n    name: X\n    version: .inf\n    yaml: 'a: 1'\n")
      local ok, started = pcall(mock.start, { models = file })
      if ok then
        local yaml_status = raw(started, "GET", "/api/v1/models/" .. NEW_ID .. "/yaml", nil, bearer())
        started:stop()
        assert.equal(200, yaml_status, "--models took version .inf; the YAML closed without an answer")
      end
    end)

    it("held: a YAML bomb, files that are not maps, bad UUIDs are refused naming the file and the problem", function()
      local bomb = { "a: &a [x, x, x, x, x, x, x, x, x, x]" }
      local prev = "a"
      for _, n in ipairs({ "b", "c", "d", "e", "f", "g" }) do
        bomb[#bomb + 1] = n .. ": &" .. n .. " [" .. string.rep("*" .. prev .. ", ", 9) .. "*" .. prev .. "]"
        prev = n
      end
      bomb[#bomb + 1] = "models: []"
      local cases = {
        { "bomb.yaml", table.concat(bomb, "\n") .. "\n", "more than 100000" },
        { "arr.json", "[1,2]", "must hold an object" },
        { "list.yaml", "- a\n- b\n", "must hold an object" },
        { "text.yaml", "just text\n", "must hold an object" },
        { "empty.json", "", "empty" },
        { "uuid.json", '{"models":[{"id":"1b4e28ba-2fa1-11d2-883f-0016d3cca42","name":"A"}]}',
          "models%[1%]%.id must be a UUID" },
        { "colour.json", '{"models":[{"id":"' .. NEW_ID .. '","name":"A","colour":1}]}', "unknown field 'colour'" },
      }
      for _, c in ipairs(cases) do
        local path = write_file(dir .. "/" .. c[1], c[2])
        local ok, err = pcall(mock.start, { models = path })
        assert.is_false(ok, c[1])
        assert.matches(c[1], err, 1, true)
        assert.matches(c[3], err)
      end
    end)

    it("held: duplicate ids (either case) define one model; reset restores the file's models", function()
      local path = write_file(dir .. "/dup.json", '{"models":[{"id":"' .. NEW_ID .. '","name":"A"},{"id":"'
        .. NEW_ID:upper() .. '","name":"B"}],"replace":true}')
      local d = mock.start{ models = path }
      local ok, err = pcall(function()
        local _, body = raw(d, "GET", "/api/v1/models", nil, bearer())
        local page = cjson.decode(body)
        assert.equal(1, page.pageInfo.totalRecords)
        assert.equal("B", page.records[1].name)
        d:define_models({ { id = SALES, name = "Sales" } })
        d:reset()
        _, body = raw(d, "GET", "/api/v1/models", nil, bearer())
        assert.equal(1, cjson.decode(body).pageInfo.totalRecords)
      end)
      d:stop()
      assert(ok, err)
    end)
  end)

  describe("the handle", function()
    it("DEFECT: an unknown option of mock.start is ignored; a bad port does not name the option", function()
      local ok, started = pcall(mock.start, { page_sise = 3 })
      if ok then started:stop() end
      assert.is_false(ok, "mock.start{ page_sise = 3 } started a server with page_size 2")
      local ok2, err2 = pcall(mock.start, { port = "x" })
      assert.is_false(ok2)
      assert.matches("port", err2)
    end)

    it("DEFECT: m:define_models(nil) raises a bare Lua error, not one naming the argument", function()
      local ok, err = pcall(m.define_models, m, nil)
      assert.is_false(ok)
      assert.matches("cachectl.mock", err)
    end)

    it("held: after stop, every method raises clearly; stop is idempotent; the process is gone", function()
      local h = mock.start()
      local pid = h.pid
      assert.is_true(h:stop())
      assert.is_true(h:stop())
      for _, call in ipairs({ function() return h:requests() end, function() return h:count() end,
                              function() return h:fault{ path = "/x", status = 503 } end,
                              function() return h:faults() end, function() return h:reset() end,
                              function() return h:stats() end, function() return h:define_models({}) end }) do
        local ok, err = pcall(call)
        assert.is_false(ok)
        assert.matches("server already stopped", err)
      end
      local r = os.execute("kill -0 " .. pid .. " 2>/dev/null")
      assert.is_false(r == true or r == 0, "process " .. pid .. " is still there")
    end)
  end)
end)

describe("the busted helper #slow", function()
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  teardown(function() os.execute("rm -rf " .. dir) end)

  local function run_busted(name, text)
    local spec = write_file(dir .. "/" .. name .. "_spec.lua", text)
    local p = io.popen("busted --lua=lua5.4 -o TAP " .. spec .. " 2>&1")
    local out = p:read("*a")
    p:close()
    return out
  end

  local function pids_in(file)
    local out = {}
    local f = io.open(file)
    if not f then return out end
    for pid in f:read("*a"):gmatch("%d+") do out[#out + 1] = tonumber(pid) end
    f:close()
    return out
  end

  local function all_gone(pids)
    for _ = 1, 50 do
      local alive = false
      for _, pid in ipairs(pids) do
        local r = os.execute("kill -0 " .. pid .. " 2>/dev/null")
        if r == true or r == 0 then alive = true end      -- 0: Lua 5.1's success
      end
      if not alive then return true end
      socket.sleep(0.1)
    end
    return false
  end

  it("held: nested describes each get their own server; a setup that breaks still stops it; os.exit too", function()
    local pids = dir .. "/pids"
    local out = run_busted("nested", ([[
local mock = require "cachectl.mock.busted"
local outer = mock.use()
describe("outer", function()
  it("a", function() assert.equal(0, outer:count()) end)
  describe("inner", function()
    local inner = mock.use{ page_size = 3 }
    it("b", function()
      assert.not_equal(outer.url, inner.url)
      io.open(%q, "a"):write(outer.pid, " ", inner.pid, "\n"):close()
    end)
  end)
end)
describe("breaks", function()
  local m = mock.use()
  setup(function() io.open(%q, "a"):write(m.pid, "\n"):close(); error("boom") end)
  it("never", function() end)
end)
]]):format(pids, pids))
    assert.matches("ok 1", out)
    assert.matches("ok 2", out)
    assert.matches("boom", out)
    assert.equal(3, #pids_in(pids))
    assert.is_true(all_gone(pids_in(pids)))

    local pids2 = dir .. "/pids2"
    run_busted("exit", ([[
local mock = require "cachectl.mock.busted"
local m = mock.use()
it("exits", function() io.open(%q, "w"):write(m.pid, "\n"):close(); os.exit(0) end)
]]):format(pids2))
    assert.equal(1, #pids_in(pids2))
    assert.is_true(all_gone(pids_in(pids2)))
  end)
end)

describe("the cachectl-mock rock #slow", function()
  it("DEFECT: the cachectl rock installs cachectl.mock too: without the cachectl-mock rock the mock still loads",
  function()
    local work = os.tmpname()
    os.remove(work)
    -- The copy of the checkout includes mock/: the mock's sources moved there, out of
    -- lua/ (which luarocks' builtin build copies whole into the cachectl rock).
    local script = ([[
set -e
work=%s
mkdir -p "$work"
cp -r lua mock src bin docs cachectl-0.1.0-1.rockspec cachectl-mock-0.1.0-1.rockspec "$work/"
cd "$work"
for r in cachectl-0.1.0-1.rockspec cachectl-mock-0.1.0-1.rockspec; do
  luarocks --lua-version=5.4 --tree "$work/tree" make --deps-mode=none "$r" >/dev/null 2>&1
done
luarocks --lua-version=5.4 --tree "$work/tree" remove cachectl-mock >/dev/null 2>&1
cd /
LUA_PATH_5_4="$(luarocks --lua-version=5.4 --tree "$work/tree" path --lr-path);;" \
LUA_CPATH_5_4="$(luarocks --lua-version=5.4 --tree "$work/tree" path --lr-cpath);;" \
lua5.4 -e 'print(package.searchpath("cachectl.mock.server", package.path) or "absent")'
]]):format(work)
    local file = write_file(work .. ".sh", script)
    local p = io.popen("env -u LD_PRELOAD sh " .. file .. " 2>&1")   -- luarocks without a sanitizer's runtime
    local out = p:read("*a")
    p:close()
    os.execute("rm -rf " .. work .. " " .. file)
    assert.matches("absent", out, 1, true)
  end)
end)
