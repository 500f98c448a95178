-- The mock's hardening (docs/mock.md): strict JSON, globs and fileName
-- expressions matched without backtracking, the bounded request log, answers
-- without a body, options checked by name. The parts first (no server), then
-- what a client sees.
local socket = require "socket"
local cjson = require "cjson"
local mock = require "cachectl.mock"
local json = require "cachectl.mock.json"
local log = require "cachectl.mock.log"
local match = require "cachectl.mock.match"
local util = require "cachectl.mock.util"

local function raw(m, method, path, body, headers)
  local host, port = m.url:match("^http://([^:/]+):(%d+)$")
  local sock = assert(socket.connect(host, tonumber(port)))
  sock:settimeout(5)
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: x", "Connection: close" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  assert(sock:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")))
  local data = sock:receive("*a")
  sock:close()
  local head, rest = data:match("^(.-)\r\n\r\n(.*)$")
  return tonumber(head:match("^HTTP/1%.1 (%d+)")), rest, head
end

local JSON = { ["Content-Type"] = "application/json" }

describe("mock strict JSON (cachectl.mock.json)", function()
  it("refuses what is not RFC 8259 JSON, naming the problem", function()
    local cases = {
      { '{"x":NaN}', "invalid token" }, { '{"x":-Infinity}', "invalid number '-'" }, { '{"x":0x1F}', "invalid number" },
      { '{"x":007}', "invalid number '007'" }, { '{"x":1.}', "invalid number '1.'" }, { '{"x":.5}', "invalid token" },
      { '{"x":"\255"}', "not UTF-8" }, { '{"x":"\237\160\128"}', "not UTF-8" },   -- a surrogate, encoded
      { '{"x":"\\ud800"}', "invalid unicode escape" }, { '{"x":[1,{"y":1e400}]}', "x[2].y is out of range" },
    }
    for _, c in ipairs(cases) do
      local v, err = json.decode(c[1])
      assert.is_nil(v, c[1])
      assert.matches(c[2], err, 1, true)
    end
  end)

  it("takes JSON as written, keeps empty arrays arrays, and strings that look like markup as they are", function()
    local v = assert(json.decode('{"a":[],"b":[ {"c":[ ]} ],"d":"[]","e":-0.5e-3,"f":"\\u00e9 \195\169"}'))
    assert.is_true(json.is_array(v.a))
    assert.is_false(json.is_array({}))
    assert.equal("[]", v.d)
    assert.equal(-0.0005, v.e)
    assert.equal("\195\169 \195\169", v.f)
    local again = cjson.decode(json.encode(v))
    assert.same({ a = {}, b = { { c = {} } }, d = "[]", e = -0.0005, f = "\195\169 \195\169" }, again)
    assert.matches('"a":%[%]', json.encode(v))
    assert.matches('"c":%[%]', json.encode(v))
    assert.is_nil(json.object("[]"))
    assert.is_table(json.object(' {"a":1}'))
  end)

  it("repairs text that is not UTF-8, and tells valid text apart", function()
    assert.is_true(util.utf8_valid("plain \226\130\172 \240\159\152\128"))
    assert.same({ false, 3 }, { util.utf8_valid("ab\192\128") })   -- an overlong NUL
    assert.equal("k\239\191\189\239\191\189x", (util.utf8_repair("k\255\254x")))
    local same, changed = util.utf8_repair("\226\130\172")
    assert.equal("\226\130\172", same)
    assert.is_false(changed)
  end)
end)

describe("mock matching (cachectl.mock.match)", function()
  it("matches path globs by segment, from the end of the path", function()
    local cases = {
      { "/v1/models", "/api/v1/models", true }, { "/v1/models", "/api/xv1/models", false },
      { "/cache_reset/*", "/x/cache_reset/daily", true }, { "/cache_reset/*", "/x/cache_reset/a/b", false },
      { "/a*b*c", "/abc", true }, { "/a*b*c", "/acb", false }, { "/ab*ba", "/aba", false },
      { "/w*t", "/weekly%20report", true }, { "/w.*", "/weekly", false }, { "/api/v1/models", "/v1/models", false },
    }
    for _, c in ipairs(cases) do assert.equal(c[3], match.path_glob(c[1])(c[2]), c[1] .. " ~ " .. c[2]) end
  end)

  -- Counted in Lua VM instructions (a count hook, the compiler off), never
  -- in time: twice the subject costs about twice the steps (linear), where
  -- backtracking would cost 4 times or far more. (The glob's work is in
  -- string functions, which the hook does not see: handed to Lua's
  -- backtracking matcher, this glob would not end at all.)
  it("takes linear time on the globs and expressions that backtrack in Lua patterns", function()
    local jit = rawget(_G, "jit")
    local function steps(fn, subject)
      local n = 0
      if jit then jit.off() end
      debug.sethook(function() n = n + 1 end, "", 100)
      local ok, res = pcall(fn, subject)
      debug.sethook()
      if jit then jit.on() end
      assert(ok, res)
      assert.is_false(res)
      return n
    end
    local glob = match.path_glob("/" .. string.rep("*a", 300) .. "b")
    local re = match.regex(string.rep(".*", 24) .. "x")
    for _, c in ipairs{ { glob, "/x/" .. string.rep("a", 5000), "/x/" .. string.rep("a", 10000) },
                        { re, string.rep("a", 500), string.rep("a", 1000) } } do
      local once, twice = steps(c[1], c[2]), steps(c[1], c[3])
      assert.is_true(twice < 3 * once + 100, ("%d steps, then %d for twice the subject"):format(once, twice))
    end
  end)

  it("reads the simple regular expressions of fileName", function()
    local cases = {
      { "model.yaml", "model.yaml", true }, { "^model\\.yaml$", "xmodel.yaml", false },
      { "\\.yaml$", "views/a.yaml", true }, { "^views/.*", "model.yaml", false }, { "a+b", "xaab", true },
      { "colou?r", "colour", true }, { "colou?r", "colouur", false }, { "[^a-c]x", "bx", false },
      { "^\\d+$", "123", true }, { "^a*$", "", true },
    }
    for _, c in ipairs(cases) do assert.equal(c[3], match.regex(c[1])(c[2]), c[1] .. " ~ " .. c[2]) end
    assert.is_nil(match.regex("(a|b)"))
    assert.is_nil(match.regex("[ab"))
  end)
end)

describe("mock request log (cachectl.mock.log)", function()
  local function req(i, body)
    return { method = "POST", target = "/v5/clear_cache?i=" .. i, headers = { ["x-n"] = tostring(i) },
             body = body or "", at = i }
  end
  local all = function() return true end

  it("keeps the last N requests and counts the dropped", function()
    local l = log.new(3, 1000)
    for i = 1, 5 do l:add(req(i), i) end
    assert.equal(3, l:count(all))
    assert.same({ 5, 2, 0 }, { l.total, l.dropped, l.bodies_dropped })
    local list = cjson.decode(l:json(all))
    assert.same({ 3, 4, 5 }, { list[1].connection, list[2].connection, list[3].connection })
  end)

  it("drops the oldest bodies past its byte bound, and lists their requests", function()
    local l = log.new(100, 10)
    l:add(req(1, "aaaa"), 1)
    l:add(req(2, "bbbb"), 2)
    l:add(req(3, "cccc"), 3)
    local list = cjson.decode(l:json(all))
    assert.equal(3, #list)
    assert.same({ "", true }, { list[1].body, list[1].body_dropped })
    assert.same({ "bbbb", "cccc" }, { list[2].body, list[3].body })
    assert.equal(1, l.bodies_dropped)
    l:add(req(4, string.rep("x", 11)), 4)   -- larger than the bound alone
    list = cjson.decode(l:json(all))
    assert.same({ "", true }, { list[4].body, list[4].body_dropped })
    assert.is_true(l.body_bytes <= 10)
  end)

  it("lists what a client sent as UTF-8", function()
    local l = log.new()
    l:add({ method = "POST", target = "/x\255", headers = { ["x-\254"] = "v\255" }, body = "k\255", at = 1 }, 1)
    local text = l:json(all)
    assert.is_true((util.utf8_valid(text)))
    local e = cjson.decode(text)[1]
    assert.same({ "/x\239\191\189", "k\239\191\189", "v\239\191\189" }, { e.path, e.body, e.headers["x-\239\191\189"] })
  end)
end)

describe("mock server, strict and bounded", function()
  local m
  setup(function() m = mock.start() end)
  teardown(function() if m then m:stop() end end)
  before_each(function() m:reset() end)

  it("names the problem of a control body that is not JSON", function()
    local status, body = raw(m, "POST", "/_mock/faults", '{"path":"/x","status":503,"times":007}', JSON)
    assert.equal(400, status)
    assert.matches("invalid number '007'", cjson.decode(body).message, 1, true)
    status, body = raw(m, "POST", "/_mock/faults", '{"path":"/x","body":{"n":[1e400]}}', JSON)
    assert.equal(400, status)
    assert.matches("body.n[1] is out of range", cjson.decode(body).message, 1, true)
    status, body = raw(m, "POST", "/_mock/models", '{"models":[{"id":"x","name":NaN}]}', JSON)
    assert.equal(400, status)
    assert.matches("the body must be a JSON object", cjson.decode(body).message, 1, true)
    assert.equal(0, #m:faults())
  end)

  it("answers a 204 or 304 rule without a body or Content-Length, with its reason phrase", function()
    m:fault{ path = "/v5/clear_cache", status = 204, times = 1 }
    m:fault{ path = "/v5/clear_cache", status = 304, headers = { ETag = '"v1"' }, times = 1 }
    local status, body, head = raw(m, "POST", "/api/v5/clear_cache", '{"key":"k"}', JSON)
    assert.same({ 204, "" }, { status, body })
    assert.matches("^HTTP/1%.1 204 No Content", head)
    assert.is_nil(head:lower():find("content-length", 1, true))
    status, body, head = raw(m, "POST", "/api/v5/clear_cache", '{"key":"k"}', JSON)
    assert.same({ 304, "" }, { status, body })
    assert.matches("^HTTP/1%.1 304 Not Modified", head)
    assert.matches('ETag: "v1"', head, 1, true)
    assert.is_nil(head:lower():find("content-length", 1, true))
    assert.has_error(function() m:fault{ path = "/x", status = 204, body = "x" } end)
  end)

  it("counts without fetching, reports what the log dropped, and lists as integers", function()
    for i = 1, 3 do raw(m, "POST", "/api/v5/clear_cache?i=" .. i, '{"key":"k"}', JSON) end
    local n = m:count{ path = "/clear_cache" }
    assert.equal(3, n)
    assert.equal(math.type and "integer" or "number", math.type and math.type(n) or type(n))
    local status, body, head = raw(m, "GET", "/_mock/requests/count?method=post")
    assert.equal(200, status)
    assert.same({ count = 3, dropped = 0 }, cjson.decode(body))
    assert.matches("X%-Mock%-Dropped: 0", head)
    local stats = m:stats()
    assert.same({ 3, 0, 0 }, { stats.requests, stats.dropped, stats.bodies_dropped })
  end)

  it("matches fileName expressions in the YAML call", function()
    local id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    m:define_models({ { id = id, name = "Many", files = { ["model.yaml"] = "a: 1", ["views/x.view.yaml"] = "b: 2" } } })
    local auth = { Authorization = "Bearer t" }
    local function files(q)
      local status, body = raw(m, "GET", "/api/v1/models/" .. id .. "/yaml?fileName=" .. q, nil, auth)
      assert.equal(200, status)
      local names = {}
      for name in pairs(cjson.decode(body).files) do names[#names + 1] = name end
      table.sort(names)
      return names
    end
    assert.same({ "model.yaml" }, files("model.yaml"))
    assert.same({ "views/x.view.yaml" }, files("%5Eviews%2F.%2A"))
    assert.same({ "model.yaml", "views/x.view.yaml" }, files("%5C.yaml%24"))
    assert.same({}, files("%28a%7Cb%29"))
  end)
end)

describe("mock options", function()
  it("refuses unknown options and bad values, naming them", function()
    local cases = {
      { { page_sise = 3 }, "unknown option 'page_sise'" }, { { port = "x" }, "port must be an integer" },
      { { port = 70000 }, "port must be an integer" }, { { host = "" }, "host must be" },
      { { host = 127 }, "host must be" }, { { on_listen = print }, "unknown option 'on_listen'" },
      { { page_size = math.huge }, "page_size must be a positive integer" },
      { { tls = "cert.pem" }, "tls must be a table" }, { "x", "the options must be a table" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(mock.start, c[1])
      assert.is_false(ok)
      assert.matches(c[2], err, 1, true)
    end
    local ok, err = pcall(mock.serve, { lua = "luajit" })
    assert.is_false(ok)
    assert.matches("unknown option 'lua'", err, 1, true)
  end)

  it("refuses a define_models list that is not a table, naming the argument", function()
    local m = mock.start()
    local ok, err = pcall(m.define_models, m, nil)
    local ok2, err2 = pcall(m.define_models, m, {}, "yes")
    m:stop()
    assert.is_false(ok)
    assert.matches("define_models(list [, replace]): list must be an array", err, 1, true)
    assert.is_false(ok2)
    assert.matches("replace must be true, false or nil", err2, 1, true)
  end)
end)
