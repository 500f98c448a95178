-- Omni discovery in the Lua layer: omni:models (paging), omni:model_yaml,
-- omni:cache_policies (the model file read by the C core, in the file's order)
-- and check_policy (a misspelled policy refused before anything is reset),
-- against the mock's documented default models.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local cjson = require "cjson"
local cachectl = require "cachectl"

local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
local MARKETING = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
local FINANCE = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"
local FINANCE_BRANCH = "6ba7b813-9dad-11d1-80b4-00c04fd430c8"
local EMPTY = "6ba7b812-9dad-11d1-80b4-00c04fd430c8"
local FORBIDDEN = "6ba7b814-9dad-11d1-80b4-00c04fd430c8"
local DEFAULT_NAMES = { "Sales", "Marketing", "Finance", "Finance", "Empty", "Forbidden" }

-- The query of a recorded request as a table of decoded values.
local function query(req)
  local out = {}
  for k, v in (req.path:match("%?(.*)$") or ""):gmatch("([^&=]+)=([^&]*)") do
    out[helpers.percent_decode(k)] = helpers.percent_decode(v)
  end
  return out
end

local function path_only(req)
  return req.path:match("^[^?]*")
end

-- The recorded requests of one method whose path (without query) ends with `tail`.
local function sent(srv, method, tail)
  local out = {}
  for _, r in ipairs(srv:requests()) do
    local p = path_only(r)
    if r.method == method and (tail == "" or p:sub(-#tail) == tail) then out[#out + 1] = r end
  end
  return out
end

local function names_of(list)
  local out = {}
  for i, p in ipairs(list) do out[i] = p.name end
  return out
end

-- A stub Omni that answers the model list from fixed pages keyed by the
-- request's cursor (a server with a paging bug), in its own process.
local function start_stub(pages)
  local code = [[
    local socket, cjson = require "socket", require "cjson"
    local pages = cjson.decode(arg[1])
    local s = assert(socket.bind("127.0.0.1", 0))
    io.stdout:write(select(2, s:getsockname()), "\n") io.stdout:flush()
    while true do
      local c = s:accept()
      c:settimeout(5)
      local line = c:receive("*l") or ""
      repeat local h = c:receive("*l") until not h or h == ""
      local cursor = line:match("[?&]cursor=([^& ]*)") or ""
      local body = cjson.encode(pages[cursor] or pages["*"])
      c:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: "
        .. #body .. "\r\n\r\n" .. body)
      c:close()
    end
  ]]
  local file = os.tmpname()
  helpers.write_file(file, code)
  local p = io.popen("echo $$; exec lua5.4 " .. file .. " " .. helpers.sh_quote(cjson.encode(pages)), "r")
  local pid, port = p:read("*l"), p:read("*l")
  return { base = "http://127.0.0.1:" .. port .. "/api",
           stop = function() os.execute("kill " .. pid) p:close() os.remove(file) end }
end

describe("Omni discovery (Lua layer)", function()
  local srv = server.use()

  local function omni(opts)
    return cachectl.omni.new(helpers.merge({ token = helpers.uid("tok-disc"), base_url = srv.base }, opts))
  end

  describe("models", function()
    it("follows every page to the end, records in order", function()
      local list = assert(omni():models{ page_size = 2 })
      assert.same(DEFAULT_NAMES, names_of(list))
      assert.equal(SALES, list[1].id)
      assert.equal("SHARED", list[1].modelKind)
      assert.equal("BRANCH", list[4].modelKind)
      local reqs = sent(srv, "GET", "/v1/models")
      assert.equal(3, #reqs)                           -- the mock's pages hold 2 records
      assert.is_nil(query(reqs[1]).cursor)
      assert.equal(FINANCE, query(reqs[2]).cursor)     -- each page's nextCursor, in turn
      assert.equal(EMPTY, query(reqs[3]).cursor)
    end)

    it("stops at limit", function()
      local list = assert(omni():models{ limit = 3, page_size = 2 })
      assert.same({ "Sales", "Marketing", "Finance" }, names_of(list))
      assert.equal(2, #sent(srv, "GET", "/v1/models"))
      assert.equal(1, #assert(omni():models{ limit = 1 }))
    end)

    it("sends name, kind, include_deleted and page_size as Omni's query parameters", function()
      local list = assert(omni():models{ name = "Finance", kind = "BRANCH", include_deleted = true, page_size = 5 })
      assert.equal(1, #list)
      assert.equal(FINANCE_BRANCH, list[1].id)
      local reqs = sent(srv, "GET", "/v1/models")
      assert.equal(1, #reqs)
      assert.same({ name = "Finance", modelKind = "BRANCH", includeDeleted = "true", pageSize = "5" }, query(reqs[1]))
      assert.equal(2, #assert(omni():models{ name = "Finance" }))
      assert.equal(0, #assert(omni():models{ name = "No such model" }))
    end)

    it("returns the service's error, and refuses a bad limit before sending", function()
      local res, err = omni():models{ kind = "NOT_A_KIND" }
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(422, err.status)
      assert.matches("modelKind", err.message)
      srv:reset()
      local _, bad = omni():models{ limit = 0 }
      assert.equal("invalid", bad.kind)
      assert.equal("limit", bad.field)
      assert.equal(0, #srv:requests())
      assert.error_matches(function() omni():models{ limit = "10" } end, "'limit' must be a number")
      assert.error_matches(function() omni():models{ modelKind = "SHARED" } end, "unknown option 'modelKind'")
    end)

    it("stops when the cursor does not change or a page is empty (a server bug must not loop)", function()
      local stub = start_stub{
        [""] = { pageInfo = { hasNextPage = true, nextCursor = "c1" }, records = { { id = "a", name = "A" } } },
        c1 = { pageInfo = { hasNextPage = true, nextCursor = "c1" }, records = { { id = "b", name = "B" } } },
      }
      local ok, err = pcall(function()
        local list = assert(omni{ base_url = stub.base }:models())
        assert.same({ "A", "B" }, names_of(list))
      end)
      stub.stop()
      assert(ok, err)
      stub = start_stub{
        [""] = { pageInfo = { hasNextPage = true, nextCursor = "c1" }, records = { { id = "a", name = "A" } } },
        c1 = { pageInfo = { hasNextPage = true, nextCursor = "c2" }, records = {} },
        ["*"] = { pageInfo = { hasNextPage = true, nextCursor = "c3" }, records = { { id = "z", name = "Z" } } },
      }
      ok, err = pcall(function()
        local list = assert(omni{ base_url = stub.base }:models())
        assert.same({ "A" }, names_of(list))
      end)
      stub.stop()
      assert(ok, err)
    end)

    it("also exists as list_models: one page, built from the core's row", function()
      local page = assert(omni():list_models{ page_size = 1 })
      assert.equal(1, #page.records)
      assert.is_true(page.pageInfo.hasNextPage)
    end)
  end)

  describe("model_yaml", function()
    it("sends file_name, mode, fully_resolved and branch_id as query parameters, percent-encoded", function()
      local res = assert(omni():model_yaml(SALES, { file_name = "model.yaml", mode = "combined",
        fully_resolved = true, branch_id = FINANCE_BRANCH }))
      assert.equal("string", type(res.files["model.yaml"]))
      assert.equal(7, res.version)
      local req = sent(srv, "GET", "/yaml")[1]
      assert.equal("/api/v1/models/" .. SALES .. "/yaml", path_only(req))
      assert.same({ fileName = "model.yaml", mode = "combined", fullyResolved = "true", branchId = FINANCE_BRANCH },
        query(req))
      assert(omni():model_yaml(SALES, { file_name = "^model\\.y[a-z]+ l&=#?" }))
      local raw = sent(srv, "GET", "/yaml")[2].path
      assert.equal("^model\\.y[a-z]+ l&=#?", query(sent(srv, "GET", "/yaml")[2]).fileName)
      assert.is_nil(raw:match("fileName=[^&]*[ #?%^\\]"))
    end)

    it("answers 403 for a model the key may not read", function()
      local res, err = omni():model_yaml(FORBIDDEN)
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(403, err.status)
    end)
  end)

  describe("cache_policies", function()
    it("reads model.yaml fully resolved: comments, a quoted name, anchors, merge keys, in file order", function()
      local list = assert(omni():cache_policies(SALES))
      assert.same({
        { name = "daily", max_cache_age = "24 hours", filter_suggestions_must_obey_policy = true },
        { name = "hourly", max_cache_age = "1 hour" },
        { name = "weekly report", max_cache_age = "7 days", filter_suggestions_must_obey_policy = true },
      }, { list[1], list[2], list[3] })
      assert.equal(3, #list)
      assert.equal("daily", list.default)
      local req = sent(srv, "GET", "/yaml")[1]
      assert.same({ fileName = "model.yaml", fullyResolved = "true" }, query(req))
    end)

    it("asks for the file fully resolved only in the combined mode (a client's mode = staged included)", function()
      local c = omni{ mode = "staged" }
      assert(c:cache_policies(SALES))
      assert(c:cache_policies(SALES, { mode = "combined" }))
      local reqs = sent(srv, "GET", "/yaml")
      assert.same({ fileName = "model.yaml", mode = "staged" }, query(reqs[#reqs - 1]))
      assert.same({ fileName = "model.yaml", mode = "combined", fullyResolved = "true" }, query(reqs[#reqs]))
    end)

    it("keeps the file's order whatever it is, with aliases and multi-line values", function()
      local id = "0f0e0d0c-0b0a-4909-8807-060504030201"
      srv:define_models{ { id = id, name = "Ordered", yaml = table.concat({
        "# policies deliberately out of alphabetical order",
        "description: >",
        "  a folded",
        "  description",
        "cache_policies:",
        "  zeta: &slow",
        "    max_cache_age: 30 days   # the longest allowed",
        "  'mid name': *slow",
        "  alpha:",
        "    max_cache_age: 0 seconds",
        "    filter_suggestions_must_obey_policy: false",
        "  \"Émoji ✓\":",
        "    max_cache_age: |",
        "      2 hours",
        "default_cache_policy: 'mid name'",
      }, "\n") .. "\n" } }
      local list = assert(omni():cache_policies(id))
      assert.same({ "zeta", "mid name", "alpha", "Émoji ✓" }, names_of(list))
      assert.equal("30 days", list[2].max_cache_age)
      assert.is_false(list[3].filter_suggestions_must_obey_policy)
      assert.equal("2 hours\n", list[4].max_cache_age)
      assert.equal("mid name", list.default)
    end)

    it("takes a file_name that is a regular expression matching one file", function()
      local list = assert(omni():cache_policies(SALES, { file_name = "^model\\.ya?ml$" }))
      assert.same({ "daily", "hourly", "weekly report" }, names_of(list))
      assert.equal("^model\\.ya?ml$", query(sent(srv, "GET", "/yaml")[1]).fileName)
    end)

    it("gives an empty list for a model without policies", function()
      local list = assert(omni():cache_policies(EMPTY))
      assert.equal(0, #list)
      assert.is_nil(list.default)
    end)

    it("returns the service's error (403, 404), and decode for a file that is not YAML", function()
      local _, e403 = omni():cache_policies(FORBIDDEN)
      assert.equal(403, e403.status)
      local _, e404 = omni():cache_policies(helpers.MISSING_UUID)
      assert.equal(404, e404.status)
      local id = "0f0e0d0c-0b0a-4909-8807-0605040302aa"
      srv:define_models{ { id = id, name = "Broken", yaml = "cache_policies: [unclosed\n" } }
      local _, bad = omni():cache_policies(id)
      assert.equal("decode", bad.kind)
      assert.matches("not valid YAML %(line %d+, column %d+%)", bad.message)
    end)

    it("needs no lyaml: the C core reads the model file (libyaml)", function()
      local saved = {}
      for _, m in ipairs{ "cachectl", "lyaml", "yaml" } do
        saved[m] = package.loaded[m]
        package.loaded[m] = nil
      end
      package.preload.lyaml = function() error("module 'lyaml' not found") end
      package.preload.yaml = function() error("module 'yaml' not found") end
      local ok, err = pcall(function()
        local fresh = require "cachectl"
        local c = fresh.omni.new{ token = helpers.uid("tok-nolyaml"), base_url = srv.base }
        local list = assert(c:cache_policies(SALES))
        assert.equal("daily", list.default)
        assert(c:reset_cache(SALES, "daily", { check_policy = true }))
        assert.is_nil(package.loaded.lyaml)
        assert.is_nil(package.loaded.yaml)
      end)
      package.preload.lyaml, package.preload.yaml = nil, nil
      for _, m in ipairs{ "cachectl", "lyaml", "yaml" } do
        package.loaded[m] = saved[m]
      end
      assert(ok, err)
    end)
  end)

  describe("check_policy", function()
    it("refuses a misspelled policy with the nearest name, and resets nothing", function()
      local res, err = omni():reset_cache(SALES, "dialy", { check_policy = true })
      assert.is_nil(res)
      assert.equal("invalid", err.kind)
      assert.equal("policy", err.field)
      assert.equal(1, err.attempts)                    -- the read of the model file
      assert.equal("no cache policy 'dialy' in model " .. SALES .. "; did you mean 'daily'? "
        .. "(known: daily, hourly, weekly report)", err.message)
      assert.matches("^cachectl: invalid: no cache policy 'dialy'", tostring(err))
      assert.equal(1, #sent(srv, "GET", "/yaml"))
      assert.equal(0, #sent(srv, "POST", "/cache_reset/dialy"))
      assert.equal(1, #srv:requests())
    end)

    it("suggests nothing beyond two edits, and resets a declared name (quoted, with a space)", function()
      local c = omni{ check_policy = true }
      local _, err = c:reset_cache(SALES, "monthly")
      assert.equal("no cache policy 'monthly' in model " .. SALES .. " (known: daily, hourly, weekly report)",
        err.message)
      local res = assert(c:reset_cache(SALES, "weekly report"))
      assert.equal("weekly report", res.cache_reset.policy_name)
      assert.equal(1, #sent(srv, "POST", "/cache_reset/weekly%20report"))
    end)

    it("reads a model's policies once per client, per model", function()
      local c = omni{ check_policy = true }
      assert(c:reset_cache(SALES, "daily"))
      assert(c:reset_cache(SALES, "hourly"))
      assert.is_nil((c:reset_cache(SALES, "dialy")))
      local results = c:reset_caches(SALES, { "daily", "hourly" })
      assert.is_table(results[2].result)
      assert(c:reset_cache(MARKETING, "nightly"))
      assert(c:reset_cache(MARKETING, "nightly"))
      local reads = sent(srv, "GET", "/yaml")
      assert.equal(2, #reads)
      assert.equal("/api/v1/models/" .. SALES .. "/yaml", path_only(reads[1]))
      assert.equal("/api/v1/models/" .. MARKETING .. "/yaml", path_only(reads[2]))
      assert.equal(6, #sent(srv, "POST", ""))
      -- another client reads again; check_policy = false skips the check
      assert(omni{ check_policy = true }:reset_cache(SALES, "daily"))
      assert(omni{ check_policy = true }:reset_cache(SALES, "typo", { check_policy = false }))
      assert.equal(3, #sent(srv, "GET", "/yaml"))
    end)

    it("resets nothing when the policies cannot be read (403, 404), and returns that error", function()
      local c = omni{ check_policy = true }
      local res, err = c:reset_cache(FORBIDDEN, "daily")
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(403, err.status)
      local _, e404 = c:reset_cache(helpers.MISSING_UUID, "daily")
      assert.equal(404, e404.status)
      local results = c:reset_caches(FORBIDDEN, { "daily", "hourly" })
      assert.equal(403, results[1].err.status)
      assert.equal(403, results[2].err.status)
      assert.equal(0, #sent(srv, "POST", ""))
    end)

    it("refuses a model without policies", function()
      local _, err = omni{ check_policy = true }:reset_cache(EMPTY, "daily")
      assert.equal("invalid", err.kind)
      assert.equal("policy", err.field)
      assert.matches("declares none", err.message)
      assert.equal(0, #sent(srv, "POST", ""))
    end)

    it("in reset_caches refuses the unknown names alone", function()
      local results = omni():reset_caches(SALES, { "daily", "dialy", "hourly", "hurly" }, { check_policy = true })
      assert.equal("daily", results[1].result.cache_reset.policy_name)
      assert.equal("invalid", results[2].err.kind)
      assert.matches("did you mean 'daily'%?", results[2].err.message)
      assert.equal("hourly", results[3].result.cache_reset.policy_name)
      assert.matches("did you mean 'hourly'%?", results[4].err.message)
      assert.equal(1, #sent(srv, "GET", "/yaml"))
      assert.equal(2, #sent(srv, "POST", ""))
    end)
  end)

  it("never shows the token in a result, an error or an event", function()
    local token = helpers.secret("SECRETTOKEN")
    local events, on_event = helpers.collector()
    local c = omni{ token = token, on_event = on_event }
    local seen = {}
    local function keep(...) seen[#seen + 1] = { ... } end
    keep(c:models())
    keep(c:models{ name = "Finance", limit = 1 })
    keep(c:model_yaml(SALES))
    keep(c:model_yaml(FORBIDDEN))
    keep(c:cache_policies(SALES))
    keep(c:cache_policies(FORBIDDEN))
    keep(c:reset_cache(SALES, "dialy", { check_policy = true }))
    keep(c:reset_cache(FORBIDDEN, "daily", { check_policy = true }))
    keep(c:reset_caches(SALES, { "daily", "dialy" }, { check_policy = true }))
    assert.is_nil(helpers.find_secret(seen, token))
    assert.is_nil(helpers.find_secret(events, token))
    for _, s in ipairs(seen) do
      for i = 1, 2 do assert.not_matches(token, tostring(s[i]), 1, true) end
    end
    assert.not_matches(token, tostring(c), 1, true)
  end)
end)
