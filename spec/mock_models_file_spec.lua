-- `cachectl-mock --models FILE` (and `mock.start{ models = FILE }`): Omni
-- models from a YAML or JSON file shaped as the body of POST /_mock/models,
-- served from the start and restored by every reset; a bad file stops the
-- command with status 2 and a message naming the file and what is wrong.
local cjson = require "cjson"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cachectl = require "cachectl"
local mock = require "cachectl.mock"
local helpers = require "support.helpers"

local ORDERS = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
local SECRET = "1b4e28ba-2fa1-11d2-883f-0016d3cca428"
local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

local YAML = [[
# the models of my tests
models:
  - id: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
    name: Orders
    modelKind: SHARED
    version: 3
    yaml: |
      cache_policies:
        daily:
          max_cache_age: 24 hours
        hourly:
          max_cache_age: 1 hour
      default_cache_policy: daily
  - id: 1B4E28BA-2FA1-11D2-883F-0016D3CCA428
    name: Secret
    forbidden: true
    baseModelId: ~
replace: true
]]

local JSON = cjson.encode({ models = { { id = ORDERS, name = "Orders", modelKind = "WORKBOOK",
                                         yaml = "cache_policies:\n  nightly:\n    max_cache_age: 12 hours\n" } } })

local dir
local function file(name, text)
  local path = dir .. "/" .. name
  helpers.write_file(path, text)
  return path
end

local function get(srv, path)
  local out = {}
  local _, status = http.request{ url = srv.url .. path, headers = { Authorization = "Bearer tok" },
                                  sink = ltn12.sink.table(out) }
  return status, cjson.decode(table.concat(out))
end

local function names(srv)
  local _, page = get(srv, "/api/v1/models?pageSize=100")
  local out = {}
  for i, r in ipairs(page.records) do out[i] = r.name end
  return out
end

-- Runs bin/cachectl-mock with arguments that make it stop at once; returns status, stdout, stderr.
local function run(args)
  local out, err = os.tmpname(), os.tmpname()
  -- from the checkout, as a user runs it: bin/cachectl-mock finds mock/lua/ beside it
  local ok, how, status = os.execute("LUA_PATH=';;' LUA_PATH_5_4=';;' "
    .. "lua5.4 bin/cachectl-mock " .. args .. " >" .. out .. " 2>" .. err)
  if type(ok) == "number" then status = ok / 256 elseif ok == true then status = 0 end
  if how and how ~= "exit" then status = -1 end
  local o, e = helpers.read_file(out), helpers.read_file(err)
  os.remove(out)
  os.remove(err)
  return status, o, e
end

describe("cachectl-mock --models", function()
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(helpers.succeeds("mkdir " .. helpers.sh_quote(dir)))
  end)
  teardown(function() os.execute("rm -rf " .. helpers.sh_quote(dir)) end)

  it("serves a YAML file's models in place of the default set, and restores them on reset", function()
    local m = mock.start{ models = file("models.yaml", YAML) }
    local ok, err = pcall(function()
      assert.same({ "Orders", "Secret" }, names(m))
      local status, yaml = get(m, "/api/v1/models/" .. ORDERS .. "/yaml")
      assert.equal(200, status)
      assert.equal(3, yaml.version)
      assert.equal(403, (get(m, "/api/v1/models/" .. SECRET .. "/yaml")))
      assert.equal(404, (get(m, "/api/v1/models/" .. SALES .. "/yaml")))

      local omni = cachectl.omni.new{ token = "tok", base_url = m.url .. "/api" }
      local policies = assert(omni:cache_policies(ORDERS))
      omni:close()
      assert.same({ "daily", "hourly", default = "daily" },
        { policies[1].name, policies[2].name, default = policies.default })

      m:define_models({ { id = SALES, name = "Sales again" } })
      assert.same({ "Orders", "Secret", "Sales again" }, names(m))
      m:reset()
      assert.same({ "Orders", "Secret" }, names(m))
    end)
    m:stop()
    assert(ok, err)
  end)

  it("adds a JSON file's models to the default set, replacing one of the same id", function()
    local models = cjson.decode(JSON).models
    models[2] = { id = SALES, name = "Sales (mine)" }
    local m = mock.start{ models = file("models.json", cjson.encode({ models = models })) }
    local ok, err = pcall(function()
      assert.same({ "Sales (mine)", "Marketing", "Finance", "Finance", "Empty", "Forbidden", "Orders" }, names(m))
      local _, page = get(m, "/api/v1/models?modelKind=WORKBOOK")
      assert.equal(ORDERS, page.records[1].id)
      assert(m:reset())
      assert.equal(7, #names(m))
    end)
    m:stop()
    assert(ok, err)
  end)

  it("refuses a bad file: the command exits 2, mock.start raises, both naming the file and the problem", function()
    local cases = {
      { "missing.yaml", nil, "missing.yaml: cannot be read: No such file or directory" },
      { "models.txt", JSON, "models.txt: the name must end in .json, .yaml or .yml" },
      { "empty.json", "", "empty.json: the file is empty" },
      { "broken.json", '{"models": [', "broken.json: not valid JSON: " },
      { "broken.yaml", "models: [a, b", "broken.yaml: not valid YAML: " },
      { "list.yaml", "- id: x\n", 'list.yaml: must hold an object {"models": [...], "replace": false}' },
      { "scalar.json", "42", "scalar.json: must hold an object" },
      { "extra.yaml", "models: []\ncolour: red\n", "extra.yaml: unknown key 'colour' (known: models, replace)" },
      { "nomodels.json", '{"replace": true}', "nomodels.json: models is missing" },
      { "replace.json", '{"models": [], "replace": "yes"}', "replace.json: replace must be true or false" },
      { "field.yaml", "models:\n  - id: " .. ORDERS .. "\n    name: A\n  - id: nope\n    name: B\n",
        "field.yaml: models[2].id must be a UUID" },
      { "number.yaml", "models:\n  - id: " .. ORDERS .. "\n    name: 2024\n",
        "number.yaml: models[1].name must be a string" },
      { "laughs.yaml", "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
          .. "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
          .. "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
        "laughs.yaml: more than 100000 mappings and sequences" },
    }
    for _, case in ipairs(cases) do
      local path = case[2] and file(case[1], case[2]) or dir .. "/" .. case[1]
      local status, out, err = run("--models " .. helpers.sh_quote(path))
      assert.equal(2, status, case[1])
      assert.equal("", out, case[1])
      assert.matches("--models " .. path .. ": " .. case[3]:match("^[^:]+: (.*)$"), err, 1, true)
      assert.error_matches(function() mock.start{ models = path } end, case[3], 1, true)
    end
    assert.error_matches(function() mock.start{ models = 5 } end, "models must be the path of a", 1, true)
  end)

  it("reads a YAML file under Lua 5.1, 5.3 and LuaJIT too", function()
    local path = file("other.yaml", YAML)
    for _, lua in ipairs({ "lua5.1", "lua5.3", "luajit" }) do
      if helpers.succeeds("command -v " .. lua .. " >/dev/null 2>&1") then
        local m = mock.start{ models = path, lua = lua }
        local ok, listed = pcall(names, m)
        m:stop()
        assert.same({ "Orders", "Secret" }, ok and listed or { tostring(listed) }, lua)
      end
    end
  end)

  it("lists --models in the command's help", function()
    local status, out = run("--help")
    assert.equal(0, status)
    assert.matches("--models <file>", out, 1, true)
  end)
end)
