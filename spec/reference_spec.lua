-- The LDoc reference (`make docs`): it builds without a single warning,
-- and it documents every public function: each function and call of
-- `cachectl.core` (the calls made from its rows), each method of the
-- clients (those made from the rows and those written by hand), the
-- module's own functions, and the command's `main`.
local helpers = require "support.helpers"
local core = require "cachectl.core"
local cachectl = require "cachectl"

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  local ok, _, code = p:close()
  return out, ok == true or code == 0
end

-- The text of a generated page, tags dropped.
local function page(name)
  local html = assert(helpers.read_file("build/docs/modules/" .. name .. ".html"), name .. " was not generated")
  return (html:gsub("<[^>]+>", " "):gsub("&quot;", '"'):gsub("&amp;", "&"))
end

describe("the LDoc reference #docs", function()
  local log, built
  -- LD_PRELOAD goes: under `make spec-asan` LeakSanitizer would report on ldoc's interpreter
  setup(function() log, built = capture("env -u LD_PRELOAD make -s docs 2>&1") end)

  it("builds, and make docs prints no warning", function()
    assert.is_true(built, log)
    for line in log:gmatch("[^\n]+") do
      assert.is_truthy(line:find("^reading configuration from ") or line:find("^output written to "),
        "LDoc said: " .. line)
    end
  end)

  it("documents every function and call of cachectl.core", function()
    local text = page("cachectl.core")
    local missing = {}
    for name, v in pairs(core) do
      if not text:find(name, 1, true) then missing[#missing + 1] = name .. " (" .. type(v) .. ")" end
    end
    for sname, svc in pairs(core.services) do
      for cname in pairs(svc.calls) do
        if not text:find(sname .. "." .. cname .. "(", 1, true) then missing[#missing + 1] = sname .. "." .. cname end
      end
    end
    for _, m in ipairs{ "session:call", "session:bind", "session:batch", "session:close" } do
      if not text:find(m .. "(", 1, true) then missing[#missing + 1] = m end
    end
    table.sort(missing)
    assert.same({}, missing)
  end)

  it("documents every method of both clients and the module's functions", function()
    local text = page("cachectl")
    local missing = {}
    local objects = { modelslab = "ml", omni = "omni" }
    for sname, object in pairs(objects) do
      local client = cachectl[sname].new{ [core.services[sname].secret] = "t", base_url = "http://127.0.0.1:9/api" }
      local class = getmetatable(client).__index
      for name, v in pairs(class) do
        if type(v) == "function" and not name:find("^__") then
          local documented = text:find(object .. ":" .. name .. "(", 1, true)
            or text:find("client:" .. name .. "(", 1, true)
          if not documented then missing[#missing + 1] = object .. ":" .. name end
        end
      end
      client:close()
    end
    if not text:find("new(", 1, true) then missing[#missing + 1] = "new" end
    table.sort(missing)
    assert.same({}, missing)
    assert.matches("main(argv", page("cachectl.cli"), 1, true)
  end)

  it("would notice a method missing (the check is not empty)", function()
    local text = page("cachectl")
    assert.is_nil(text:find("omni:no_such_method(", 1, true))
    assert.is_truthy(text:find("omni:find_model(", 1, true))
    assert.is_truthy(text:find("ml:clear_cache(", 1, true))
  end)
end)
