--- The `cachectl` command: clear ModelsLab caches and queues, reset Omni caches.
--
-- `bin/cachectl` is only a launcher; everything happens in `main`, which takes
-- its arguments, its environment and its output streams as parameters and
-- returns the exit status, so that it can be tested without a process:
--
--    local cli = require "cachectl.cli"
--    local out = {}
--    local status = cli.main({ "modelslab", "clear-cache", "--json" },
--      { MODELSLAB_API_KEY = "k-123", MODELSLAB_BASE_URL = "http://127.0.0.1:8080/api" },
--      { stdout = function(s) out[#out + 1] = s end })
--
-- Credentials come from `$MODELSLAB_API_KEY` / `$OMNI_API_KEY` or from the
-- first line of `--key-file PATH`, never from an argument, and never appear in
-- what the command prints. Exit status: 0 success, 1 failure from the service
-- or the network, 2 usage. The README describes it ("The `cachectl` command").
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli

local error, ipairs, pcall, require, tonumber, tostring, type, getmetatable =
  error, ipairs, pcall, require, tonumber, tostring, type, getmetatable
local io, math, os, string, table = io, math, os, string, table
local format, concat = string.format, table.concat

local argparse = require "argparse"
local cjson = require "cjson"

local M = {}

local USAGE, FAILURE, SUCCESS = 2, 1, 0

-- Raised from inside argparse by --help and --version, which must not exit
-- the process the way argparse's own actions do.
local STOP = "cachectl.cli: stop"

local ENV_KEY = { modelslab = "MODELSLAB_API_KEY", omni = "OMNI_API_KEY" }
local ENV_BASE = { modelslab = "MODELSLAB_BASE_URL", omni = "OMNI_BASE_URL" }
local MODELSLAB_DEFAULT_BASE = "https://modelslab.com/api"

-- The ModelsLab commands: command name, client method, whether it takes
-- --product, what it does, and an example for its --help.
local MODELSLAB = {
  { "clear-cache", "clear_cache", false, "Clear the ModelsLab user cache (POST {base}/v5/clear_cache).",
    "cachectl modelslab clear-cache" },
  { "clear-queue", "clear_queue", true,
    "Clear a ModelsLab Enterprise queue (POST {base}/v1/enterprise/{product}/clear_queue).",
    "cachectl modelslab clear-queue --product 3d" },
  { "enterprise-clear-cache", "enterprise_clear_cache", true,
    "Clear a ModelsLab Enterprise server's cache (POST {base}/v1/enterprise/{product}/clear_cache).",
    "cachectl modelslab enterprise-clear-cache --product 3d" },
  { "restart-server", "restart_server", true,
    "Restart a ModelsLab Enterprise server (never retried).",
    "cachectl modelslab restart-server --product 3d" },
  { "update-server", "update_server", true,
    "Update a ModelsLab Enterprise server (never retried).",
    "cachectl modelslab update-server --product 3d" },
  { "system-details", "system_details", true,
    "Show a ModelsLab Enterprise server's system details.",
    "cachectl modelslab system-details --product 3d --json" },
}

local CREDENTIAL_FLAGS = { "--key", "--token", "--api-key", "--secret", "--password" }

-- Small helpers -----------------------------------------------------------

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- Replaces every occurrence of `secret` (and of its JSON-escaped form) in `s`.
local function redact(s, secret)
  if type(secret) ~= "string" or #secret < 4 then return s end
  local forms = { secret }
  local ok, encoded = pcall(cjson.encode, secret)
  if ok then
    encoded = encoded:sub(2, -2)
    if encoded ~= secret then forms[2] = encoded end
  end
  for _, form in ipairs(forms) do
    local out, i = {}, 1
    while true do
      local a, b = s:find(form, i, true)
      if not a then break end
      out[#out + 1] = s:sub(i, a - 1)
      out[#out + 1] = "***"
      i = b + 1
    end
    out[#out + 1] = s:sub(i)
    s = concat(out)
  end
  return s
end

-- A policy name as printed: plain names as they are, others quoted.
local function show(name)
  if type(name) == "string" and name:match("^[%w%._%-:]+$") then return name end
  return format("%q", tostring(name))
end

local function default_clock()
  local ok, socket = pcall(require, "socket")
  if ok and type(socket) == "table" and socket.gettime then return socket.gettime() end
  return os.time()
end

-- Whether stdout is a terminal: `test -t 1` runs in a child that inherits
-- our stdout.
local function default_isatty()
  local ok = os.execute("test -t 1")
  if type(ok) == "number" then return ok == 0 end -- Lua 5.1
  return ok == true
end

-- The permission bits of a file, as an octal string ("600"), or nil.
local function default_file_mode(path)
  local p = io.popen("stat -c %a -- " .. shell_quote(path) .. " 2>/dev/null", "r")
  if not p then return nil end
  local out = p:read("*a") or ""
  p:close()
  return out:match("^(%d+)")
end

-- A writer: a function, or anything with a `write` method (a file).
local function writer(w, default)
  if w == nil then w = default end
  if type(w) == "function" then return w end
  return function(s) w:write(s) end
end

local function getenv_of(env)
  if env == nil then return os.getenv end
  if type(env) == "function" then return env end
  if type(env) == "table" then return function(name) return env[name] end end
  error(format("bad argument #2 to 'cachectl.cli.main' (function or table expected, got %s)", type(env)), 3)
end

local function nonempty(v)
  if v ~= nil and v ~= "" then return v end
  return nil
end

-- The parser --------------------------------------------------------------

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

local COMMON_EPILOG = [[
Credentials: $%s, or the first line of --key-file PATH (never an argument).
Exit status: 0 success, 1 failure from the service or the network, 2 usage.]]

local function build_parser(state)
  local function help_flag(cmd)
    cmd:add_help(false)
    cmd:flag("-h --help", "Show this help and exit.")
      :action(function() state.stop = "help"; state.help_for = cmd; error(STOP, 0) end)
    return cmd
  end

  local function common(cmd, service)
    cmd:option("--base-url", "Service root URL (default: $" .. ENV_BASE[service]
      .. (service == "modelslab" and (", else " .. MODELSLAB_DEFAULT_BASE) or "") .. ").")
      :argname("<url>")
    if service == "omni" then
      cmd:option("--instance", "Omni instance: https://<name>.omniapp.co/api."):argname("<name>")
      cmd:flag("--playground", "With --instance: https://<name>.playground.exploreomni.dev/api.")
    end
    cmd:option("--timeout", "Seconds for the whole call, retries included (default 30).")
      :argname("<seconds>"):convert(positive_number("--timeout"))
    cmd:option("--retries", "Extra attempts for retryable failures (default 2).")
      :argname("<n>"):convert(retries_count)
    cmd:option("--key-file", "Read the credential from the first line of this file instead of $"
      .. ENV_KEY[service] .. ".")
      :argname("<path>")
    cmd:flag("--json", "Print one JSON document for scripts.")
    cmd:flag("--quiet", "Print nothing on success (failures still go to stderr).")
  end

  local parser = help_flag(argparse("cachectl",
    "Clear ModelsLab caches and queues and reset Omni caches."))
  state.parsers[""] = parser
  parser:epilog("Examples:\n"
    .. "  MODELSLAB_API_KEY=... cachectl modelslab clear-cache\n"
    .. "  OMNI_API_KEY=... cachectl omni reset-cache --instance acme --model UUID --policy daily\n"
    .. "Run 'cachectl <command> <action> --help' for an action's flags.\n"
    .. "Exit status: 0 success, 1 failure from the service or the network, 2 usage.")
  parser:flag("--version", "Show the version and exit.")
    :action(function() state.stop = "version"; error(STOP, 0) end)
  parser:command_target("service")
  parser:help_max_width(100)

  local ml = help_flag(parser:command("modelslab", "ModelsLab calls (credential: $MODELSLAB_API_KEY)."))
  ml:command_target("action")
  ml:epilog("Examples:\n  MODELSLAB_API_KEY=... cachectl modelslab clear-cache\n"
    .. "  MODELSLAB_API_KEY=... cachectl modelslab clear-queue --product 3d --json\n"
    .. "Run 'cachectl modelslab <action> --help' for an action's flags.")
  state.parsers.modelslab = ml
  for _, c in ipairs(MODELSLAB) do
    local name, call, takes_product, what, example = c[1], c[2], c[3], c[4], c[5]
    local cmd = help_flag(ml:command(name, what))
    if takes_product then
      cmd:option("--product", "Enterprise product, [a-z0-9-]+ (default 3d)."):argname("<product>")
    end
    common(cmd, "modelslab")
    cmd:epilog(format("Examples:\n  MODELSLAB_API_KEY=... %s\n  %s --key-file ~/.modelslab-key \\\n"
      .. "      --base-url http://127.0.0.1:8080/api --json\n\n", example, example)
      .. format(COMMON_EPILOG, ENV_KEY.modelslab))
    state.calls["modelslab " .. name] = call
    state.parsers["modelslab " .. name] = cmd
  end

  local omni = help_flag(parser:command("omni", "Omni calls (credential: $OMNI_API_KEY)."))
  omni:command_target("action")
  omni:epilog("Example:\n  OMNI_API_KEY=... cachectl omni reset-cache --instance acme \\\n"
    .. "      --model 1b4e28ba-2fa1-11d2-883f-0016d3cca427 --policy daily --policy hourly\n"
    .. "Run 'cachectl omni reset-cache --help' for its flags.")
  state.parsers.omni = omni
  local rc = help_flag(omni:command("reset-cache",
    "Reset Omni cache policies of a model (POST {base}/v1/models/{model}/cache_reset/{policy}); "
    .. "several --policy flags are reset concurrently."))
  rc:option("--model", "The model's UUID."):argname("<uuid>"):count(1):overwrite(false)
  rc:option("--policy", "A cache policy name; repeat the flag for several."):argname("<name>"):count("+")
  rc:option("--reset-at", "Reset as of this time: RFC 3339 or epoch seconds, not in the future.")
    :argname("<time>")
  common(rc, "omni")
  rc:epilog("Examples:\n"
    .. "  OMNI_API_KEY=... cachectl omni reset-cache --instance acme \\\n"
    .. "      --model 1b4e28ba-2fa1-11d2-883f-0016d3cca427 --policy daily\n"
    .. "  cachectl omni reset-cache --key-file ~/.omni-token --instance acme \\\n"
    .. "      --model 1b4e28ba-2fa1-11d2-883f-0016d3cca427 --policy daily --policy hourly \\\n"
    .. "      --reset-at 2026-11-22T08:00:00Z --json\n\n"
    .. format(COMMON_EPILOG, ENV_KEY.omni))
  state.calls["omni reset-cache"] = "reset_cache"
  state.parsers["omni reset-cache"] = rc
  return parser
end

-- The command words in argv (for the usage line of a failed parse).
local function command_words(argv)
  local words = {}
  for _, a in ipairs(argv) do
    if a:sub(1, 1) ~= "-" then
      if #words == 0 and (a == "modelslab" or a == "omni") then
        words[1] = a
      elseif #words == 1 then
        words[2] = a
        break
      end
    end
  end
  return words
end

-- The deepest known (sub)command parser named by `words`.
local function find_command(parsers, words)
  local cmd = parsers[""]
  local key = ""
  for _, w in ipairs(words) do
    key = key == "" and w or (key .. " " .. w)
    if not parsers[key] then break end
    cmd = parsers[key]
  end
  return cmd
end

-- Credentials -------------------------------------------------------------

-- The credential and nil, or nil and a usage message.
local function credential(service, args, getenv, sys, say_err)
  local path = args.key_file
  if path then
    local f, oerr = io.open(path, "rb")
    if not f then return nil, "cannot read the key file: " .. tostring(oerr) end
    local line = f:read("*l")
    f:close()
    line = line and trim(line)
    if not line or line == "" then
      return nil, format("the key file %s is empty: put the credential on its first line", path)
    end
    local mode = sys.file_mode(path)
    if mode and #mode >= 3 then
      local g, o = tonumber(mode:sub(-2, -2)), tonumber(mode:sub(-1))
      if (g and g % 8 >= 4) or (o and o % 8 >= 4) then
        say_err(format("cachectl: warning: the key file %s is readable by group or others (mode %s); "
          .. "run: chmod 600 %s\n", path, mode, shell_quote(path)))
      end
    end
    return line
  end
  local v = nonempty(getenv(ENV_KEY[service]))
  if v then return v end
  return nil, format("no credential: set %s or use --key-file PATH", ENV_KEY[service])
end

-- Running the calls -------------------------------------------------------

-- One line for an error value: its own tostring when it has one.
local function err_line(err)
  local mt = getmetatable(err)
  if type(err) == "table" and mt and mt.__tostring then return tostring(err) end
  if type(err) == "table" then
    return format("cachectl: %s: %s", tostring(err.kind), tostring(err.message))
  end
  return "cachectl: " .. tostring(err)
end

local function json_error(err)
  local function field(k)
    local v = err[k]
    if v == nil then return cjson.null end
    return v
  end
  return {
    kind = field("kind"), message = field("message"), status = field("status"), code = field("code"),
    retry_after = field("retry_after"), attempts = field("attempts"), field = field("field"),
  }
end

-- Calls fn(...) and times it; a raised error (a bug) becomes an error value.
local function timed(clock, fn, ...)
  local t0 = clock()
  local ok, res, err = pcall(fn, ...)
  local ms = (clock() - t0) * 1000
  if not ok then return nil, { kind = "internal", message = tostring(res) }, ms end
  return res, err, ms
end

local function describe_success(item)
  local res = item.result
  if item.call == "reset_cache" then
    local r = type(res) == "table" and type(res.cache_reset) == "table" and res.cache_reset or {}
    local at = r.reset_at
    return at and ("reset, as of " .. tostring(at)) or "reset"
  end
  local text = type(res) == "table" and (res.message or res.messege) or nil
  text = type(text) == "string" and text or "done"
  if type(res) == "table" and type(res.details) == "table" then
    local ok, encoded = pcall(cjson.encode, res.details)
    if ok then text = text .. ": " .. encoded end
  end
  return text
end

local function human_line(item)
  local ms = format("(%.0f ms)", item.ms)
  if item.ok then
    return format("%s: %s %s\n", item.label, describe_success(item), ms)
  end
  return format("%s: failed: %s %s\n", item.label, err_line(item.err), ms)
end

-- Runs the command; returns the list of result items.
local function run_calls(service, call, args, opts, sys, progress)
  local cachectl = require "cachectl"
  local made, client = pcall(cachectl[service].new, opts)
  if not made then
    return { { call = call, label = service, ok = false, ms = 0,
               err = { kind = "internal", message = tostring(client) } } }
  end
  local items = {}
  if service == "modelslab" then
    local label = "modelslab " .. args.action
    if args.product then label = label .. " [" .. args.product .. "]" end
    local res, err, ms = timed(sys.clock, client[call], client)
    items[1] = { call = call, label = label, product = args.product, result = res, err = err,
                 ok = res ~= nil, ms = ms }
  else
    local per_call = {}
    local reset_at = args.reset_at
    if reset_at then per_call.reset_at = tonumber(reset_at:match("^%d+%.?%d*$") or "") or reset_at end
    local policies = args.policy
    if #policies == 1 then
      local res, err, ms = timed(sys.clock, client.reset_cache, client, args.model, policies[1], per_call)
      items[1] = { call = call, policy = policies[1], label = "omni reset-cache " .. show(policies[1]),
                   result = res, err = err, ok = res ~= nil, ms = ms }
    else
      progress(format("resetting %d policies of model %s...\n", #policies, show(args.model)))
      local results, err, ms = timed(sys.clock, client.reset_caches, client, args.model, policies, per_call)
      for i, p in ipairs(policies) do
        local r = results and results[i] or { err = err }
        -- The batch runs concurrently: each item reports the whole batch's time.
        items[i] = { call = call, policy = p, label = "omni reset-cache " .. show(p),
                     result = r.result, err = r.err, ok = r.result ~= nil, ms = ms }
      end
    end
  end
  pcall(client.close, client)
  return items
end

-- 0 when every call succeeded; 2 when every call was refused as invalid
-- before anything was sent (a usage mistake such as a bad model id);
-- otherwise 1, so that a batch with any failure fails.
local function exit_status(items)
  local failed, invalid = 0, 0
  for _, item in ipairs(items) do
    if not item.ok then
      failed = failed + 1
      if type(item.err) == "table" and item.err.kind == "invalid" then invalid = invalid + 1 end
    end
  end
  if failed == 0 then return SUCCESS end
  if invalid == #items then return USAGE end
  return FAILURE
end

local function print_results(items, args, command, out, err_out)
  if args.json then
    local doc_items, all_ok = {}, true
    for i, item in ipairs(items) do
      local d = { call = item.call, ok = item.ok, ms = math.floor(item.ms * 10 + 0.5) / 10 }
      if item.policy ~= nil then d.policy = item.policy end
      if item.product ~= nil then d.product = item.product end
      if item.ok then d.result = item.result else d.error = json_error(item.err); all_ok = false end
      doc_items[i] = d
    end
    local encoded, text = pcall(cjson.encode, { ok = all_ok, command = command, results = doc_items })
    if not encoded then
      -- An answer cjson cannot write back (it decoded it, so this is rare):
      -- keep the document valid and say why the results are missing.
      text = cjson.encode({ ok = all_ok, command = command, results = cjson.null,
                            error = { kind = "internal", message = "cannot encode the results: " .. tostring(text) } })
    end
    out(text .. "\n")
    return
  end
  for _, item in ipairs(items) do
    if not item.ok then
      err_out(human_line(item))
    elseif not args.quiet then
      out(human_line(item))
    end
  end
end

-- Entry point -------------------------------------------------------------

--- Runs the `cachectl` command.
-- @tparam {string,...} argv the arguments (as the global `arg`; `arg[0]` and
--   below are ignored)
-- @tparam[opt] function|table env the environment: a function like `os.getenv`
--   or a table of variables (default `os.getenv`); only `MODELSLAB_API_KEY`,
--   `MODELSLAB_BASE_URL`, `OMNI_API_KEY`, `OMNI_BASE_URL` and `TERM` are read
-- @tparam[opt] table sys the outside world, for tests: `stdout`, `stderr`
--   (functions taking a string, or files; default `io.stdout`, `io.stderr`),
--   `isatty()` (whether stdout is a terminal), `clock()` (seconds),
--   `file_mode(path)` (octal permission string)
-- @treturn integer the exit status: 0 success, 1 failure from the service or
--   the network, 2 usage
-- @usage os.exit(require("cachectl.cli").main(arg, os.getenv))
function M.main(argv, env, sys)
  local getenv = getenv_of(env)
  sys = sys or {}
  local raw_out = writer(sys.stdout, io.stdout)
  local raw_err = writer(sys.stderr, io.stderr)
  sys = {
    clock = sys.clock or default_clock,
    isatty = sys.isatty or default_isatty,
    file_mode = sys.file_mode or default_file_mode,
  }
  local secret
  local function out(s) raw_out(redact(s, secret)) end
  local function err_out(s) raw_err(redact(s, secret)) end

  local args_in = {}
  for i = 1, #(argv or {}) do args_in[i] = tostring(argv[i]) end

  local state = { calls = {}, parsers = {} }
  local parser = build_parser(state)

  local function usage_error(msg, cmd)
    cmd = cmd or find_command(state.parsers, command_words(args_in))
    err_out(cmd:get_usage() .. "\n\ncachectl: error: " .. msg .. "\n")
    local words = command_words(args_in)
    err_out(format("Run 'cachectl%s --help' for help.\n", #words > 0 and (" " .. concat(words, " ")) or ""))
    return USAGE
  end

  -- Refuse credentials on the command line before anything else, without
  -- ever echoing the value.
  for _, a in ipairs(args_in) do
    if a == "--" then break end
    for _, flag in ipairs(CREDENTIAL_FLAGS) do
      if a == flag or a:sub(1, #flag + 1) == flag .. "=" then
        return usage_error(format("%s: credentials are never taken from arguments (they would show in "
          .. "the process list); use the environment (MODELSLAB_API_KEY, OMNI_API_KEY) or --key-file PATH", flag))
      end
    end
  end

  local called, ok, args = pcall(parser.pparse, parser, args_in)
  if state.stop == "help" then
    out(state.help_for:get_help() .. "\n")
    return SUCCESS
  elseif state.stop == "version" then
    local v = "?"
    local got, cachectl = pcall(require, "cachectl")
    if got then v = cachectl.version end
    out("cachectl " .. tostring(v) .. "\n")
    return SUCCESS
  end
  if not called then
    err_out("cachectl: internal error: " .. tostring(ok) .. "\n")
    return FAILURE
  end
  if not ok then return usage_error(tostring(args)) end

  local service = args.service
  local command = service .. " " .. args.action
  local call = state.calls[command]
  local cmd = state.parsers[command]
  if args.json and args.quiet then return usage_error("give --json or --quiet, not both", cmd) end

  -- Everything the client needs is given explicitly, so that the library
  -- never reads the process environment behind `env`'s back.
  local opts = { timeout = args.timeout, retries = args.retries }
  if service == "modelslab" then
    opts.base_url = args.base_url or nonempty(getenv(ENV_BASE.modelslab)) or MODELSLAB_DEFAULT_BASE
    if args.product then opts.product = args.product end
  else
    if args.instance and args.base_url then
      return usage_error("give --instance or --base-url, not both", cmd)
    end
    if args.playground and not args.instance then
      return usage_error("--playground goes with --instance", cmd)
    end
    if args.instance then
      opts.instance, opts.playground = args.instance, args.playground or nil
    else
      opts.base_url = args.base_url or nonempty(getenv(ENV_BASE.omni))
      if not opts.base_url then
        return usage_error("give --instance NAME or --base-url URL (or set OMNI_BASE_URL)", cmd)
      end
    end
  end

  local key, kerr = credential(service, args, getenv, sys, err_out)
  if not key then return usage_error(kerr, cmd) end
  secret = key
  opts[service == "modelslab" and "key" or "token"] = key

  -- Progress for a batch, on a terminal only, in the human format only.
  local function progress(s)
    if args.json or args.quiet then return end
    local term = getenv("TERM")
    if not term or term == "" or term == "dumb" then return end
    if sys.isatty() then out(s) end
  end

  local items = run_calls(service, call, args, opts, sys, progress)
  print_results(items, args, command, out, err_out)
  return exit_status(items)
end

return M
