-- Requests checked against the vendors' OpenAPI documents (shipped in
-- mock/lua/cachectl/mock/openapi/): what a document would reject gets the
-- vendor's 4xx, in the vendor's error shape, naming the field.
local cjson = require "cjson"
local http = require "socket.http"
local ltn12 = require "ltn12"
local openapi = require "cachectl.mock.openapi"
local server = require "support.mock_server"
local helpers = require "support.helpers"

local SALES = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

local function call(srv, method, path, body, token)
  local out, headers = {}, {}
  if token then headers.Authorization = "Bearer " .. token end
  if body then
    headers["Content-Type"] = "application/json"
    headers["Content-Length"] = #body
  end
  local _, status = http.request{ url = srv.url .. path, method = method, headers = headers,
                                  source = body and ltn12.source.string(body), sink = ltn12.sink.table(out) }
  return status, cjson.decode(table.concat(out))
end

describe("mock validation against the vendors' OpenAPI documents", function()
  local srv = server.use()

  describe("ModelsLab Enterprise", function()
    it("answers a body without key, or with a null key or one that is not a string, with 400 naming the field",
      function()
      for _, path in ipairs({ "/api/v1/enterprise/face_gen/clear_queue",       -- face-gen.json
                              "/api/v1/enterprise/clear_cache",                -- text-to-image.json
                              "/api/v1/enterprise/flux/update_server",         -- not in flux-2-dev.json: 3d's
                              "/api/v1/enterprise/qwen/system_details" }) do   -- no document: 3d's
        local status, body = call(srv, "POST", path, '{"deploy_type": "x"}')
        assert.equal(400, status, path)
        assert.same({ status = "error", message = "The key field is required.", error_code = "key_required" }, body)
        status, body = call(srv, "POST", path, '{"key": null}')
        assert.same({ 400, "key_required" }, { status, body.error_code })
        status, body = call(srv, "POST", path, '{"key": 42}')
        assert.equal(400, status, path)
        assert.same({ status = "error", message = "The key field must be a string.", error_code = "invalid_key" },
          body)
        assert.equal(200, (call(srv, "POST", path, '{"key": "k", "deploy_type": "flux_2_dev", "extra": [1]}')))
      end
    end)

    it("records the rejected requests like any other", function()
      call(srv, "POST", "/api/v1/enterprise/3d/clear_queue", '{"key": false}')
      local reqs = srv:requests{ path = "/3d/clear_queue" }
      assert.equal(1, #reqs)
      assert.equal('{"key": false}', reqs[1].body)
    end)
  end)

  describe("Omni", function()
    it("answers a model list query the document refuses with 422 naming the parameter", function()
      local cases = {
        { "sortDirection=up", "sortDirection must be one of asc, desc" },
        { "sortField=colour", "sortField must be one of name, modelKind, " },
        { "connectionId=nope", "connectionId must be a UUID" },
        { "baseModelId=" .. SALES .. "x", "baseModelId must be a UUID" },
        { "pageSize=0", "pageSize must be a positive integer" },
        { "pageSize=two", "pageSize must be a positive integer" },
        { "includeDeleted=maybe", "includeDeleted must be one of 0, 1, true, false" },
        { "modelKind=TABLE", "modelKind must be one of SCHEMA, SHARED, SHARED_EXTENSION, BRANCH, WORKBOOK, QUERY" },
      }
      for _, case in ipairs(cases) do
        local status, body = call(srv, "GET", "/api/v1/models?" .. case[1], nil, "tok")
        assert.equal(422, status, case[1])
        assert.matches("^" .. helpers.literal(case[2]), body.error)
      end
      local status, body = call(srv, "GET", "/api/v1/models?sortDirection=up", nil, "tok shape=error")
      assert.same({ 422, { error = "422", message = "sortDirection must be one of asc, desc" } }, { status, body })
      assert.equal(200, (call(srv, "GET", "/api/v1/models?sortField=name&sortDirection=desc&connectionId="
        .. SALES .. "&include=activeBranches", nil, "tok")))
    end)

    it("answers a YAML query or model id the document refuses, 422 and 400", function()
      local status, body = call(srv, "GET", "/api/v1/models/" .. SALES .. "/yaml?includeChecksums=maybe", nil, "tok")
      assert.same({ 422, { error = "includeChecksums must be a boolean or null" } }, { status, body })
      assert.equal(200, (call(srv, "GET", "/api/v1/models/" .. SALES .. "/yaml?includeChecksums=true", nil, "tok")))
      status, body = call(srv, "GET", "/api/v1/models/sales/yaml", nil, "tok")
      assert.same({ 400, { detail = "modelId must be a UUID", status = 400 } }, { status, body })
    end)

    it("answers a reset body the document refuses with 400 in the reset page's shape", function()
      local path = "/api/v1/models/" .. SALES .. "/cache_reset/daily"
      local status, body = call(srv, "POST", path, '{"resetAt": 1767225600}', "tok")
      assert.same({ 400, { error = "400", message = "resetAt must be a string" } }, { status, body })
      status, body = call(srv, "POST", "/api/v1/models/not-a-uuid/cache_reset/daily", "{}", "tok")
      assert.same({ 400, { error = "400", message = "modelId must be a UUID" } }, { status, body })
      assert.equal(200, (call(srv, "POST", path, '{"resetAt": null, "note": "extra fields are allowed"}', "tok")))
      assert.equal(200, (call(srv, "POST", path, nil, "tok")))   -- the body is optional
      assert.equal(3, srv:count{ path = "/" .. SALES .. "/cache_reset/daily" })
    end)
  end)

  describe("the documents", function()
    it("are the vendors' own, byte for byte (when ../shared/openapi is there to compare)", function()
      local shared = "../shared/openapi/"
      if not helpers.read_file(shared .. "omni.json") then
        pending("no ../shared/openapi beside this checkout")
        return
      end
      for _, file in ipairs(openapi.DOCUMENTS) do
        local ours = helpers.read_file(openapi.folder() .. file)
        assert.is_string(ours, file)
        assert.is_true(ours == helpers.read_file(shared .. file), file .. " differs from " .. shared .. file)
      end
    end)

    it("give each request the operation of its product's document", function()
      local cases = {
        { "/api/v1/enterprise/3d/clear_queue", "modelslab/3d-api.json" },
        { "/api/v1/enterprise/face_gen/clear_queue", "modelslab/face-gen.json" },
        { "/api/v1/enterprise/flux/clear_queue", "modelslab/flux-2-dev.json" },
        { "/api/v1/enterprise/flux_klein/update_server", "modelslab/flux-klein.json" },
        { "/api/v1/enterprise/image_editing/clear_queue", "modelslab/image-editing.json" },
        { "/v1/enterprise/image_to_video_ultra/system_details", "modelslab/image-to-video-ultra.json" },
        { "/any/prefix/v1/enterprise/clear_queue", "modelslab/text-to-image.json" },
      }
      for _, case in ipairs(cases) do
        local found = openapi.find("POST", case[1])
        assert.equal(case[2], found and found.op.file, case[1])
      end
      assert.is_nil(openapi.find("POST", "/api/v1/enterprise/flux/update_server"))
      assert.is_nil(openapi.find("GET", "/api/v1/enterprise/3d/clear_queue"))
      local found = openapi.find("POST", "/api/v1/models/" .. SALES .. "/cache_reset/weekly%20report")
      assert.same({ "omni.json", SALES, "weekly%20report" },
        { found.op.file, found.path.modelId, found.path.policyName })
    end)

    it("name nested fields, items and bounds (flux-klein's img2img)", function()
      local found = assert(openapi.find("POST", "/api/v1/enterprise/flux_klein/img2img"))
      local function bad(body)
        local v = openapi.check(found, {}, body)
        return v and (v.field .. " " .. v.rule)
      end
      assert.is_nil(bad({ key = "k", prompt = "p", init_image = { "a", "b" }, width = 512 }))
      assert.equal("prompt is required", bad({ key = "k", init_image = {} }))
      assert.equal("init_image must hold at most 4 items", bad({ key = "k", prompt = "p",
                                                                init_image = { "a", "b", "c", "d", "e" } }))
      assert.equal("init_image[2] must be a string", bad({ key = "k", prompt = "p", init_image = { "a", 5 } }))
      assert.equal("width must be a number", bad({ key = "k", prompt = "p", init_image = {}, width = "wide" }))
      assert.equal("init_image must be an array", bad({ key = "k", prompt = "p", init_image = { a = 1 } }))
    end)

    it("are needed: a mock without them does not start, and says why", function()
      local dir = os.tmpname()
      os.remove(dir)
      -- the shell, cp and the child Lua without a sanitizer's runtime (its leak report changes exit codes)
      assert(helpers.succeeds("env -u LD_PRELOAD sh -c 'mkdir -p " .. dir .. "/cachectl/mock && cp "
        .. "mock/lua/cachectl/mock/*.lua " .. dir .. "/cachectl/mock/'"))
      local lpath = dir .. "/?.lua;" .. dir .. "/?/init.lua;;"
      local p = io.popen("env -u LD_PRELOAD LUA_PATH_5_4='" .. lpath .. "' "
        .. "lua5.4 -e 'require(\"cachectl.mock\").main({})' 2>&1; "
        .. "echo \"exit $?\"")
      local out = p:read("*a")
      p:close()
      os.execute("rm -rf " .. dir)
      assert.matches("the vendors' OpenAPI documents are missing", out, 1, true)
      assert.matches("exit 1", out, 1, true)
    end)
  end)
end)
