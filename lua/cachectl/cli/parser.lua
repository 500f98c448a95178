--- The `cachectl` command's actions and argument parser, built from the
-- service rows of `cachectl.core` (`core.services`): every call row with an
-- `action` name is an action, with the flags of the options its row takes;
-- `omni models` and `omni policies` are the two actions of Lua-layer methods.
-- Nothing here lists the calls or the environment variables again.
-- A run builds only the parser it needs (the chosen action's flags); help,
-- completion scripts and the man page (`cachectl.cli.man`) come from the
-- same definitions.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.parser

local error, ipairs, pairs, tonumber, tostring = error, ipairs, pairs, tonumber, tostring
local math, string, table = math, string, table
local format, concat, sort = string.format, table.concat, table.sort

local argparse = require "argparse"
local core = require "cachectl.core"

local M = {}

-- Raised from inside argparse by --help and --version, which must not exit
-- the process the way argparse's own actions do.
M.STOP = "cachectl.cli: stop"

--- The variable holding the default of --redis.
M.REDIS_ENV = "CACHECTL_REDIS_URL"

--- The variable naming the instance of a service built from one (Omni),
-- read when neither --instance nor --base-url is given and the base URL
-- variable is unset (as the Lua layer does).
M.INSTANCE_ENV = { omni = "OMNI_INSTANCE" }

--- The exit statuses, for --help, the man page and docs/cli.md.
M.EXIT = {
  { 0, "success" },
  { 1, "a failure to fix: a 4xx answer, invalid input, an api or decode error, a refused policy, "
    .. "a model name matching no model or several, a refused confirmation" },
  { 2, "usage: an unknown action or flag, a bad or missing flag value, no credential, an unreadable key file" },
  { 75, "a temporary failure worth retrying later: rate_limited, timeout, connect, a 5xx after the retries" },
  { 130, "interrupted (Ctrl-C)" },
}

-- Flag converters: a value, or nil and a message naming the flag.
local function positive_number(name)
  return function(s)
    local n = tonumber(s)
    if not n or n ~= n or n <= 0 or n == math.huge then
      return nil, format("%s needs a number of seconds > 0, got '%s'", name, s)
    end
    return n
  end
end

local function retries_count(s)
  local n = tonumber(s)
  if not n or n < 0 or n > 100 or n % 1 ~= 0 then
    return nil, format("--retries needs a whole number from 0 to 100, got '%s'", s)
  end
  return n
end

local function rate(s)
  local n, per = s:match("^(%d+)/(%d+%.?%d*)$")
  n, per = tonumber(n), tonumber(per)
  if not n or n < 1 or not per or per <= 0 then
    return nil, format("--rate-limit needs REQUESTS/SECONDS such as 60/60, got '%s'", s)
  end
  return { requests = n, per = per }
end

-- The flags taking a number, by name: argparse takes a negative value
-- ("--coalesce -1") for an unknown flag "-1"; `M.negative_value` says what
-- the flag's converter would.
local NUMERIC = { ["--timeout"] = positive_number("--timeout"), ["--coalesce"] = positive_number("--coalesce"),
                  ["--retries"] = retries_count, ["--rate-limit"] = rate }

--- The message for a negative number given to a flag of numbers
-- (`--coalesce -1`), or nil.
-- @tparam {string,...} argv
-- @treturn string|nil
function M.negative_value(argv)
  for i = 1, #argv - 1 do
    local a, v = argv[i], argv[i + 1]
    if a == "--" then return nil end
    if NUMERIC[a] and v:match("^%-%.?%d") then
      local _, msg = NUMERIC[a](v)
      return msg
    end
  end
  return nil
end

-- The flags of a call's own options, by option name, in the order shown;
-- `example` goes into the action's --help examples.
local FLAGS = {
  { option = "model_id", example = "--model Sales", add = function(cmd)
    cmd:option("--model", "The model: its UUID, or its name (resolved with the model list; "
      .. "no match or several fails, listing the candidates)."):argname("<uuid|name>")
      :count(1):overwrite(false)
  end },
  { option = "policy", example = "--policy daily", add = function(cmd)
    cmd:option("--policy", "A cache policy name; repeat the flag for several (reset concurrently).")
      :argname("<name>"):count("+")
    cmd:flag("--no-check", "Reset without checking the names against the model's declared policies.")
  end },
  { option = "reset_at", add = function(cmd)
    cmd:option("--reset-at", "Reset as of this time: RFC 3339 or epoch seconds, not in the future.")
      :argname("<time>")
  end },
  { option = "product", example = "--product 3d", add = function(cmd, svc)
    cmd:mutex(
      cmd:option("--product", format("Enterprise product slug, [a-z0-9_-], 1 to 64 characters (default %s).",
        tostring(svc.default_product))):argname("<slug>"),
      cmd:flag("--no-product", "The product-less server: POST {base}/v1/enterprise/<action>."))
  end },
  { option = "deploy_type", add = function(cmd)
    cmd:option("--deploy-type", "Sent as \"deploy_type\" in the body, to pick one server of a product "
      .. "(e.g. flux_2_dev)."):argname("<slug>")
  end },
  { option = "name", example = "--name Sales", add = function(cmd)
    cmd:option("--name", "Only the models of this name."):argname("<name>")
  end },
}

-- The actions of Lua-layer methods: the row each sits on (its options give
-- the common flags), the options with a flag, and what it does.
local LUA_ACTIONS = {
  omni = {
    { name = "models", on = "list_models", takes = { "name" }, run = "models",
      what = "List the models (GET {base}/v1/models, every page followed)." },
    { name = "policies", on = "model_yaml", takes = { "model_id" }, run = "policies",
      what = "List a model's cache policies, from its model.yaml (fully resolved)." },
  },
}

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys)
  return keys
end

-- "enterprise_clear_cache" -> "Enterprise clear cache"
local function humanize(name)
  local s = name:gsub("_", " ")
  return s:sub(1, 1):upper() .. s:sub(2)
end

local function row_action(svc, row)
  local takes = {}
  for _, f in ipairs(FLAGS) do
    if row.options[f.option] then takes[#takes + 1] = f.option end
  end
  local what = format("%s: %s {base}%s.", humanize(row.name), row.method, row.path)
  if not row.idempotent then
    what = what .. " Never retried; asks for confirmation when stdin is a terminal (--yes skips it)."
  end
  if row.options.policy then
    what = what .. " Several policies are reset concurrently; the names are checked against the "
      .. "model's declared policies first (one read of its YAML), unless --no-check."
  end
  return { service = svc.name, name = row.action, call = row.name, row = row, takes = takes,
           run = row.options.policy and "reset" or "call", what = what }
end

-- The actions of one service, in name order; with `only`, the action of
-- that name alone (or none).
local function service_actions(sname, only)
  local svc, mine = core.services[sname], {}
  for _, cname in ipairs(sorted_keys(svc.calls)) do
    local row = svc.calls[cname]
    if row.action and (not only or row.action == only) then mine[#mine + 1] = row_action(svc, row) end
  end
  for _, a in ipairs(LUA_ACTIONS[sname] or {}) do
    if not only or a.name == only then
      local row = svc.calls[a.on] or error("cachectl.cli: no row " .. sname .. "." .. a.on)
      mine[#mine + 1] = { service = sname, name = a.name, call = a.on, row = row, takes = a.takes,
                          run = a.run, what = a.what }
    end
  end
  sort(mine, function(x, y) return x.name < y.name end)
  return mine
end

--- Every action of the command, by service then name:
-- `{ service, name, call, row, takes = { option names }, run, what }`.
-- @treturn {table,...} the actions
function M.actions()
  local list = {}
  for _, sname in ipairs(sorted_keys(core.services)) do
    for _, a in ipairs(service_actions(sname)) do list[#list + 1] = a end
  end
  return list
end

local function help_flag(state, cmd)
  cmd:add_help(false)
  cmd:flag("-h --help", "Show this help and exit.")
    :action(function() state.stop = "help"; state.help_for = cmd; error(M.STOP, 0) end)
  return cmd
end

-- The flags every action has, from the service's facts and the row's options.
local function common_flags(cmd, svc, row)
  local base_default = "$" .. svc.env.base_url .. (svc.default_base and (", else " .. svc.default_base) or "")
  cmd:option("--base-url", "Service root URL (default: " .. base_default .. ")."):argname("<url>")
  if row.options.instance then
    cmd:option("--instance", "Instance name: " .. svc.host:gsub("{instance}", "<name>") .. "."):argname("<name>")
    cmd:flag("--playground", "With --instance: " .. svc.playground_host:gsub("{instance}", "<name>") .. ".")
  end
  cmd:option("--timeout", "Seconds for the whole call, retries included (default 30).")
    :argname("<seconds>"):convert(positive_number("--timeout"))
  cmd:option("--retries", "Extra attempts for retryable failures (default 2)."):argname("<n>"):convert(retries_count)
  cmd:option("--key-file", "Read the credential from the first line of this file instead of $"
    .. svc.env[svc.secret] .. " (- reads standard input)."):argname("<path>")
  local limit = svc.rate_limit
  cmd:option("--rate-limit", "At most REQUESTS calls start in any SECONDS (default: "
    .. (limit and format("%d/%d", limit.requests, limit.per) or "none") .. ")."):argname("<n/s>"):convert(rate)
  cmd:option("--redis", "Keep the rate limit (and --coalesce) in this Redis, shared by every process using it "
    .. "(default: $" .. M.REDIS_ENV .. ")."):argname("<url>")
  cmd:option("--coalesce", "Identical calls starting within this many seconds share one request.")
    :argname("<seconds>"):convert(positive_number("--coalesce"))
  cmd:flag("--dry-run", "Print each request that would be sent (credentials masked) and send nothing.")
  if not row.idempotent then
    cmd:flag("-y --yes", "Do not ask for confirmation (asked only when stdin is a terminal).")
  end
  cmd:flag("--json", "Print one JSON document for scripts, whatever the outcome.")
  cmd:flag("--quiet", "Print nothing on success (failures still go to stderr).")
  cmd:flag("-v --verbose", "Print each attempt and wait on stderr.")
end

-- The action's example command line (after the credential) for --help.
local function example(svc, action)
  local own = {}
  for _, f in ipairs(FLAGS) do
    for _, o in ipairs(action.takes) do
      if f.option == o and f.example then own[#own + 1] = " " .. f.example end
    end
  end
  local host = svc.host and " --instance acme" or ""
  return format("cachectl %s %s%s%s", svc.name, action.name, host, concat(own))
end

local function tail()
  local parts = {}
  for _, e in ipairs(M.EXIT) do parts[#parts + 1] = e[1] .. " " .. e[2]:match("^[^:]*") end
  return "Exit status: " .. concat(parts, ", ") .. ".\nManual: man cachectl, or docs/cli.md (installed with the "
    .. "rock: luarocks doc cachectl)."
end

local function action_epilog(svc, line)
  return format("Examples:\n  %s=... %s\n  %s \\\n      --key-file ~/.%s-key --json -v\n\n"
    .. "Credentials: $%s, or the first line of --key-file PATH (- reads standard input; never an argument).\n%s",
    svc.env[svc.secret], line, line, svc.name, svc.env[svc.secret], tail())
end

-- The action's command under `parent`; with its flags unless `bare` (a
-- bare command only names the action, for a list or an error message).
local function add_action(state, parent, action, bare)
  local svc = core.services[action.service]
  local cmd = help_flag(state, parent:command(action.name, action.what))
  local key = action.service .. " " .. action.name
  state.actions[key], state.parsers[key] = action, cmd
  if bare then return end
  for _, f in ipairs(FLAGS) do
    for _, o in ipairs(action.takes) do
      if f.option == o then f.add(cmd, svc) end
    end
  end
  common_flags(cmd, svc, action.row)
  cmd:epilog(action_epilog(svc, example(svc, action)))
end

-- The actions of one service, in name order.
local function actions_of(every, sname)
  local mine = {}
  for _, a in ipairs(every) do
    if a.service == sname then mine[#mine + 1] = a end
  end
  return mine
end

-- A service's command under `parser`, with its actions as `build` needs
-- them; its examples go to `all` (for cachectl's own help).
local function add_service(state, parser, every, sname, words, chosen, all)
  local full = words == nil
  local svc = core.services[sname]
  local cmd = parser:command(svc.name, format("Calls to %s (credential: $%s).", svc.name, svc.env[svc.secret]))
  if not (chosen and words.first) then help_flag(state, cmd) else cmd:add_help(false) end
  cmd:command_target("action")
  state.parsers[svc.name] = cmd
  local mine = actions_of(every, sname)
  if full or words[1] == sname then
    for _, a in ipairs(mine) do
      if full or not chosen or a == chosen then add_action(state, cmd, a, not full and not chosen) end
    end
  end
  if not chosen then            -- the helps of the service and of cachectl: their examples
    local lines = {}
    for i, a in ipairs(mine) do lines[i] = format("  %s=... %s", svc.env[svc.secret], example(svc, a)) end
    all[#all + 1] = lines[1]
    cmd:epilog("Examples:\n" .. concat(lines, "\n")
      .. format("\nRun 'cachectl %s <action> --help' for an action's flags.", sname))
  end
end

--- The shells `cachectl completion` writes a script for.
M.SHELLS = { "bash", "zsh", "fish" }

--- Builds the parser; fills `state.parsers` (by "", "service" and
-- "service action") and `state.actions` (by "service action").
-- Only what `words` needs: the flags of the action `words[2]` of the
-- service `words[1]` when both name one, else the names of that service's
-- actions (or of the services); with `words == nil`, everything (help of
-- every action, completion scripts, the man page).
-- @tparam table state `{ parsers = {}, actions = {} }`; --help and --version
--   set `state.stop` and raise `M.STOP`
-- @tparam[opt] {string,...} words the service and action named on the
--   command line; `words.first` when they are its first two arguments
-- @return the argparse parser
function M.build(state, words)
  local full = words == nil
  words = words or {}
  -- the one action the words name: then nothing else is needed, not even
  -- the flags before the action when none is given there (`words.first`)
  local chosen = not full and core.services[words[1] or ""] and words[2] and service_actions(words[1], words[2])[1]
  local parser = argparse("cachectl", "Clear ModelsLab caches and queues and reset Omni caches.")
  state.parsers[""] = parser
  if chosen and words.first then
    parser:add_help(false)
  else
    help_flag(state, parser)
    parser:flag("--version", "Show the version and exit.")
      :action(function() state.stop = "version"; error(M.STOP, 0) end)
    -- its own target: the action's -v (unset) would overwrite a shared one
    parser:flag("-v --verbose", "Print each attempt and wait on stderr (also taken after the action).")
      :target("verbose_first")
  end
  parser:command_target("service")
  parser:help_max_width(100)
  local all, every = {}, chosen and { chosen } or M.actions()
  for _, sname in ipairs(sorted_keys(core.services)) do
    -- with an action chosen, nothing is parsed in the other services
    if not chosen or chosen.service == sname then
      add_service(state, parser, every, sname, not full and words or nil, chosen, all)
    end
  end
  if not chosen then
    local comp = help_flag(state, parser:command("completion", "Print a completion script for the shell "
      .. "(bash, zsh or fish): source <(cachectl completion bash)."))
    comp:argument("shell", "The shell: bash, zsh or fish."):choices(M.SHELLS)
    state.parsers.completion = comp
    parser:epilog("Examples:\n" .. concat(all, "\n") .. "\n  source <(cachectl completion bash)\n"
      .. "Run 'cachectl <service> <action> --help' for an action's flags.\n" .. tail())
  end
  return parser
end

--- The completion script for `shell` (one of `M.SHELLS`), made by argparse
-- from the whole parser, then corrected where argparse offers what the
-- command refuses: argparse's scripts add a command's flags to those of
-- the commands above it, but a flag of `cachectl` (`--version`) or of a
-- service is refused after an action, and `-h` would be offered twice;
-- here each command offers its own flags only. `completion` offers the
-- shells.
-- @tparam string shell
-- @treturn string the script
function M.completion(shell)
  local parser = M.build({ parsers = {}, actions = {} })
  local script = parser["get_" .. shell .. "_complete"](parser)
  local shells = concat(M.SHELLS, " ")
  local n
  if shell == "bash" then
    script = script:gsub('(\n%s*opts=")%$opts ', "%1")
    script, n = script:gsub('(\n    esac\n\n    if %[%[ "%$cur" = %-%* %]%]; then)',
      "\n        'completion')\n            COMPREPLY=($(compgen -W \"" .. shells .. "\" -- \"$cur\"))\n"
      .. "            ;;%1")
  elseif shell == "zsh" then
    script = script:gsub("(\n%s*options=%(\n)%s*%$options\n", "%1")
    n = 1                                   -- argparse's zsh script offers the choices
  else
    script = script:gsub("%-n '__fish_cachectl_seen_command ", "-n '__fish_cachectl_using_command ")
    script = script:gsub("\ncomplete %-c cachectl %-s", "\ncomplete -c cachectl -n '__fish_cachectl_using_command' -s")
      :gsub("\ncomplete %-c cachectl %-l", "\ncomplete -c cachectl -n '__fish_cachectl_using_command' -l")
    script, n = script .. format("complete -c cachectl -n '__fish_cachectl_using_command completion' -xa '%s'\n",
      shells), 1
  end
  if n ~= 1 then error("cachectl.cli.parser: argparse's " .. shell .. " script has changed; cannot correct it") end
  return script
end

return M
