--- The `cachectl` man page, cachectl(1), generated from the parser that
-- `--help` prints (`cachectl.cli.parser`): each command's section holds its
-- help text as `--help` gives it, so that the two cannot disagree. `make
-- man` writes it to docs/man/man1/cachectl.1, which the rock installs.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.man

local ipairs, pairs = ipairs, pairs
local string, table = string, table
local format, concat, sort = string.format, table.concat, table.sort

local core = require "cachectl.core"
local parser_mod = require "cachectl.cli.parser"

local M = {}

-- Text for roff: backslashes and hyphens escaped (a plain "-" may print
-- as a hyphen that no shell takes for a minus), a leading dot or quote
-- made literal.
local function roff(text)
  return (text:gsub("\\", "\\e"):gsub("%-", "\\-"):gsub("\n([.'])", "\n\\&%1"):gsub("^([.'])", "\\&%1"))
end

-- Every variable the command reads, with what for.
local function environment()
  local vars = {}
  for _, svc in pairs(core.services) do
    vars[#vars + 1] = { svc.env[svc.secret], "the credential of the " .. svc.name
      .. " actions, unless \\-\\-key\\-file is given" }
    vars[#vars + 1] = { svc.env.base_url, "the default of \\-\\-base\\-url for the " .. svc.name .. " actions" }
    local instance = parser_mod.INSTANCE_ENV[svc.name]
    if instance then
      vars[#vars + 1] = { instance, "the default of \\-\\-instance for the " .. svc.name
        .. " actions when neither \\-\\-base\\-url nor " .. svc.env.base_url .. " is given" }
    end
  end
  sort(vars, function(a, b) return a[1] < b[1] end)
  vars[#vars + 1] = { parser_mod.REDIS_ENV, "the default of \\-\\-redis" }
  vars[#vars + 1] = { "TERM", "whether a batch's progress line is shown (not when unset or dumb)" }
  vars[#vars + 1] = { "CACHECTL_CACHE_DIR", "the folder of the compile cache of the command's Lua files (default "
    .. "$XDG_CACHE_HOME/cachectl, else ~/.cache/cachectl); empty: no cache" }
  return vars
end

--- The man page, as roff text.
-- @treturn string
function M.page()
  local state = { parsers = {}, actions = {} }
  parser_mod.build(state)
  local keys = {}
  for key in pairs(state.parsers) do keys[#keys + 1] = key end
  sort(keys)
  local out = {
    format('.TH CACHECTL 1 "" "cachectl %s" "User Commands"', core.version),
    ".SH NAME",
    "cachectl \\- clear ModelsLab caches and queues and reset Omni caches",
    ".SH SYNOPSIS",
    ".B cachectl",
    "[\\fB\\-v\\fR] \\fIservice\\fR \\fIaction\\fR [\\fIflags\\fR]",
    ".br",
    ".B cachectl completion",
    "\\fBbash\\fR|\\fBzsh\\fR|\\fBfish\\fR",
    ".SH DESCRIPTION",
    "\\fBcachectl\\fR makes the cache calls of ModelsLab and Omni from a shell: one action per call.",
    "Credentials come from the environment or \\fB\\-\\-key\\-file\\fR, never from an argument,",
    "and never appear in what it prints. \\fB\\-\\-json\\fR prints one JSON document whatever happens;",
    "\\fB\\-\\-dry\\-run\\fR prints the requests and sends nothing.",
    "Each command's flags follow, as its \\fB\\-\\-help\\fR prints them.",
    ".SH COMMANDS",
  }
  for _, key in ipairs(keys) do
    out[#out + 1] = format('.SS "cachectl%s"', key == "" and "" or " " .. roff(key))
    out[#out + 1] = ".nf"
    out[#out + 1] = roff(state.parsers[key]:get_help())
    out[#out + 1] = ".fi"
  end
  out[#out + 1] = ".SH EXIT STATUS"
  for _, e in ipairs(parser_mod.EXIT) do
    out[#out + 1] = ".TP"
    out[#out + 1] = format(".B %d", e[1])
    out[#out + 1] = roff(e[2])
  end
  out[#out + 1] = ".SH ENVIRONMENT"
  for _, v in ipairs(environment()) do
    out[#out + 1] = ".TP"
    out[#out + 1] = ".B " .. v[1]
    out[#out + 1] = v[2]
  end
  out[#out + 1] = ".SH SEE ALSO"
  out[#out + 1] = "docs/cli.md (installed with the rock: \\fBluarocks doc cachectl\\fR), curl(1)"
  return concat(out, "\n") .. "\n"
end

return M
