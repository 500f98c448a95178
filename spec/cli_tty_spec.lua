-- The cachectl command on a terminal, as real processes: restart-server and
-- update-server ask for confirmation when stdin is a pseudo-terminal
-- (`script -qec` gives the command one), send nothing when the answer is
-- not yes, skip the question with --yes, and proceed without a terminal
-- (cron). Also: a Ctrl-C with --json still prints one document.
local server = require "support.mock_server"
local support = require "support.cli"
local helpers = require "support.helpers"
local socket = require "socket"
local cjson = require "cjson"

local secret, sh_quote, read_file = support.secret, helpers.sh_quote, helpers.read_file

describe("cachectl on a terminal #signals", function()
  local srv = server.use()
  local tmp, runner

  before_each(function()
    tmp = os.tmpname()
    runner = support.process(tmp)
  end)
  after_each(function() runner.clean() end)

  -- Runs the command with `answer` typed on its terminal (script gives it
  -- a pseudo-terminal as stdin, stdout and stderr); returns the exit status
  -- and what the terminal showed.
  local function on_terminal(args, answer)
    -- script and the command run without LD_PRELOAD (`make spec-asan`): its
    -- LeakSanitizer would report on script itself
    local cmd = "printf " .. sh_quote(answer) .. " | env -u LD_PRELOAD script -qec " .. sh_quote(runner.command(args,
      { MODELSLAB_API_KEY = secret() })) .. " /dev/null >" .. sh_quote(tmp .. ".out") .. " 2>&1; echo $?"
    local p = assert(io.popen(cmd))
    local status = tonumber(p:read("*a"):match("(%d+)%s*$"))
    p:close()
    return status, read_file(tmp .. ".out") or ""
  end

  local function args(action, ...)
    local a = { "modelslab", action, "--base-url", srv.base }
    for _, x in ipairs{ ... } do a[#a + 1] = x end
    return a
  end

  for _, action in ipairs{ "restart-server", "update-server" } do
    it(action .. " asks, and sends nothing unless the answer is yes", function()
      local status, screen = on_terminal(args(action), "n\n")
      assert.equal(1, status, screen)
      assert.matches("cachectl: modelslab " .. action .. ": POST " .. srv.base .. "/v1/enterprise/3d/"
        .. action:gsub("%-", "_") .. "; go ahead? [y/N]", screen, 1, true)
      assert.matches("not confirmed: nothing was sent", screen, 1, true)
      status = on_terminal(args(action), "\n")
      assert.equal(1, status)
      assert.same({}, srv:requests())
      status, screen = on_terminal(args(action), "yes\n")
      assert.equal(0, status, screen)
      assert.equal(1, #srv:requests())
    end)

    it(action .. " --yes does not ask", function()
      local status, screen = on_terminal(args(action, "--yes"), "")
      assert.equal(0, status, screen)
      assert.is_nil(screen:find("go ahead", 1, true))
      assert.equal(1, #srv:requests())
    end)

    it(action .. " proceeds without a terminal (cron)", function()
      local code, out, err = runner.exec(args(action), { MODELSLAB_API_KEY = secret() })
      assert.equal(0, code, err)
      assert.matches("initiated", out)
      assert.is_nil(err:find("go ahead", 1, true))
      assert.equal(1, #srv:requests())
    end)
  end

  it("a refusal with --json is one document on stdout", function()
    local status, screen = on_terminal(args("restart-server", "--json"), "n\n")
    assert.equal(1, status)
    local doc = cjson.decode(screen:match("(%b{})%s*$"))
    assert.equal("aborted", doc.error.kind)
    assert.same({}, srv:requests())
  end)

  it("asks nothing for a call that can be repeated", function()
    local status, screen = on_terminal(args("clear-queue"), "")
    assert.equal(0, status, screen)
    assert.is_nil(screen:find("go ahead", 1, true))
  end)

  it("Ctrl-C with --json still prints one document, and exits 130", function()
    local key = secret("k", "hold=20")
    local inner = "echo $$; " .. runner.command({ "modelslab", "clear-cache", "--base-url", srv.base, "--json" },
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
    local doc = cjson.decode(read_file(tmp .. ".out"))
    assert.equal("interrupted", doc.error.kind)
    assert.is_false(doc.ok)
  end)
end)
