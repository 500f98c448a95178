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

Redis (rate_limit.redis, coalescing across processes) is reached from C
through hiredis, and Omni model files (omni:cache_policies, check_policy)
are read in C with libyaml, within limits; both are linked like libcurl.
Optional: lua-resty-redis, for coalescing through Redis on nginx's main side
only; LuaSocket, for the milliseconds in the command's output only. Without them every other call works. The rock
installs the man page of the command, cachectl(1), and the documentation
(docs/, `luarocks doc cachectl`).
]],
  homepage = "https://github.com/cachectl/cachectl",
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson >= 2.1",
  "argparse >= 0.6",
  -- optional, not installed by default: "luasocket >= 3.0" (the command's times in milliseconds)
}
external_dependencies = {
  CURL = { library = "curl" },
  CRYPTO = { library = "crypto" },
  HIREDIS = { header = "hiredis/async.h", library = "hiredis" },
  YAML = { header = "yaml.h", library = "yaml" },
}
build = {
  type = "builtin",
  modules = {
    ["cachectl.core"] = {
      sources = {
        "src/core.c", "src/session.c", "src/handles.c", "src/engine.c", "src/transfer.c", "src/events.c",
        "src/options.c", "src/endpoints.c", "src/errors.c", "src/parse.c", "src/ratelimit.c",
        "src/answer.c", "src/buf.c", "src/clock.c", "src/digest.c", "src/request.c",
        "src/limiter.c", "src/redis.c", "src/scrub.c", "src/urls.c", "src/prepared.c", "src/yaml.c",
        "src/policies.c", "src/cache.c", "src/outcome.c",
      },
      defines = { "_GNU_SOURCE" },
      incdirs = { "$(CURL_INCDIR)", "$(CRYPTO_INCDIR)", "$(HIREDIS_INCDIR)", "$(YAML_INCDIR)" },
      libdirs = { "$(CURL_LIBDIR)", "$(CRYPTO_LIBDIR)", "$(HIREDIS_LIBDIR)", "$(YAML_LIBDIR)" },
      libraries = { "curl", "yaml", "hiredis", "crypto", "anl", "m" },
    },
    cachectl = "lua/cachectl/init.lua",
    ["cachectl.perform"] = "lua/cachectl/perform.lua",
    ["cachectl.fleet"] = "lua/cachectl/fleet.lua",
    ["cachectl.cli"] = "lua/cachectl/cli.lua",
    ["cachectl.cli.parser"] = "lua/cachectl/cli/parser.lua",
    ["cachectl.cli.run"] = "lua/cachectl/cli/run.lua",
    ["cachectl.cli.output"] = "lua/cachectl/cli/output.lua",
    ["cachectl.cli.sys"] = "lua/cachectl/cli/sys.lua",
    ["cachectl.cli.man"] = "lua/cachectl/cli/man.lua",
    ["cachectl.cli.omni"] = "lua/cachectl/cli/omni.lua",
    ["cachectl.cli.dry"] = "lua/cachectl/cli/dry.lua",
    ["cachectl.cli.json"] = "lua/cachectl/cli/json.lua",
    ["cachectl.openresty"] = "lua/cachectl/openresty.lua",
  },
  install = {
    bin = {
      cachectl = "bin/cachectl",
    },
  },
  -- into the rock's folder (luarocks show --rock-dir cachectl): the pages
  -- --help names, and the man page, docs/man/man1/cachectl.1
  copy_directories = { "docs" },
}
