-- The cachectl command as a job in cron sees it: --json prints exactly one
-- document whatever happens (usage errors, a model name matching none or
-- several, an unreadable key file, help, a dry run); the exit status tells
-- a temporary failure (75: rate_limited, timeout, connect, 5xx) from one to
-- fix (1) and from usage (2); --dry-run sends nothing and masks the
-- credential; --key-file - reads standard input; text from a server is
-- printed with its control characters escaped; odd model records for
-- --model NAME give clear output.
local server = require "support.mock_server"
local fixed = require "support.fixed_server"
local support = require "support.cli"
local helpers = require "support.helpers"
local cjson = require "cjson"

local MODEL = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

local secret, run, lines = support.secret, support.run, support.lines

-- The one JSON document of `out`: one line, decoded.
local function one_document(out)
  assert.matches("^[^\n]+\n$", out)
  local ok, doc = pcall(cjson.decode, out)
  assert(ok, "not JSON: " .. out)
  assert.is_table(doc)
  return doc
end

-- Whether a string holds a control character (C0, DEL, or a UTF-8 C1).
local function has_control(s)
  return s:find("[%z\1-\9\11-\31\127]") ~= nil or s:find("\194[\128-\159]") ~= nil
end

describe("cachectl, as a job sees it", function()
  local srv = server.use()

  local function env_of(extra)
    local env = { MODELSLAB_API_KEY = secret(), OMNI_API_KEY = secret("t"), MODELSLAB_BASE_URL = srv.base,
                  OMNI_BASE_URL = srv.base }
    for k, v in pairs(extra or {}) do env[k] = v end
    return env
  end

  describe("--json", function()
    local path
    before_each(function() path = os.tmpname() end)
    after_each(function() os.remove(path) end)

    local cases = {
      { "an unknown action", { "modelslab", "frobnicate" }, 2, "usage" },
      { "an unknown service", { "frobnicate", "x" }, 2, "usage" },
      { "no action", { "omni" }, 2, "usage" },
      { "a missing flag", { "omni", "reset-cache", "--policy", "daily" }, 2, "usage" },
      { "a bad flag value", { "modelslab", "clear-cache", "--timeout", "soon" }, 2, "usage" },
      { "an unknown flag", { "modelslab", "clear-cache", "--bogus" }, 2, "usage" },
      { "a credential as an argument", { "modelslab", "clear-cache", "--key", "abc" }, 2, "usage" },
      { "no credential", { "omni", "models" }, 2, "usage", { OMNI_API_KEY = "" } },
      { "a missing key file", { "omni", "models", "--key-file", "/nonexistent/key" }, 2, "usage" },
      { "an empty key file", { "omni", "models", "--key-file", "EMPTY" }, 2, "usage" },
      { "a credential-less stdin", { "omni", "models", "--key-file", "-" }, 2, "usage" },
    }
    for _, case in ipairs(cases) do
      it("is one document for " .. case[1] .. ", with nothing on stderr", function()
        local argv = {}
        for i, a in ipairs(case[2]) do argv[i] = a == "EMPTY" and path or a end
        argv[#argv + 1] = "--json"
        helpers.write_file(path, "\n", "600")
        local status, out, err = run(argv, env_of(case[5]), { read_line = function() return nil end,
          isatty = function() return false end })
        assert.equal(case[3], status)
        assert.equal("", err)
        local doc = one_document(out)
        assert.is_false(doc.ok)
        assert.same({}, doc.results)
        assert.equal(case[4], doc.error.kind)
        assert.is_string(doc.error.message)
        assert.equal(0, #srv:requests())
      end)
    end

    it("is one document for a model name matching no model, or several", function()
      for _, name in ipairs{ "Nobody", "Finance" } do
        for _, action in ipairs{ { "policies" }, { "reset-cache", "--policy", "daily" } } do
          local argv = { "omni", action[1], "--model", name, "--json", action[2], action[3] }
          local status, out, err = run(argv, env_of())
          assert.equal(1, status)
          assert.equal("", err)
          local doc = one_document(out)
          assert.is_false(doc.ok)
          assert.equal(1, #doc.results)
          assert.equal("find_model", doc.results[1].call)
          assert.equal("invalid", doc.results[1].error.kind)
          assert.equal("model", doc.results[1].error.field)
        end
      end
      for _, r in ipairs(srv:requests()) do assert.equal("GET", r.method) end
    end)

    it("is one document for --help, --version and a dry run", function()
      local _, out = run({ "omni", "models", "--help", "--json" }, env_of())
      assert.matches("^Usage: cachectl omni models", one_document(out).help)
      _, out = run({ "--version", "--json" }, env_of())
      assert.is_string(one_document(out).version)
      _, out = run({ "omni", "models", "--dry-run", "--json" }, env_of())
      assert.is_true(one_document(out).dry_run)
    end)

    it("still says which command failed", function()
      local _, out = run({ "modelslab", "clear-cache", "--json", "--bogus" }, env_of())
      assert.equal("modelslab clear-cache", one_document(out).command)
      _, out = run({ "modelslab", "frobnicate", "--json" }, env_of())
      assert.equal(cjson.null, one_document(out).command)
    end)
  end)

  describe("exit status", function()
    local function ml(key, extra)
      local argv = { "modelslab", "clear-cache", "--retries", "0", "--json" }
      for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
      local status, out = run(argv, env_of{ MODELSLAB_API_KEY = key })
      return status, one_document(out).results[1].error
    end

    it("is 75 for rate_limited (a 429)", function()
      local status, e = ml(secret("k", "fault=429"))
      assert.equal(75, status)
      assert.equal("rate_limited", e.kind)
    end)

    it("is 75 for a timeout", function()
      local status, e = ml(secret("k", "fault=stall"), { "--timeout", "0.3" })
      assert.equal(75, status)
      assert.equal("timeout", e.kind)
    end)

    it("is 75 for no connection", function()
      local status, out = run({ "modelslab", "clear-cache", "--retries", "0", "--json", "--base-url",
        "http://127.0.0.1:" .. helpers.free_port() .. "/api" }, env_of())
      assert.equal(75, status)
      assert.equal("connect", one_document(out).results[1].error.kind)
    end)

    it("is 75 for a 5xx after the retries, 1 for a 4xx", function()
      local status, e = ml(secret("k", "fault=503"))
      assert.equal(75, status)
      assert.equal(503, e.status)
      status = run({ "omni", "reset-cache", "--model", "00000000-0000-0000-0000-000000000000", "--policy", "d",
        "--no-check" }, env_of())
      assert.equal(1, status)
    end)

    it("is 1 for an api error and for a failure to fix beside a temporary one", function()
      assert.equal(1, (ml(secret("bad"))))
      local status = run({ "omni", "reset-cache", "--model", MODEL, "--policy", "a", "--policy", "..",
        "--no-check", "--retries", "0" }, env_of{ OMNI_API_KEY = secret("t", "fault=503") })
      assert.equal(1, status)
    end)
  end)

  describe("--model NAME", function()
    it("checks the other flags' values first: a bad one sends nothing, not even the lookup", function()
      for _, argv in ipairs{ { "reset-cache", "--policy", "daily", "--reset-at", "soon" },
                              { "reset-cache", "--policy", "..", "--no-check" },
                              { "reset-cache", "--policy", "daily", "--reset-at", "2999-01-01T00:00:00Z" } } do
        local args = { "omni", argv[1], "--model", "Sales", "--json" }
        for i = 2, #argv do args[#args + 1] = argv[i] end
        local status, out = run(args, env_of())
        assert.equal(1, status)
        local r = one_document(out).results[1]
        assert.equal("invalid", r.error.kind)
        assert.equal(0, r.error.attempts)
        assert.is_nil(r.model_id)
      end
      assert.same({}, srv:requests())
    end)
  end)

  describe("--dry-run", function()
    it("sends nothing, on every action, and exits 0", function()
      local parser = require "cachectl.cli.parser"
      for _, a in ipairs(parser.actions()) do
        local argv = { a.service, a.name, "--dry-run" }
        for _, o in ipairs(a.takes) do
          if o == "model_id" then argv[#argv + 1] = "--model"; argv[#argv + 1] = "Sales" end
          if o == "policy" then argv[#argv + 1] = "--policy"; argv[#argv + 1] = "daily" end
        end
        local status, out, err = run(argv, env_of())
        assert.equal(0, status, a.service .. " " .. a.name .. ": " .. err)
        assert.matches("^# dry run: nothing is sent\n", out)
      end
      assert.same({}, srv:requests())
    end)

    it("prints the method, URL, headers and body, with *** for the credential", function()
      local key = secret()
      local status, out = run({ "modelslab", "clear-queue", "--product", "flux", "--deploy-type", "x2",
        "--dry-run" }, env_of{ MODELSLAB_API_KEY = key })
      assert.equal(0, status)
      local l = lines(out)
      assert.equal("POST " .. srv.base .. "/v1/enterprise/flux/clear_queue", l[3])
      assert.matches("^User%-Agent: cachectl/", l[4])
      assert.equal("Content-Type: application/json", l[5])
      assert.equal('{"key":"***","deploy_type":"x2"}', l[#l])
      local token = secret("t")
      status, out = run({ "omni", "reset-cache", "--model", "Sales", "--policy", "daily", "--dry-run", "--json" },
        env_of{ OMNI_API_KEY = token })
      assert.equal(0, status)
      local reqs = one_document(out).requests
      assert.equal(3, #reqs)
      assert.same({ "list_models", "model_yaml", "reset_cache" }, { reqs[1].call, reqs[2].call, reqs[3].call })
      -- the URL as the library sends it (pages of 100; spec/cli_adversary_spec.lua)
      assert.equal(srv.base .. "/v1/models?name=Sales&pageSize=100", reqs[1].url)
      assert.equal(srv.base .. '/v1/models/<id of model Sales>/cache_reset/daily', reqs[3].url)
      for _, r in ipairs(reqs) do
        local auth
        for _, h in ipairs(r.headers) do auth = h:match("^Authorization: (.*)$") or auth end
        assert.equal("Bearer ***", auth)
      end
      assert.is_nil(out:find(token:sub(1, 12), 1, true))
      assert.same({}, srv:requests())
    end)

    it("reports a bad value instead of its request (exit 1), still sending nothing", function()
      local status, out, err = run({ "omni", "reset-cache", "--model", MODEL, "--policy", "..", "--dry-run" },
        env_of())
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("(reset_cache): not sent: cachectl: invalid: ", err, 1, true)
      assert.same({}, srv:requests())
    end)

    it("takes no Redis turn and asks no confirmation", function()
      local status = run({ "modelslab", "restart-server", "--dry-run", "--rate-limit", "1/1", "--redis",
        "redis://127.0.0.1:" .. helpers.free_port() }, env_of(), { isatty = function() return true end,
        read_line = function() error("asked") end })
      assert.equal(0, status)
      assert.same({}, srv:requests())
    end)
  end)

  describe("--key-file -", function()
    it("reads the credential from the first line of standard input", function()
      local key = secret("stdin")
      local status, out, err = run({ "modelslab", "clear-cache", "--key-file", "-" }, env_of{ MODELSLAB_API_KEY = "" },
        { isatty = function() return false end, read_line = function() return "  " .. key .. " \r" end }, { key })
      assert.equal(0, status, err)
      assert.matches("Cache cleared", out, 1, true)
      assert.same({ key = key }, cjson.decode(srv:requests()[1].body))
    end)

    it("refuses a terminal on stdin (the key would show as it is typed), sending nothing", function()
      local status, _, err = run({ "modelslab", "clear-cache", "--key-file", "-" }, env_of(),
        { isatty = function(fd) return fd == 0 end, read_line = function() error("read") end })
      assert.equal(2, status)
      assert.matches("standard input is a terminal", err, 1, true)
      assert.same({}, srv:requests())
    end)

    it("works as a process with a pipe, and with stdin closed is a usage error", function()
      local tmp = os.tmpname()
      local runner = support.process(tmp)
      local key = secret("pipe")
      helpers.write_file(tmp .. ".key", key .. "\n", "600")
      local ok = os.execute(runner.command({ "modelslab", "clear-cache", "--base-url", srv.base, "--key-file", "-" },
        {}) .. " <" .. helpers.sh_quote(tmp .. ".key") .. " >" .. helpers.sh_quote(tmp .. ".out") .. " 2>&1")
      assert.is_true(ok == true or ok == 0, helpers.read_file(tmp .. ".out"))
      assert.same({ key = key }, cjson.decode(srv:requests()[1].body))
      local p = assert(io.popen("(" .. runner.command({ "modelslab", "clear-cache", "--base-url", srv.base,
        "--key-file", "-", "--json" }, {}) .. ") <&- 2>&1; echo \"exit $?\""))
      local out = p:read("*a")
      p:close()
      os.remove(tmp .. ".key")
      runner.clean()
      assert.matches('"message":"--key-file -: standard input holds no credential"', out, 1, true)
      assert.matches("\nexit 2\n$", out)
      assert.equal(1, #srv:requests())
    end)
  end)

  describe("text from a server", function()
    local NASTY = "Evil\27[31mRED\7\r\nomni models: 0 models (forged)\194\155x"

    it("is escaped in the model list, the policies and the name lookup; --json stays one valid document", function()
      local id = "0e4a5c1d-1111-4222-8333-444455556666"
      srv:define_models({ { id = id, name = NASTY, modelKind = "SHARED", yaml = "cache_policies:\n"
        .. '  "p\\e[1mq\\nforged": { max_cache_age: "1\\a day\\r" }\n' } })
      for _, argv in ipairs{ { "omni", "models" }, { "omni", "policies", "--model", id } } do
        local status, out, err = run(argv, env_of())
        assert.equal(0, status, err)
        assert.is_false(has_control(out .. err), out)
        assert.is_nil(out:find("\nomni models: 0 models", 1, true))
        argv[#argv + 1] = "--json"
        status, out = run(argv, env_of())
        assert.equal(0, status)
        assert.is_false(has_control(out:sub(1, -2)), out)
        assert.is_table(one_document(out).results[1].result)
      end
      local _, out = run({ "omni", "models", "--json" }, env_of())
      local names = {}
      for _, m in ipairs(one_document(out).results[1].result) do names[m.name] = true end
      assert.is_true(names[NASTY])                          -- the JSON still carries the name as it is
      local _, _, err = run({ "omni", "reset-cache", "--model", "Evil", "--policy", "d" }, env_of())
      assert.is_false(has_control(err), err)
    end)

    it("is escaped in an error message, human and --json", function()
      local fx = fixed.start{ ["POST /api/v5/clear_cache"] = { 400, { status = "error", message = NASTY } } }
      local status, out, err = run({ "modelslab", "clear-cache", "--base-url", fx.base }, env_of())
      local jstatus, jout = run({ "modelslab", "clear-cache", "--base-url", fx.base, "--json" }, env_of())
      fx:stop()
      assert.equal(1, status)
      assert.equal("", out)
      assert.equal(1, #lines(err))
      assert.is_false(has_control(err:sub(1, -2)), err)
      assert.matches("Evil", err, 1, true)
      assert.equal(1, jstatus)
      assert.is_false(has_control(jout:sub(1, -2)))
      assert.matches("^Evil", one_document(jout).results[1].error.message)
    end)

    it("never breaks the JSON document with bytes that are not UTF-8", function()
      local fx = fixed.start{ ["POST /api/v5/clear_cache"] = { 200, '{"status":"success","message":"a\255\192b"}' } }
      local status, out = run({ "modelslab", "clear-cache", "--base-url", fx.base, "--json" }, env_of())
      fx:stop()
      assert.equal(0, status)
      assert.is_nil(out:find("[\192-\255]"))
      assert.equal("a\195\191\195\128b", one_document(out).results[1].result.message)
    end)
  end)

  describe("odd model records for --model NAME", function()
    local function with_records(records, argv)
      local fx = fixed.start{ ["GET /api/v1/models"] = { 200, { records = records, pageInfo = {} } } }
      local args = { "omni", "policies", "--model", "Sales", "--base-url", fx.base, "--retries", "0" }
      for _, a in ipairs(argv or {}) do args[#args + 1] = a end
      local status, out, err = run(args, env_of())
      fx:stop()
      return status, out, err
    end

    it("a matching record without an id, or with a number: a clear decode failure", function()
      for _, records in ipairs{ { { name = "Sales" } }, { { id = 42, name = "Sales" } } } do
        local status, out, err = with_records(records)
        assert.equal(1, status)
        assert.equal("", out)
        assert.matches('^omni policies %-%-model Sales: failed: cachectl: decode: the model list gives the model '
          .. 'named "Sales" no usable id', err)
        assert.is_nil(err:find("internal", 1, true))
        assert.is_nil(err:find("NoId", 1, true))
        _, out = with_records(records, { "--json" })
        assert.equal("decode", one_document(out).results[1].error.kind)
      end
    end)

    it("the same record twice: one model", function()
      local r = { id = SALES, name = "Sales", modelKind = "SHARED" }
      local status, _, err = with_records({ r, r })
      -- found once: the YAML read of that id is then a 404 of this server
      assert.equal(1, status)
      assert.matches("omni policies Sales: failed: cachectl: http: ", err, 1, true)
      assert.is_nil(err:find("models are named", 1, true))
    end)

    it("a model list with odd records lists the usable ones without an internal error", function()
      local fx = fixed.start{ ["GET /api/v1/models"] = { 200, { records = { { name = "A" }, { id = 7, name = "B" },
        { id = SALES, name = false } } } } }
      local status, out, err = run({ "omni", "models", "--base-url", fx.base }, env_of())
      fx:stop()
      assert.equal(0, status, err)
      -- the records without a string id are skipped (a `skipped` event each)
      assert.matches("1 model", out, 1, true)
      assert.matches(SALES, out, 1, true)
      assert.is_nil((out .. err):find("internal", 1, true))
    end)
  end)
end)
