--- The `cachectl` command: clear ModelsLab caches and queues, reset Omni
-- caches, list Omni models and their cache policies.
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
-- The actions and their flags come from the service rows of `cachectl.core`
-- (`cachectl.cli.parser`), the runners are in `cachectl.cli.run`, what is
-- printed in `cachectl.cli.output`. Credentials come from the service's
-- variable (`core.services[svc].env`) or the first line of `--key-file PATH`,
-- never from an argument, and never appear in what the command prints.
-- Exit status: 0 success, 1 failure from the service or the network, 2 usage,
-- 130 interrupted (Ctrl-C). docs/cli.md is the manual.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli

local error, ipairs, pairs, pcall, require, tostring, type = error, ipairs, pairs, pcall, require, tostring, type
local io, string, table = io, string, table
local format, concat = string.format, table.concat

local core = require "cachectl.core"
local sysmod = require "cachectl.cli.sys"
local parser_mod = require "cachectl.cli.parser"
local output = require "cachectl.cli.output"
local run = require "cachectl.cli.run"

local M = {}

local SUCCESS, FAILURE, USAGE = output.SUCCESS, output.FAILURE, output.USAGE

local function nonempty(v)
  if v ~= nil and v ~= "" then return v end
  return nil
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- The secret parts of a Redis URL: its user-info (and the password in it).
local function redis_secrets(url, secrets)
  local info = type(url) == "string" and url:match("^%a[%w+.-]*://([^/]*)@") or nil
  if info and info ~= "" then
    secrets[info] = true
    local password = info:match(":(.+)$")
    if password then secrets[password] = true end
  end
end

-- Every credential the environment holds, masked in all output from the
-- start (a usage error may echo an argument before the credential is read).
local function env_secrets(getenv)
  local secrets = {}
  for _, svc in pairs(core.services) do
    local v = nonempty(getenv(svc.env[svc.secret]))
    if v then secrets[v] = true end
  end
  redis_secrets(getenv(parser_mod.REDIS_ENV), secrets)
  return secrets
end

-- The credential variables, for messages: "MODELSLAB_API_KEY, OMNI_API_KEY".
local function credential_vars()
  local names = {}
  for _, svc in pairs(core.services) do names[#names + 1] = svc.env[svc.secret] end
  table.sort(names)
  return concat(names, ", ")
end

-- Flags that would carry a credential on the command line (every service's
-- credential option, and the usual spellings): refused without echoing.
local function credential_flag(args_in)
  local flags = { "--api-key", "--secret", "--password" }
  for _, svc in pairs(core.services) do flags[#flags + 1] = "--" .. svc.secret end
  for _, a in ipairs(args_in) do
    if a == "--" then break end
    for _, flag in ipairs(flags) do
      if a == flag or a:sub(1, #flag + 1) == flag .. "=" then return flag end
    end
  end
end

-- Usage errors ------------------------------------------------------------

-- The command words in argv (for the usage line of a failed parse).
local function command_words(argv)
  local words = {}
  for _, a in ipairs(argv) do
    if a:sub(1, 1) ~= "-" then
      if #words == 0 and core.services[a] then
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
  local cmd, key = parsers[""], ""
  for _, w in ipairs(words) do
    key = key == "" and w or (key .. " " .. w)
    if not parsers[key] then break end
    cmd = parsers[key]
  end
  return cmd
end

local function usage_error(ctx, msg)
  local words = command_words(ctx.argv)
  local cmd = find_command(ctx.state.parsers, words)
  ctx.note(cmd:get_usage() .. "\n\ncachectl: error: " .. msg .. "\n")
  ctx.note(format("Run 'cachectl%s --help' for help.\n", #words > 0 and (" " .. concat(words, " ")) or ""))
  return USAGE
end

-- Credentials -------------------------------------------------------------

-- The first line of --key-file. The path is never echoed in an error about
-- opening it: someone may have given the key itself as the path.
local function key_file(ctx, path)
  local f, oerr = io.open(path, "rb")
  if not f then
    local reason = tostring(oerr)
    reason = reason:sub(1, #path + 2) == path .. ": " and reason:sub(#path + 3) or "cannot open it"
    return nil, "cannot read the key file given to --key-file: " .. reason
  end
  local line = f:read("*l")
  f:close()
  line = line and trim(line)
  if not line or line == "" then
    return nil, "the key file given to --key-file is empty: put the credential on its first line"
  end
  local mode = ctx.sys.file_mode(path)
  if mode and #mode >= 3 then
    local g, o = mode:sub(-2, -2), mode:sub(-1)
    if g:match("[4-7]") or o:match("[4-7]") then
      ctx.note(format("cachectl: warning: the key file %s is readable by group or others (mode %s); "
        .. "run: chmod 600 %s\n", path, mode, sysmod.shell_quote(path)))
    end
  end
  return line
end

-- The credential, or nil and a usage message.
local function credential(ctx, svc)
  local key, err
  if ctx.args.key_file then
    key, err = key_file(ctx, ctx.args.key_file)
  else
    key = nonempty(ctx.getenv(svc.env[svc.secret]))
    if not key then err = format("no credential: set %s or use --key-file PATH", svc.env[svc.secret]) end
  end
  if key then ctx.secrets[key] = true end
  return key, err
end

-- The client ----------------------------------------------------------------

-- Where the service is: --instance, --base-url, its variable or its default.
local function host_options(ctx, svc, opts)
  local args = ctx.args
  if args.instance and args.base_url then return "give --instance or --base-url, not both" end
  if args.playground and not args.instance then return "--playground goes with --instance" end
  if args.instance then
    opts.instance, opts.playground = args.instance, args.playground or nil
    return nil
  end
  opts.base_url = args.base_url or nonempty(ctx.getenv(svc.env.base_url)) or svc.default_base
  if not opts.base_url then
    return format("give --instance NAME or --base-url URL (or set %s)", svc.env.base_url)
  end
end

-- The rate limit: --rate-limit, kept in --redis (default $CACHECTL_REDIS_URL).
local function limit_options(ctx, svc, opts)
  local args = ctx.args
  local redis = args.redis or nonempty(ctx.getenv(parser_mod.REDIS_ENV))
  redis_secrets(redis, ctx.secrets)
  local limit = args.rate_limit
  if redis and not limit and not svc.rate_limit then
    if args.redis then
      return format("--redis keeps a rate limit and %s has none by default: give --rate-limit N/S too", svc.name)
    end
    redis = nil                   -- $CACHECTL_REDIS_URL, but nothing to keep there
  end
  if limit or redis then
    opts.rate_limit = { requests = limit and limit.requests, per = limit and limit.per, redis = redis }
  elseif not svc.rate_limit then
    opts.rate_limit = false       -- the library does not take $CACHECTL_REDIS_URL for it either
  end
end

-- The client's options, or nil and a usage message.
local function client_options(ctx)
  local args = ctx.args
  local svc = core.services[ctx.action.service]
  if args.json and args.quiet then return nil, "give --json or --quiet, not both" end
  -- Everything the client needs is given explicitly, so that the library
  -- never reads the process environment behind `env`'s back.
  local opts = { timeout = args.timeout, retries = args.retries, coalesce = args.coalesce }
  local msg = host_options(ctx, svc, opts) or limit_options(ctx, svc, opts)
  if msg then return nil, msg end
  local key, kerr = credential(ctx, svc)
  if not key then return nil, kerr end
  opts[svc.secret] = key
  opts.on_event = function(ev)
    if ev.type == "attempt" and ev.call == "model_yaml" then ctx.yaml_status = ev.status end
    if args.verbose or args.verbose_first then ctx.note(output.event_line(ev)) end
  end
  return opts
end

-- Running -----------------------------------------------------------------

-- Parses argv; returns the arguments, or nil and the exit status.
local function parse(ctx)
  local parser = parser_mod.build(ctx.state)
  local flag = credential_flag(ctx.argv)
  if flag then
    return nil, usage_error(ctx, format("%s: credentials are never taken from arguments (they would show in "
      .. "the process list); use the environment (%s) or --key-file PATH", flag, credential_vars()))
  end
  local called, ok, args = pcall(parser.pparse, parser, ctx.argv)
  local state = ctx.state
  if state.stop == "help" then
    ctx.out(state.help_for:get_help() .. "\n")
    return nil, SUCCESS
  elseif state.stop == "version" then
    local got, cachectl = pcall(require, "cachectl")
    ctx.out("cachectl " .. tostring(got and cachectl.version or core.version) .. "\n")
    return nil, SUCCESS
  end
  if not called then error(ok, 0) end
  if not ok then return nil, usage_error(ctx, tostring(args)) end
  return args
end

local function print_results(ctx, items)
  local args = ctx.args
  if args.json then
    ctx.out(output.json_doc(items, ctx.action.service .. " " .. ctx.action.name, ctx.secrets))
    return
  end
  for _, item in ipairs(items) do
    if not item.ok then
      ctx.note(output.human_line(item))
    elseif not args.quiet then
      ctx.out(output.human_line(item))
    end
  end
end

local function command(ctx)
  local args, status = parse(ctx)
  if not args then return status end
  ctx.args = args
  ctx.action = ctx.state.actions[args.service .. " " .. args.action]
  local opts, msg = client_options(ctx)
  if not opts then return usage_error(ctx, msg) end
  -- Progress for a batch, on a terminal only, in the human format only.
  ctx.progress = function(s)
    if args.json or args.quiet then return end
    local term = ctx.getenv("TERM")
    if term and term ~= "" and term ~= "dumb" and ctx.sys.isatty() then ctx.out(s) end
  end
  local cachectl = require "cachectl"
  local made, client = pcall(cachectl[args.service].new, opts)
  if not made then
    if output.interrupted(client) then error(client, 0) end
    ctx.note("cachectl: cannot make the client: " .. tostring(client) .. "\n")
    return FAILURE
  end
  ctx.client = client
  local hints = {}
  ctx.later = function(s) hints[#hints + 1] = s end     -- said after the results
  local ok, items, usage = pcall(run[ctx.action.run], ctx)
  pcall(client.close, client)
  if not ok then error(items, 0) end
  if usage then return usage_error(ctx, usage) end
  print_results(ctx, items)
  for _, s in ipairs(hints) do ctx.note(s) end
  return output.exit_status(items)
end

--- Runs the `cachectl` command.
-- @tparam {string,...} argv the arguments (as the global `arg`; `arg[0]` and
--   below are ignored)
-- @tparam[opt] function|table env the environment: a function like `os.getenv`
--   or a table of variables (default `os.getenv`); read: each service's
--   credential and base URL variables (`core.services[svc].env`),
--   `CACHECTL_REDIS_URL` and `TERM`
-- @tparam[opt] table sys the outside world, for tests: `stdout`, `stderr`
--   (functions taking a string, or files; default `io.stdout`, `io.stderr`),
--   `isatty()` (whether stdout is a terminal), `clock()` (seconds),
--   `file_mode(path)` (octal permission string)
-- @treturn integer the exit status: 0 success, 1 failure from the service or
--   the network, 2 usage, 130 interrupted
-- @usage os.exit(require("cachectl.cli").main(arg, os.getenv))
function M.main(argv, env, sys)
  local getenv = sysmod.getenv_of(env)
  sys = sys or {}
  local raw_out = sysmod.writer(sys.stdout, io.stdout)
  local raw_err = sysmod.writer(sys.stderr, io.stderr)
  local ctx = {
    getenv = getenv, secrets = env_secrets(getenv), argv = {}, state = { parsers = {}, actions = {} },
    sys = { clock = sys.clock or sysmod.clock, isatty = sys.isatty or sysmod.isatty,
            file_mode = sys.file_mode or sysmod.file_mode },
  }
  ctx.out = function(s) raw_out(output.scrub(s, ctx.secrets)) end
  ctx.note = function(s) raw_err(output.scrub(s, ctx.secrets)) end
  for i = 1, #(argv or {}) do ctx.argv[i] = tostring(argv[i]) end
  local ok, status = pcall(command, ctx)
  if ok then return status end
  if output.interrupted(status) then
    ctx.note("cachectl: interrupted\n")
    return output.INTERRUPTED
  end
  ctx.note("cachectl: internal error: " .. tostring(status) .. "\n")
  return FAILURE
end

return M
