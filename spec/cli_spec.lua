-- The cachectl command: every command against the mock, in process through
-- cli.main with captured output and as a real `lua5.4 bin/cachectl` process;
-- exit statuses (0, 1 to fix, 2 usage, 75 temporary, 130), --json, --quiet,
-- --key-file, and that the credential shows neither in the output nor in
-- the process's argument list. cli_run_spec.lua has --dry-run, --yes,
-- --key-file -, completion and --json for every failure.
local server = require "support.mock_server"
local support = require "support.cli"
local helpers = require "support.helpers"
local parser = require "cachectl.cli.parser"
local core = require "cachectl.core"
local cjson = require "cjson"
local socket = require "socket"

local MODEL = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
local MISSING = "00000000-0000-0000-0000-000000000000"

local secret, run = support.secret, support.run
local free_port, read_file, write_file, sh_quote =
  helpers.free_port, helpers.read_file, helpers.write_file, helpers.sh_quote

-- The Enterprise actions: every action whose row takes a product.
local ENTERPRISE = {}
for _, a in ipairs(parser.actions()) do
  if a.row.options.product then ENTERPRISE[#ENTERPRISE + 1] = a end
end

describe("cachectl command", function()
  local srv = server.use()

  local function ml(argv, key)
    key = key or secret()
    local args = { "modelslab" }
    for _, a in ipairs(argv) do args[#args + 1] = a end
    args[#args + 1] = "--base-url"
    args[#args + 1] = srv.base
    local status, o, e = run(args, { MODELSLAB_API_KEY = key })
    return status, o, e, key
  end

  -- An Omni reset without the policy check (cli_omni_spec.lua tests it):
  -- these tests are about the reset itself.
  local function omni(argv, token, sys)
    token = token or secret("t")
    local args = { "omni", "reset-cache", "--base-url", srv.base, "--no-check" }
    for _, a in ipairs(argv) do args[#args + 1] = a end
    local status, o, e = run(args, { OMNI_API_KEY = token }, sys)
    return status, o, e, token
  end

  describe("modelslab", function()
    it("clear-cache sends the key and prints what was done and how long it took", function()
      local status, out, err, key = ml{ "clear-cache" }
      assert.equal(0, status)
      assert.equal("", err)
      assert.matches("^modelslab clear%-cache: Cache cleared %(%d+ ms%)\n$", out)
      local reqs = srv:requests()
      assert.equal(1, #reqs)
      assert.equal("POST", reqs[1].method)
      assert.equal("/api/v5/clear_cache", reqs[1].path)
      assert.same({ key = key }, cjson.decode(reqs[1].body))
    end)

    it("clear-queue uses the 3d product by default and --product otherwise", function()
      assert.equal(0, (ml{ "clear-queue" }))
      local status, out = ml{ "clear-queue", "--product", "video" }
      assert.equal(0, status)
      assert.matches("^modelslab clear%-queue %[video%]: Queue cleared successfully %(%d+ ms%)\n$", out)
      local reqs = srv:requests()
      assert.equal("/api/v1/enterprise/3d/clear_queue", reqs[1].path)
      assert.equal("/api/v1/enterprise/video/clear_queue", reqs[2].path)
    end)

    -- Written out here (not read from the rows) so that the rows are checked too.
    local ENDPOINT = {
      ["clear-queue"] = "clear_queue", ["enterprise-clear-cache"] = "clear_cache",
      ["restart-server"] = "restart_server", ["update-server"] = "update_server",
      ["system-details"] = "system_details",
    }

    it("has the five Enterprise actions, each with --product, --no-product and --deploy-type", function()
      local names = {}
      for _, a in ipairs(ENTERPRISE) do
        names[#names + 1] = a.name
        local _, out = run({ "modelslab", a.name, "--help" })
        for _, flag in ipairs{ "--product <slug>", "--no-product", "--deploy-type <slug>" } do
          assert.matches(flag, out, 1, true)
        end
      end
      table.sort(names)
      assert.same({ "clear-queue", "enterprise-clear-cache", "restart-server", "system-details", "update-server" },
        names)
    end)

    for action, endpoint in pairs(ENDPOINT) do
      it(action .. " reaches any product slug, the product-less server, and sends --deploy-type", function()
        local status, out, err, key = ml{ action, "--product", "flux_kontext_dev" }
        assert.equal(0, status, err)
        assert.matches("^modelslab " .. action:gsub("%-", "%%-") .. " %[flux_kontext_dev%]: ", out)
        status, out, err = ml({ action, "--no-product" }, key)
        assert.equal(0, status, err)
        assert.matches("[no product]: ", out, 1, true)
        status, out, err = ml({ action, "--product", "flux", "--deploy-type", "flux_2_dev" }, key)
        assert.equal(0, status, err)
        assert.matches("[flux, deploy_type flux_2_dev]: ", out, 1, true)
        local reqs = srv:requests()
        assert.equal(3, #reqs)
        assert.equal("/api/v1/enterprise/flux_kontext_dev/" .. endpoint, reqs[1].path)
        assert.same({ key = key }, cjson.decode(reqs[1].body))
        assert.equal("/api/v1/enterprise/" .. endpoint, reqs[2].path)
        assert.same({ key = key }, cjson.decode(reqs[2].body))
        assert.equal("/api/v1/enterprise/flux/" .. endpoint, reqs[3].path)
        assert.same({ key = key, deploy_type = "flux_2_dev" }, cjson.decode(reqs[3].body))
      end)
    end

    it("--json names the product (false for --no-product) and the deploy type", function()
      local status, out = ml{ "clear-queue", "--no-product", "--deploy-type", "flux_2_dev", "--json" }
      assert.equal(0, status)
      local r = cjson.decode(out).results[1]
      assert.equal(false, r.product)
      assert.equal("flux_2_dev", r.deploy_type)
      status, out = ml{ "clear-queue", "--product", "face_gen", "--json" }
      assert.equal(0, status)
      r = cjson.decode(out).results[1]
      assert.equal("face_gen", r.product)
      assert.is_nil(r.deploy_type)
    end)

    it("refuses a bad slug before sending (exit 1, naming the option)", function()
      local status, out, err = ml{ "clear-queue", "--product", "Face Gen" }
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("product", err, 1, true)
      assert.equal(0, #srv:requests())
    end)

    it("system-details --json carries the details", function()
      local status, out = ml{ "system-details", "--json" }
      assert.equal(0, status)
      local doc = cjson.decode(out)
      assert.is_true(doc.ok)
      assert.equal("system_details", doc.results[1].call)
      assert.equal("3d", doc.results[1].result.details.product)
    end)

    it("takes the base URL from $MODELSLAB_BASE_URL", function()
      local key = secret()
      local status = run({ "modelslab", "clear-cache" }, { MODELSLAB_API_KEY = key, MODELSLAB_BASE_URL = srv.base })
      assert.equal(0, status)
      assert.equal("/api/v5/clear_cache", srv:requests()[1].path)
    end)
  end)

  describe("omni reset-cache", function()
    it("resets one policy with the Bearer token", function()
      local status, out, err, token = omni{ "--model", MODEL, "--policy", "daily" }
      assert.equal(0, status)
      assert.equal("", err)
      assert.matches("^omni reset%-cache daily: reset, as of %S+ %(%d+ ms%)\n$", out)
      local reqs = srv:requests()
      assert.equal(1, #reqs)
      assert.equal("/api/v1/models/" .. MODEL .. "/cache_reset/daily", reqs[1].path)
      assert.equal("Bearer " .. token, reqs[1].headers.authorization)
    end)

    it("resets several policies, one line each, in the order given", function()
      local status, out = omni{ "--model", MODEL, "--policy", "daily", "--policy", "hourly", "--policy", "a b" }
      assert.equal(0, status)
      local lines = {}
      for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.equal(3, #lines)
      assert.matches("^omni reset%-cache daily: ", lines[1])
      assert.matches("^omni reset%-cache hourly: ", lines[2])
      assert.matches('^omni reset%-cache "a b": ', lines[3])
      local paths = {}
      for _, r in ipairs(srv:requests()) do paths[r.path] = true end
      assert.same({
        ["/api/v1/models/" .. MODEL .. "/cache_reset/daily"] = true,
        ["/api/v1/models/" .. MODEL .. "/cache_reset/hourly"] = true,
        ["/api/v1/models/" .. MODEL .. "/cache_reset/a%20b"] = true,
      }, paths)
    end)

    it("runs the policies of a batch concurrently", function()
      -- Held requests one after another would share one kept-alive
      -- connection; three connections mean they overlapped.
      local token = secret("t", "hold=0.3")
      local status = omni({ "--model", MODEL, "--policy", "a", "--policy", "b", "--policy", "c" }, token)
      assert.equal(0, status)
      assert.equal(3, srv:stats().connections)
      assert.equal(3, srv:stats().requests)
    end)

    it("sends --reset-at as resetAt (RFC 3339 or epoch seconds)", function()
      assert.equal(0, (omni{ "--model", MODEL, "--policy", "daily", "--reset-at", "2024-01-02T03:04:05Z" }))
      assert.equal(0, (omni{ "--model", MODEL, "--policy", "daily", "--reset-at", "1700000000" }))
      local reqs = srv:requests()
      assert.equal("2024-01-02T03:04:05Z", cjson.decode(reqs[1].body).resetAt)
      assert.equal("2023-11-14T22:13:20Z", cjson.decode(reqs[2].body).resetAt)
    end)

    it("shows a batch's progress on a terminal only", function()
      local function argv(...)
        local a = { "omni", "reset-cache", "--base-url", srv.base, "--model", MODEL, "--no-check",
                    "--policy", "a", "--policy", "b", "--policy", "c" }
        for _, x in ipairs{ ... } do a[#a + 1] = x end
        return a
      end
      local tty = function() return { isatty = function() return true end } end
      local token = secret("t")
      local _, out = run(argv(), { OMNI_API_KEY = token, TERM = "xterm" }, tty())
      assert.equal("resetting 3 policies of model " .. MODEL .. "...\n", out:match("^[^\n]*\n"))
      local lines = select(2, out:gsub("\n", "\n"))
      assert.equal(4, lines)
      _, out = run(argv(), { OMNI_API_KEY = token, TERM = "xterm" }, { isatty = function() return false end })
      assert.not_matches("resetting", out)
      _, out = run(argv(), { OMNI_API_KEY = token }, tty())
      assert.not_matches("resetting", out)
      _, out = run(argv(), { OMNI_API_KEY = token, TERM = "dumb" }, tty())
      assert.not_matches("resetting", out)
      _, out = run(argv("--json"), { OMNI_API_KEY = token, TERM = "xterm" }, tty())
      assert.is_true(cjson.decode(out).ok)
      _, out = run(argv("--quiet"), { OMNI_API_KEY = token, TERM = "xterm" }, tty())
      assert.equal("", out)
    end)

    it("builds the host from --instance (https only, so nothing reaches the mock)", function()
      local status, out, err = run({ "omni", "reset-cache", "--instance", "Not_A_Label", "--model", MODEL,
        "--policy", "daily", "--no-check" }, { OMNI_API_KEY = secret("t") })
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("instance", err)
      assert.equal(0, #srv:requests())
    end)
  end)

  describe("--json", function()
    it("prints one document with each call's result and time", function()
      local status, out, err = omni{ "--model", MODEL, "--policy", "daily", "--policy", "hourly", "--json" }
      assert.equal(0, status)
      assert.equal("", err)
      local doc = cjson.decode(out)
      assert.is_true(doc.ok)
      assert.equal("omni reset-cache", doc.command)
      assert.equal(2, #doc.results)
      for i, p in ipairs{ "daily", "hourly" } do
        local r = doc.results[i]
        assert.equal("reset_cache", r.call)
        assert.equal(p, r.policy)
        assert.is_true(r.ok)
        assert.equal(p, r.result.cache_reset.policy_name)
        assert.is_true(r.result.success)
        assert.is_number(r.ms)
        assert.is_nil(r.error)
      end
    end)

    it("gives the error's fields on failure, and exit status 1", function()
      local status, out, err = ml({ "clear-cache", "--json" }, secret("bad"))
      assert.equal(1, status)
      assert.equal("", err)
      local doc = cjson.decode(out)
      assert.is_false(doc.ok)
      local r = doc.results[1]
      assert.is_false(r.ok)
      assert.is_nil(r.result)
      assert.equal("api", r.error.kind)
      assert.equal("Invalid API key", r.error.message)
      assert.equal(200, r.error.status)
      assert.equal("invalid_key", r.error.code)
      assert.equal(1, r.error.attempts)
      assert.equal(cjson.null, r.error.retry_after)
      assert.equal(cjson.null, r.error.field)
    end)

    it("reports an HTML 500 as kind http (exit 75: a 5xx is worth retrying later)", function()
      local status, out = ml({ "clear-cache", "--json", "--retries", "0" }, secret("k", "fault=500_html"))
      assert.equal(75, status)
      local e = cjson.decode(out).results[1].error
      assert.equal("http", e.kind)
      assert.equal(500, e.status)
    end)

    it("reports a batch with one failure as failed", function()
      local token = secret("t", "fault=503 times=1")
      local status, out = omni({ "--model", MODEL, "--policy", "a", "--policy", "b", "--policy", "c",
        "--retries", "0", "--json" }, token)
      assert.equal(75, status)
      local doc = cjson.decode(out)
      assert.is_false(doc.ok)
      local failed = 0
      for _, r in ipairs(doc.results) do
        if not r.ok then
          failed = failed + 1
          assert.equal("http", r.error.kind)
          assert.equal(503, r.error.status)
        end
      end
      assert.equal(1, failed)
    end)
  end)

  describe("exit status", function()
    it("is 1 for an error from the service, in words on stderr", function()
      local status, out, err = ml({ "clear-cache" }, secret("bad"))
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("^modelslab clear%-cache: failed: cachectl: api: Invalid API key .*%(%d+ ms%)\n$", err)
      status, out, err = omni({ "--model", MISSING, "--policy", "daily" })
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("failed: cachectl: http: Model with id " .. MISSING .. " does not exist", err, 1, true)
    end)

    it("is 75 for a connection failure to a closed port", function()
      local status, out, err = run({ "modelslab", "clear-cache", "--retries", "0", "--timeout", "5",
        "--base-url", "http://127.0.0.1:" .. free_port() .. "/api" }, { MODELSLAB_API_KEY = secret() })
      assert.equal(75, status)
      assert.equal("", out)
      assert.matches("failed: cachectl: connect: ", err)
    end)

    it("is 1 for a bad value caught before sending (the policy '..')", function()
      local status, out, err = omni{ "--model", MODEL, "--policy", ".." }
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("failed: cachectl: invalid: ", err, 1, true)
      assert.equal(0, #srv:requests())
    end)

    it("is 1 for a batch where one policy was refused and the others went out", function()
      local status, out, err = omni{ "--model", MODEL, "--policy", "daily", "--policy", ".." }
      assert.equal(1, status)
      assert.matches("^omni reset%-cache daily: reset", out)
      assert.matches("omni reset-cache ..: failed: cachectl: invalid: ", err, 1, true)
      assert.equal(1, #srv:requests())
    end)

    local usage = {
      { "no command", {} },
      { "unknown command", { "frobnicate" } },
      { "unknown action", { "modelslab", "flush-everything" } },
      { "no action", { "omni" } },
      { "missing --model", { "omni", "reset-cache", "--policy", "daily" } },
      { "missing --policy", { "omni", "reset-cache", "--model", MODEL } },
      { "bad flag", { "modelslab", "clear-cache", "--bogus" } },
      { "--product where there is none", { "modelslab", "clear-cache", "--product", "3d" } },
      { "bad --timeout", { "modelslab", "clear-cache", "--timeout", "soon" } },
      { "negative --retries", { "modelslab", "clear-cache", "--retries", "-1" } },
      { "extra argument", { "modelslab", "clear-cache", "extra" } },
      { "--json with --quiet", { "modelslab", "clear-cache", "--json", "--quiet" }, "json" },
      { "--instance with --base-url", { "omni", "reset-cache", "--model", MODEL, "--policy", "d",
        "--instance", "acme", "--base-url", "http://127.0.0.1:1/api" } },
      { "--playground without --instance", { "omni", "reset-cache", "--model", MODEL, "--policy", "d",
        "--playground" } },
      { "--product with --no-product", { "modelslab", "clear-queue", "--product", "3d", "--no-product" } },
      { "--no-product where there is none", { "modelslab", "clear-cache", "--no-product" } },
      { "--deploy-type where there is none", { "modelslab", "clear-cache", "--deploy-type", "x" } },
      { "--redis without a rate limit to keep", { "modelslab", "clear-queue", "--redis", "redis://127.0.0.1:1" } },
      { "bad --rate-limit", { "modelslab", "clear-cache", "--rate-limit", "60" } },
      { "bad --coalesce", { "modelslab", "clear-cache", "--coalesce", "-1" } },
      { "--model twice", { "omni", "reset-cache", "--model", MODEL, "--model", MODEL, "--policy", "d" } },
    }
    for _, case in ipairs(usage) do
      it("is 2 for a usage error: " .. case[1], function()
        local env = { MODELSLAB_API_KEY = secret(), OMNI_API_KEY = secret("t"), MODELSLAB_BASE_URL = srv.base,
                      OMNI_BASE_URL = srv.base }
        local status, out, err = run(case[2], env)
        assert.equal(2, status)
        assert.equal(0, #srv:requests())
        if case[3] == "json" then      -- --json: the error is the document
          assert.equal("usage", cjson.decode(out).error.kind)
          assert.equal("", err)
          return
        end
        assert.equal("", out)
        -- one line and a hint naming a command that exists, not the usage text
        local l = support.lines(err)
        assert.equal(2, #l, err)
        assert.matches("^cachectl: error: ", l[1])
        local hint = l[2]:match("^Run 'cachectl(.-) %-%-help' for help%.$")
        assert.is_truthy(hint, l[2])
        local argv = {}
        for w in hint:gmatch("%S+") do argv[#argv + 1] = w end
        argv[#argv + 1] = "--help"
        assert.equal(0, (run(argv, {})))
        assert.is_nil(err:find("Usage:", 1, true))
      end)
    end

    for _, flag in ipairs{ { "--key", "x" }, { "--key=x" }, { "--token", "x" }, { "--token=x" } } do
      it("is 2 when a credential is given as an argument: " .. flag[1], function()
        local value = secret("argv")
        local argv = { "modelslab", "clear-cache", "--base-url", srv.base }
        if flag[2] then
          argv[#argv + 1] = flag[1]
          argv[#argv + 1] = value
        else
          argv[#argv + 1] = flag[1]:gsub("x$", value)
        end
        local status, out, err = run(argv, { MODELSLAB_API_KEY = secret() })
        assert.equal(2, status)
        assert.equal("", out)
        assert.matches("environment", err, 1, true)
        assert.matches("--key-file", err, 1, true)
        assert.is_nil(err:find(value, 1, true), "the value was echoed")
        assert.equal(0, #srv:requests())
      end)
    end

    it("is 1 for a batch with one refused policy and one failed for a temporary reason", function()
      local token = secret("t", "fault=503 times=1")
      local status = omni({ "--model", MODEL, "--policy", "daily", "--policy", "..", "--retries", "0" }, token)
      assert.equal(1, status)
      assert.equal(1, #srv:requests())
    end)

    it("is 2 without a credential, naming the variable", function()
      local status, _, err = run({ "omni", "reset-cache", "--base-url", srv.base, "--model", MODEL,
        "--policy", "daily" }, {})
      assert.equal(2, status)
      assert.matches("OMNI_API_KEY", err, 1, true)
      assert.matches("--key-file", err, 1, true)
      status, _, err = run({ "modelslab", "clear-cache", "--base-url", srv.base }, { MODELSLAB_API_KEY = "" })
      assert.equal(2, status)
      assert.matches("MODELSLAB_API_KEY", err, 1, true)
      assert.equal(0, #srv:requests())
    end)
  end)

  describe("--help", function()
    local every = { { "--help" }, { "modelslab", "--help" }, { "omni", "-h" } }
    for _, a in ipairs(parser.actions()) do every[#every + 1] = { a.service, a.name, "--help" } end
    for _, argv in ipairs(every) do
      it("cachectl " .. table.concat(argv, " ") .. " prints help with an example and exits 0", function()
        local status, out, err = run(argv, {})
        assert.equal(0, status)
        assert.equal("", err)
        assert.matches("^Usage: cachectl", out)
        assert.matches("Example", out, 1, true)
      end)
    end

    it("lists an action per call row with an action name, and omni models and policies", function()
      local want = {}
      for sname, svc in pairs(core.services) do
        for _, row in pairs(svc.calls) do
          if row.action then want[#want + 1] = sname .. " " .. row.action end
        end
      end
      want[#want + 1] = "omni models"
      want[#want + 1] = "omni policies"
      table.sort(want)
      local got = {}
      for _, service in ipairs{ "modelslab", "omni" } do
        local _, out = run({ service, "--help" })
        for line in out:match("Commands:\n(.-)\n\n"):gmatch("[^\n]+") do
          local name = line:match("^   ([%w%-]+)")
          if name then got[#got + 1] = service .. " " .. name end
        end
      end
      table.sort(got)
      assert.same(want, got)
    end)

    it("wins over missing flags", function()
      local status, out = run({ "omni", "reset-cache", "--help" }, {})
      assert.equal(0, status)
      assert.matches("--model <uuid|name>", out, 1, true)
      assert.matches("--key-file", out, 1, true)
    end)
  end)

  describe("--quiet", function()
    it("prints nothing on success", function()
      local status, out, err = ml{ "clear-cache", "--quiet" }
      assert.equal(0, status)
      assert.equal("", out)
      assert.equal("", err)
      assert.equal(1, #srv:requests())
    end)

    it("still reports a failure on stderr", function()
      local status, out, err = ml({ "clear-cache", "--quiet" }, secret("bad"))
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("Invalid API key", err, 1, true)
    end)
  end)

  describe("--key-file", function()
    local path
    before_each(function() path = os.tmpname() end)
    after_each(function() os.remove(path) end)

    it("reads the first line, trimmed, in preference to the environment", function()
      local key = secret("file")
      write_file(path, "  " .. key .. " \r\nsecond line\n", "600")
      local status, out, err = run({ "modelslab", "clear-cache", "--base-url", srv.base, "--key-file", path },
        { MODELSLAB_API_KEY = secret("env") })
      assert.equal(0, status)
      assert.equal("", err)
      assert.is_nil(out:find(key, 1, true))
      assert.same({ key = key }, cjson.decode(srv:requests()[1].body))
    end)

    it("warns when the file is readable by group or others", function()
      local token = secret("file")
      write_file(path, token .. "\n", "644")
      local status, out, err = run({ "omni", "reset-cache", "--base-url", srv.base, "--key-file", path,
        "--model", MODEL, "--policy", "daily", "--no-check" }, {})
      assert.equal(0, status)
      assert.matches("warning: the key file " .. path .. " is readable by group or others (mode 644)",
        err, 1, true)
      assert.is_nil(err:find(token, 1, true))
      assert.is_nil(out:find(token, 1, true))
      assert.equal("Bearer " .. token, srv:requests()[1].headers.authorization)
      write_file(path, token .. "\n", "640")
      status, out, err = run({ "omni", "reset-cache", "--base-url", srv.base, "--key-file", path,
        "--model", MODEL, "--policy", "daily", "--no-check" }, {})
      assert.equal(0, status)
      assert.matches("mode 640", err, 1, true)
      assert.is_nil((out .. err):find(token, 1, true))
      write_file(path, token .. "\n", "600")
      status, out, err = run({ "omni", "reset-cache", "--base-url", srv.base, "--key-file", path,
        "--model", MODEL, "--policy", "daily", "--no-check" }, {})
      assert.equal(0, status)
      assert.equal("", err)
      assert.matches("^omni reset%-cache daily: ", out)
    end)

    it("is a usage error when missing or empty", function()
      write_file(path, "\n  \n", "600")
      local status, _, err = run({ "modelslab", "clear-cache", "--base-url", srv.base, "--key-file", path }, {})
      assert.equal(2, status)
      assert.matches("is empty", err, 1, true)
      status, _, err = run({ "modelslab", "clear-cache", "--base-url", srv.base,
        "--key-file", path .. ".missing" }, {})
      assert.equal(2, status)
      assert.matches("cannot read the key file", err, 1, true)
      assert.equal(0, #srv:requests())
    end)

    it("never echoes its argument when the file cannot be read (the key given as a path)", function()
      local key = secret("pasted")
      for _, argv in ipairs{ { "--key-file=" .. key }, { "--key-file", key } } do
        local args = { "omni", "reset-cache", "--base-url", srv.base, "--model", MODEL, "--policy", "daily" }
        for _, a in ipairs(argv) do args[#args + 1] = a end
        local status, out, err = run(args, {}, nil, { key, key:sub(1, 12), key:sub(-12) })
        assert.equal(2, status)
        assert.equal("", out)
        assert.matches("cannot read the key file given to --key-file: No such file or directory", err, 1, true)
      end
      assert.equal(0, #srv:requests())
    end)
  end)

  describe("never shows the credential", function()
    -- The mock never echoes a ModelsLab key, so hand the command a service
    -- that does (cli_omni_spec.lua has the same through the mock's models):
    -- a plain call goes straight to the core's function, replaced here.
    local function echoing(message)
      return function() return { status = "success", message = message } end
    end

    local function with_fake(fake, argv, env)
      local real = core.modelslab.clear_cache
      core.modelslab.clear_cache = fake
      local ok, status, out, err = pcall(run, argv, env)
      core.modelslab.clear_cache = real
      assert.is_true(ok, status)
      return status, out, err
    end

    local key = "Zq7+xY2/pL9=mK4\"" .. helpers.hex(16)
    local json_escaped = cjson.encode(key):sub(2, -2)
    local percent = key:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end)
    for _, case in ipairs{
      { "as given", key }, { "an 8-character piece", key:sub(9, 16) }, { "a longer piece", key:sub(3, 20) },
      { "percent-encoded", percent }, { "JSON-escaped", json_escaped },
      { "piece of the encoded form (13 characters of the key)", percent:sub(4, 24) },
    } do
      it("in success output, when the service echoes it " .. case[1], function()
        local message = "cleared for <" .. case[2] .. ">"
        for _, json in ipairs{ false, true } do
          local argv = { "modelslab", "clear-cache", json and "--json" or nil }
          local status, out = with_fake(echoing(message), argv, { MODELSLAB_API_KEY = key })
          assert.equal(0, status)
          assert.is_nil(out:find(case[2], 1, true))
          assert.is_nil(out:find(key:sub(9, 16), 1, true))
          if json then
            assert.equal("cleared for <***>", cjson.decode(out).results[1].result.message)
          else
            assert.matches("cleared for <***>", out, 1, true)
          end
        end
      end)
    end

    it("but leaves ordinary text alone", function()
      local status, out = with_fake(echoing("Cache cleared for Zq7 at 10:00"), { "modelslab", "clear-cache" },
        { MODELSLAB_API_KEY = key })
      assert.equal(0, status)
      assert.matches("Cache cleared for Zq7 at 10:00", out, 1, true)
    end)
  end)

  describe("with an answer cjson cannot write back", function()
    -- The documented shape, results a list (spec/cli_adversary_spec.lua, 1e400):
    -- a number JSON cannot hold is written as null; before, the results were
    -- dropped for an "internal" error with exit status 0.
    it("still prints one valid JSON document, of the documented shape", function()
      local real = core.modelslab.clear_cache
      core.modelslab.clear_cache = function() return { status = "success", n = 0 / 0, m = -1 / 0 } end
      local ok, status, out = pcall(run, { "modelslab", "clear-cache", "--json" }, { MODELSLAB_API_KEY = secret() })
      core.modelslab.clear_cache = real
      assert.is_true(ok, status)
      assert.equal(0, status)
      local doc = cjson.decode(out)
      assert.is_nil(doc.error)
      assert.equal(1, #doc.results)
      assert.same({ status = "success", n = cjson.null, m = cjson.null }, doc.results[1].result)
    end)

    it("an answer nested deeper than cjson writes is that call's decode error (exit 1)", function()
      local real = core.modelslab.clear_cache
      local deep = { status = "success" }
      local t = deep
      for _ = 1, 1100 do t.x = {}; t = t.x end
      core.modelslab.clear_cache = function() return deep end
      local ok, status, out = pcall(run, { "modelslab", "clear-cache", "--json" }, { MODELSLAB_API_KEY = secret() })
      core.modelslab.clear_cache = real
      assert.is_true(ok, status)
      assert.equal(1, status)
      local doc = cjson.decode(out)
      assert.is_false(doc.ok)
      assert.equal("decode", doc.results[1].error.kind)
    end)
  end)

  describe("as a process", function()
    local root = support.root()
    local tmp, runner, command, exec

    before_each(function()
      tmp = os.tmpname()
      runner = support.process(tmp)
      command, exec = runner.command, runner.exec
    end)
    after_each(function() runner.clean() end)

    it("bin/cachectl is an executable lua5.4 script", function()
      local head = read_file(root .. "/bin/cachectl")
      assert.matches("^#!/usr/bin/env lua5%.4\n", head)
      local ran = os.execute("test -x " .. sh_quote(root .. "/bin/cachectl"))
      assert.is_true(ran == true or ran == 0)   -- 5.1 returns the status number
    end)

    it("clears the cache and exits 0", function()
      local key = secret()
      local status, out, err = exec({ "modelslab", "clear-cache", "--base-url", srv.base },
        { MODELSLAB_API_KEY = key })
      assert.equal(0, status)
      assert.equal("", err)
      assert.matches("^modelslab clear%-cache: Cache cleared %(%d+ ms%)\n$", out)
      assert.is_nil(out:find(key, 1, true))
      assert.same({ key = key }, cjson.decode(srv:requests()[1].body))
    end)

    it("resets Omni policies with --json from $OMNI_BASE_URL", function()
      local token = secret("t")
      local status, out, err = exec({ "omni", "reset-cache", "--model", MODEL, "--policy", "daily",
        "--policy", "weekly", "--json", "--no-check" }, { OMNI_API_KEY = token, OMNI_BASE_URL = srv.base })
      assert.equal(0, status)
      assert.equal("", err)
      local doc = cjson.decode(out)
      assert.is_true(doc.ok)
      assert.equal("weekly", doc.results[2].result.cache_reset.policy_name)
      assert.is_nil(out:find(token, 1, true))
    end)

    it("exits 1 on a service error and 2 on a usage error", function()
      local key = secret("bad")
      local status, out, err = exec({ "modelslab", "clear-cache", "--base-url", srv.base },
        { MODELSLAB_API_KEY = key })
      assert.equal(1, status)
      assert.equal("", out)
      assert.matches("Invalid API key", err, 1, true)
      assert.is_nil(err:find(key, 1, true))
      status, out, err = exec({ "omni", "reset-cache", "--policy", "daily" }, { OMNI_API_KEY = key })
      assert.equal(2, status)
      assert.equal("", out)
      assert.matches("missing option '--model'", err, 1, true)
      status = exec({ "modelslab", "clear-cache", "--key", key }, {})
      assert.equal(2, status)
      status, out = exec({ "--help" }, {})
      assert.equal(0, status)
      assert.matches("^Usage: cachectl", out)
    end)

    it("exits 75 on a connection failure", function()
      local status, _, err = exec({ "modelslab", "clear-cache", "--retries", "0",
        "--base-url", "http://127.0.0.1:" .. free_port() .. "/api" }, { MODELSLAB_API_KEY = secret() })
      assert.equal(75, status)
      assert.matches("connect", err, 1, true)
    end)

    it("never has the credential in its argument list", function()
      local key = secret("k", "hold=1")
      local sh = "exec 2>" .. sh_quote(tmp .. ".err") .. "; echo $$; " .. command({ "modelslab", "clear-cache",
        "--base-url", srv.base }, { MODELSLAB_API_KEY = key })
      local proc = assert(io.popen(sh, "r"))
      local pid = assert(tonumber(proc:read("*l")))
      -- Wait until the request is held by the mock: the command is mid-call.
      local deadline = socket.gettime() + 10
      while #srv:requests() == 0 and socket.gettime() < deadline do socket.sleep(0.02) end
      assert.equal(1, #srv:requests())
      local cmdline = assert(read_file("/proc/" .. pid .. "/cmdline"))
      -- Every process on the machine, not only ours.
      local found = {}
      local ls = assert(io.popen("ls /proc"))
      for name in ls:lines() do
        if name:match("^%d+$") then
          local c = read_file("/proc/" .. name .. "/cmdline")
          if c and c:find(key:match("^%S+"), 1, true) then found[#found + 1] = name end
        end
      end
      ls:close()
      local out = proc:read("*a")
      local ok, _, code = proc:close()
      assert.matches("lua5.4", cmdline, 1, true)
      assert.matches("bin/cachectl", cmdline, 1, true)
      assert.matches("clear-cache", cmdline, 1, true)
      assert.is_nil(cmdline:find(key:match("^%S+"), 1, true))
      assert.same({}, found)
      -- The key did reach the service, through the environment.
      assert.same({ key = key }, cjson.decode(srv:requests()[1].body))
      assert.is_true(ok == true or code == 0)
      assert.matches("Cache cleared", out, 1, true)
    end)

    it("reads --key-file and warns about loose permissions", function()
      local key = secret("file")
      write_file(tmp, key .. "\n", "604")
      local status, out, err = exec({ "modelslab", "clear-cache", "--base-url", srv.base, "--key-file", tmp }, {})
      assert.equal(0, status)
      assert.matches("readable by group or others (mode 604)", err, 1, true)
      assert.is_nil((out .. err):find(key, 1, true))
      assert.same({ key = key }, cjson.decode(srv:requests()[1].body))
    end)
    it("exits 130 on Ctrl-C (a real SIGINT) during a call, printing no credential", function()
      -- The mock holds the request for 20 s: the command is mid-call when
      -- the signal comes, and must not wait for the answer to stop.
      local key = secret("k", "hold=20")
      -- an inner shell prints its pid and execs lua5.4; the outer one prints
      -- the status it ends with (popen's close gives no status under 5.1)
      local inner = "echo $$; " .. command({ "modelslab", "clear-cache", "--base-url", srv.base },
        { MODELSLAB_API_KEY = key }) .. " >" .. sh_quote(tmp .. ".out") .. " 2>" .. sh_quote(tmp .. ".err")
      local p = assert(io.popen("sh -c " .. sh_quote(inner) .. '; echo "status $?"', "r"))
      local pid = assert(tonumber(p:read("*l")))
      local deadline = socket.gettime() + 10
      while #srv:requests() == 0 and socket.gettime() < deadline do socket.sleep(0.02) end
      assert.equal(1, #srv:requests())
      assert.is_true(helpers.succeeds("kill -INT " .. pid))
      local rest = p:read("*a")
      p:close()
      assert.equal("status 130\n", rest)
      local err = read_file(tmp .. ".err")
      assert.matches("interrupted", err, 1, true)
      assert.is_nil(err:find(key:match("^%S+"), 1, true))
      assert.equal("", read_file(tmp .. ".out"))
    end)
  end)
end)
