rockspec_format = "3.0"
package = "cachectl-mock"
version = "0.1.0-1"
source = {
  url = "git+https://github.com/cachectl/cachectl.git",
  tag = "v0.1.0",
}
description = {
  summary = "A local HTTP server that plays the ModelsLab and Omni APIs, for tests of code that uses cachectl",
  detailed = [[
cachectl-mock (the command) and cachectl.mock (the Lua module) answer the
ModelsLab and Omni calls the way the vendors document them, checked against
the vendors' own OpenAPI documents (shipped with it), record every request,
and take fault rules per route, request filters and Omni models (from a file
too) through a control API. cachectl.mock.busted starts one per spec file.

Optional: lyaml (Debian lua-yaml) for YAML models files, LuaSec for HTTPS,
busted for cachectl.mock.busted.
]],
  homepage = "https://github.com/cachectl/cachectl",
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "cachectl = 0.1.0",
  "lua-cjson >= 2.1",
  "luasocket >= 3.0",
  "argparse >= 0.6",
  -- optional, not installed by default: "lyaml >= 6.2" (--models FILE.yaml), "luasec" (HTTPS),
  -- "busted" (cachectl.mock.busted)
}
-- Plain Lua and data files, installed as listed. They live in mock/lua/, not
-- lua/: the cachectl rock is "builtin", and luarocks' builtin build copies
-- everything under lua/ into the rock it builds, so a mock there would be
-- installed by the cachectl rock too.
build = {
  type = "none",
  install = {
    lua = {
      ["cachectl.mock.init"] = "mock/lua/cachectl/mock/init.lua",
      ["cachectl.mock.busted"] = "mock/lua/cachectl/mock/busted.lua",
      ["cachectl.mock.cli"] = "mock/lua/cachectl/mock/cli.lua",
      ["cachectl.mock.conn"] = "mock/lua/cachectl/mock/conn.lua",
      ["cachectl.mock.control"] = "mock/lua/cachectl/mock/control.lua",
      ["cachectl.mock.faults"] = "mock/lua/cachectl/mock/faults.lua",
      ["cachectl.mock.http"] = "mock/lua/cachectl/mock/http.lua",
      ["cachectl.mock.json"] = "mock/lua/cachectl/mock/json.lua",
      ["cachectl.mock.launcher"] = "mock/lua/cachectl/mock/launcher.lua",
      ["cachectl.mock.log"] = "mock/lua/cachectl/mock/log.lua",
      ["cachectl.mock.loop"] = "mock/lua/cachectl/mock/loop.lua",
      ["cachectl.mock.match"] = "mock/lua/cachectl/mock/match.lua",
      ["cachectl.mock.models"] = "mock/lua/cachectl/mock/models.lua",
      ["cachectl.mock.modelsfile"] = "mock/lua/cachectl/mock/modelsfile.lua",
      ["cachectl.mock.modelslab"] = "mock/lua/cachectl/mock/modelslab.lua",
      ["cachectl.mock.omni"] = "mock/lua/cachectl/mock/omni.lua",
      ["cachectl.mock.openapi"] = "mock/lua/cachectl/mock/openapi.lua",
      ["cachectl.mock.ratelimit"] = "mock/lua/cachectl/mock/ratelimit.lua",
      ["cachectl.mock.rules"] = "mock/lua/cachectl/mock/rules.lua",
      ["cachectl.mock.server"] = "mock/lua/cachectl/mock/server.lua",
      ["cachectl.mock.util"] = "mock/lua/cachectl/mock/util.lua",
      -- the vendors' OpenAPI documents, beside cachectl/mock/openapi.lua
      ["cachectl.mock.openapi.omni"] = "mock/lua/cachectl/mock/openapi/omni.json",
      ["cachectl.mock.openapi.modelslab.3d-api"] = "mock/lua/cachectl/mock/openapi/modelslab/3d-api.json",
      ["cachectl.mock.openapi.modelslab.face-gen"] = "mock/lua/cachectl/mock/openapi/modelslab/face-gen.json",
      ["cachectl.mock.openapi.modelslab.flux-2-dev"] = "mock/lua/cachectl/mock/openapi/modelslab/flux-2-dev.json",
      ["cachectl.mock.openapi.modelslab.flux-klein"] = "mock/lua/cachectl/mock/openapi/modelslab/flux-klein.json",
      ["cachectl.mock.openapi.modelslab.image-editing"] = "mock/lua/cachectl/mock/openapi/modelslab/image-editing.json",
      ["cachectl.mock.openapi.modelslab.image-to-video-ultra"] =
        "mock/lua/cachectl/mock/openapi/modelslab/image-to-video-ultra.json",
      ["cachectl.mock.openapi.modelslab.text-to-image"] = "mock/lua/cachectl/mock/openapi/modelslab/text-to-image.json",
    },
    bin = {
      ["cachectl-mock"] = "bin/cachectl-mock",
    },
  },
}
