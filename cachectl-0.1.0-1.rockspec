rockspec_format = "3.0"
package = "cachectl"
version = "0.1.0-1"
source = {
  url = "git+https://github.com/cachectl/cachectl.git",
  tag = "v0.1.0",
}
description = {
  summary = "Clear and reset remote caches and queues (ModelsLab, Omni) from Lua, natively with libcurl",
  detailed = [[
cachectl calls the ModelsLab "Clear User Cache" and Enterprise "Clear Queue"
endpoints and the Omni "Reset cache" endpoint from a C module built on
libcurl, with retries, timeouts, kept-alive connections, concurrent batches,
a command-line tool and a mock server for tests.

Optional: lyaml (Debian lua-yaml), for omni:cache_policies and check_policy
only; redis-lua (Debian lua-redis; lua-resty-redis inside nginx), for
rate_limit.redis and coalescing across processes only; LuaSocket, for the
milliseconds in the command's output only. Without them every other call
works. The rock installs the man page of the command, cachectl(1), and the
documentation (docs/, `luarocks doc cachectl`).
]],
  homepage = "https://github.com/cachectl/cachectl",
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson >= 2.1",
  "argparse >= 0.6",
  -- optional, not installed by default: "lyaml >= 6.2" (omni:cache_policies, check_policy),
  -- "redis-lua >= 2.0" (rate_limit.redis), "luasocket >= 3.0" (the command's times in milliseconds)
}
external_dependencies = {
  CURL = { library = "curl" },
  CRYPTO = { library = "crypto" },
}
build = {
  type = "builtin",
  modules = {
    ["cachectl.core"] = {
      sources = {
        "src/core.c", "src/session.c", "src/handles.c", "src/engine.c", "src/options.c",
        "src/endpoints.c", "src/errors.c", "src/parse.c", "src/ratelimit.c",
        "src/answer.c", "src/buf.c", "src/clock.c", "src/digest.c", "src/request.c",
      },
      defines = { "_GNU_SOURCE" },
      incdirs = { "$(CURL_INCDIR)", "$(CRYPTO_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(CRYPTO_LIBDIR)" },
      libraries = { "curl", "crypto", "m" },
    },
    cachectl = "lua/cachectl/init.lua",
    ["cachectl.perform"] = "lua/cachectl/perform.lua",
    ["cachectl.policies"] = "lua/cachectl/policies.lua",
    ["cachectl.mock"] = "lua/cachectl/mock/init.lua",
    ["cachectl.mock.cli"] = "lua/cachectl/mock/cli.lua",
    ["cachectl.mock.conn"] = "lua/cachectl/mock/conn.lua",
    ["cachectl.mock.control"] = "lua/cachectl/mock/control.lua",
    ["cachectl.mock.faults"] = "lua/cachectl/mock/faults.lua",
    ["cachectl.mock.http"] = "lua/cachectl/mock/http.lua",
    ["cachectl.mock.json"] = "lua/cachectl/mock/json.lua",
    ["cachectl.mock.launcher"] = "lua/cachectl/mock/launcher.lua",
    ["cachectl.mock.loop"] = "lua/cachectl/mock/loop.lua",
    ["cachectl.mock.models"] = "lua/cachectl/mock/models.lua",
    ["cachectl.mock.modelslab"] = "lua/cachectl/mock/modelslab.lua",
    ["cachectl.mock.omni"] = "lua/cachectl/mock/omni.lua",
    ["cachectl.mock.ratelimit"] = "lua/cachectl/mock/ratelimit.lua",
    ["cachectl.mock.server"] = "lua/cachectl/mock/server.lua",
    ["cachectl.mock.util"] = "lua/cachectl/mock/util.lua",
    ["cachectl.cli"] = "lua/cachectl/cli.lua",
    ["cachectl.cli.parser"] = "lua/cachectl/cli/parser.lua",
    ["cachectl.cli.run"] = "lua/cachectl/cli/run.lua",
    ["cachectl.cli.output"] = "lua/cachectl/cli/output.lua",
    ["cachectl.cli.sys"] = "lua/cachectl/cli/sys.lua",
    ["cachectl.cli.man"] = "lua/cachectl/cli/man.lua",
    ["cachectl.cli.omni"] = "lua/cachectl/cli/omni.lua",
    ["cachectl.cli.dry"] = "lua/cachectl/cli/dry.lua",
    ["cachectl.cli.cache"] = "lua/cachectl/cli/cache.lua",
    ["cachectl.cli.json"] = "lua/cachectl/cli/json.lua",
    ["cachectl.openresty"] = "lua/cachectl/openresty.lua",
  },
  install = {
    bin = {
      ["cachectl-mock"] = "bin/cachectl-mock",
      cachectl = "bin/cachectl",
    },
  },
  -- into the rock's folder (luarocks show --rock-dir cachectl): the pages
  -- --help names, and the man page, docs/man/man1/cachectl.1
  copy_directories = { "docs" },
}
