std = "max"
max_line_length = 120
include_files = { "**/*.lua", "bin/*", "*.rockspec", ".busted", ".luacheckrc" }
exclude_files = { "build/", ".luarocks/", "lua_modules/" }
files["spec/"] = { std = "+busted" }
-- ngx_lua as luacheck knows it, plus the API lua-nginx-module 0.10.23 added since.
stds.ngx_threads = { read_globals = { ngx = { fields = { "run_worker_thread" } } } }
files["lua/cachectl/openresty.lua"] = { std = "+ngx_lua+ngx_threads" }
files["examples/openresty/"] = { std = "+ngx_lua+ngx_threads" }
files["examples/*_spec.lua"] = { std = "+busted" }
files["*.rockspec"] = { globals = { "rockspec_format", "package", "version", "source", "description",
  "dependencies", "external_dependencies", "build", "test_dependencies", "test" } }
files[".busted"] = { std = "max" }
files[".luacheckrc"] = { globals = { "std", "stds", "max_line_length", "include_files", "exclude_files", "files" } }
