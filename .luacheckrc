std = "max"
max_line_length = 120
include_files = { "**/*.lua", "bin/*", "*.rockspec", ".busted", ".luacheckrc" }
exclude_files = { "build/", ".luarocks/", "lua_modules/" }
files["spec/"] = { std = "+busted" }
files["examples/*_spec.lua"] = { std = "+busted" }
files["*.rockspec"] = { globals = { "rockspec_format", "package", "version", "source", "description",
  "dependencies", "external_dependencies", "build", "test_dependencies", "test" } }
files[".busted"] = { std = "max" }
files[".luacheckrc"] = { globals = { "std", "max_line_length", "include_files", "exclude_files", "files" } }
