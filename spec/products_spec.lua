-- Every ModelsLab Enterprise action for any product slug, the product-less
-- server (product = false) and deploy_type, as they arrive at the mock; and
-- bad slugs refused with nothing sent.
local server = require "support.mock_server"
local helpers = require "support.helpers"
local cjson = require "cjson"
local core = require "cachectl.core"

local uid = helpers.uid

-- call name -> the action in the path
local ACTIONS = {
  clear_queue = "clear_queue", enterprise_clear_cache = "clear_cache", restart_server = "restart_server",
  update_server = "update_server", system_details = "system_details",
}

describe("ModelsLab Enterprise products", function()
  local srv = server.use()

  local function only_request() return server.only_request(srv) end

  -- The mock serves every slug and the product-less server (docs/mock.md, "ModelsLab").
  local function assert_answer(call, res, err)
    assert.is_nil(err)
    if call == "system_details" then
      assert.are_not.equal("error", res.status)
    else
      assert.equal("success", res.status)
    end
  end

  for call, action in pairs(ACTIONS) do
    for _, product in ipairs{ "3d", "face_gen", "flux_kontext_dev", "image_to_video_ultra", "super-resolution",
                              string.rep("a", 64) } do
      it(call .. " POSTs {key} to /v1/enterprise/" .. product .. "/" .. action, function()
        local key = uid("key")
        local res, err = core.modelslab[call]{ key = key, base_url = srv.base, product = product, retries = 0 }
        local req = only_request()
        assert.equal("POST", req.method)
        assert.equal("/api/v1/enterprise/" .. product .. "/" .. action, req.path)
        assert.same({ key = key }, cjson.decode(req.body))
        assert_answer(call, res, err)
      end)
    end

    it(call .. " with product = false POSTs to the product-less /v1/enterprise/" .. action, function()
      local key = uid("key")
      local res, err = core.modelslab[call]{ key = key, base_url = srv.base, product = false, retries = 0 }
      local req = only_request()
      assert.equal("POST", req.method)
      assert.equal("/api/v1/enterprise/" .. action, req.path)
      assert.same({ key = key }, cjson.decode(req.body))
      assert_answer(call, res, err)
    end)

    it(call .. " without product uses 3d", function()
      local key = uid("key")
      local res, err = core.modelslab[call]{ key = key, base_url = srv.base, retries = 0 }
      assert.equal("/api/v1/enterprise/3d/" .. action, only_request().path)
      assert_answer(call, res, err)
    end)

    it(call .. " sends deploy_type in the body beside the key", function()
      local key = uid("key")
      local res, err = core.modelslab[call]{ key = key, base_url = srv.base, product = "flux",
                                             deploy_type = "flux_2_dev", retries = 0 }
      local req = only_request()
      assert.equal("/api/v1/enterprise/flux/" .. action, req.path)
      assert.same({ key = key, deploy_type = "flux_2_dev" }, cjson.decode(req.body))
      assert_answer(call, res, err)
    end)

    it(call .. " sends deploy_type to the product-less server too", function()
      local key = uid("key")
      core.modelslab[call]{ key = key, base_url = srv.base, product = false, deploy_type = "sdxl-turbo",
                            retries = 0 }
      local req = only_request()
      assert.equal("/api/v1/enterprise/" .. action, req.path)
      assert.same({ key = key, deploy_type = "sdxl-turbo" }, cjson.decode(req.body))
    end)
  end

  it("system_details answers what the mock says of the product and deploy_type", function()
    local res, err = core.modelslab.system_details{ key = uid("key"), base_url = srv.base, product = "flux",
                                                    deploy_type = "flux_2_dev" }
    assert.is_nil(err)
    assert.equal("flux", res.details.product)
    assert.equal("flux_2_dev", res.details.deploy_type)
  end)

  describe("refuses as invalid, naming the field and sending nothing", function()
    local bad = { "Face_Gen", "FLUX", "face/gen", "../3d", "3d?x=1", "flux kontext", "", string.rep("a", 65),
                  "prodüct", "a.b", "3d\n" }
    for call in pairs(ACTIONS) do
      for _, field in ipairs{ "product", "deploy_type" } do
        for _, value in ipairs(bad) do
          it(string.format("%s with %s = %q", call, field, value), function()
            local res, err = core.modelslab[call]{ key = uid("key"), base_url = srv.base, [field] = value }
            assert.is_nil(res)
            assert.equal("invalid", err.kind)
            assert.equal(field, err.field)
            assert.equal(0, err.attempts)
            assert.equal(0, #srv:requests())
          end)
        end
      end
    end

    it("a product of true raises, naming product (only a slug or false)", function()
      local ok, msg = pcall(core.modelslab.clear_queue, { key = uid("key"), base_url = srv.base, product = true })
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("product", 1, true))
      assert.equal(0, #srv:requests())
    end)

    it("deploy_type = false raises: it is text only", function()
      local ok, msg = pcall(core.modelslab.clear_queue, { key = uid("key"), base_url = srv.base,
                                                          deploy_type = false })
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("deploy_type", 1, true))
      assert.equal(0, #srv:requests())
    end)
  end)

  it("clear_cache (the user cache) takes no product", function()
    local ok, msg = pcall(core.modelslab.clear_cache, { key = uid("key"), base_url = srv.base, product = "3d" })
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("product", 1, true))
  end)
end)
