-- What cachectl.core does when libcurl fails where it never does on a
-- healthy machine, through a test double put in front of libcurl
-- (spec/support/curl_shim.c, LD_PRELOAD) in a separate lua5.4: an option
-- that keeps a credential safe and is refused ends the call with nothing
-- sent; a multi handle that fails ends the call instead of spinning.
local server = require "support.mock_server"
local helpers = require "support.helpers"

local uid, UUID, sh_quote = helpers.uid, helpers.UUID, helpers.sh_quote

describe("libcurl failing", function()
  local srv, shim, dir

  setup(function()
    srv = server.start()
    dir = os.tmpname()
    os.remove(dir)
    assert(helpers.succeeds("mkdir -m 700 " .. sh_quote(dir)))
    shim = dir .. "/curl_shim.so"
    -- (the compiler must not run under the AddressSanitizer runtime of make spec-asan)
    assert(helpers.succeeds("env -u LD_PRELOAD cc -shared -fPIC -o " .. sh_quote(shim)
      .. " spec/support/curl_shim.c -ldl"), "cannot build the libcurl test double")
  end)
  teardown(function()
    if srv then srv:stop() end
    if shim then os.remove(shim) end
    if dir then os.remove(dir) end
  end)
  before_each(function() srv:reset() end)

  -- Runs `code` in lua5.4 with the double in front of libcurl and `env`
  -- (each run bounded by `timeout`, so a spinning loop ends as a failure);
  -- returns its output.
  local function run(env, code)
    if _VERSION ~= "Lua 5.4" then return nil end
    local script = dir .. "/script.lua"
    helpers.write_file(script, string.format("package.path = %q\npackage.cpath = %q\n%s",
      package.path, package.cpath, code))
    local preload = ((os.getenv("LD_PRELOAD") or "") .. " " .. shim):gsub("^ ", "")
    local p = assert(io.popen("env LD_PRELOAD=" .. sh_quote(preload) .. " " .. env .. " timeout 30 lua5.4 "
      .. sh_quote(script) .. " 2>&1; echo \"exit $?\""))
    local out = p:read("*a")
    p:close()
    os.remove(script)
    return out
  end

  local CALL = [[
    local core = require "cachectl.core"
    local ok, res, err = pcall(core.omni.reset_cache, { token = %q, base_url = %q, model_id = %q,
      policy = "daily", retries = 2 %s })
    if not ok then print("raised: " .. tostring(res))
    elseif res then print("result")
    else print("error: " .. err.kind .. " " .. err.attempts .. " " .. err.message) end
  ]]

  for _, case in ipairs{
    { option = "FOLLOWLOCATION", kind = "connect" },
    { option = "PROTOCOLS_STR", kind = "connect" },
    { option = "NOPROXY", kind = "connect" },
    { option = "CAINFO", kind = "tls", extra = ", ca_file = '/etc/ssl/certs/ca-certificates.crt'" },
  } do
    it("refuses the call, nothing sent, when CURLOPT_" .. case.option .. " is refused", function()
      local out = run("CURL_SHIM_REFUSE=" .. case.option,
        string.format(CALL, uid("tok"), srv.base, UUID, case.extra or ""))
      if not out then return pending("runs a lua5.4 with this process's module paths: Lua 5.4 only") end
      assert.matches("error: " .. case.kind .. " 0 libcurl refused CURLOPT_" .. case.option, out, 1, true)
      assert.matches("exit 0", out, 1, true)
      assert.equal(0, #srv:requests())
    end)
  end

  it("sends as usual when nothing is refused (the double is transparent)", function()
    local out = run("CURL_SHIM_REFUSE=none", string.format(CALL, uid("tok"), srv.base, UUID, ""))
    if not out then return pending("runs a lua5.4 with this process's module paths: Lua 5.4 only") end
    assert.matches("result", out, 1, true)
    assert.equal(1, #srv:requests())
  end)

  it("raises when the multi handle fails, instead of spinning", function()
    local out = run("CURL_SHIM_BROKEN_MULTI=1", string.format(CALL, uid("tok"), srv.base, UUID, ""))
    if not out then return pending("runs a lua5.4 with this process's module paths: Lua 5.4 only") end
    assert.matches("raised: cachectl: libcurl's multi handle failed", out, 1, true)
    assert.matches("exit 0", out, 1, true)
  end)
end)
