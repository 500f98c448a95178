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
-- (`cachectl.cli.parser`, which builds only the chosen action's parser), the
-- runners are in `cachectl.cli.run` (a plain call) and `cachectl.cli.omni`,
-- --dry-run in `cachectl.cli.dry`, what is printed in `cachectl.cli.output`;
-- each is loaded only when the action needs it.
-- Credentials come from the service's variable (`core.services[svc].env`),
-- the first line of `--key-file PATH` or of standard input (`--key-file -`),
-- never from an argument, and never appear in what the command prints.
-- Exit status: 0 success, 1 a failure to fix, 2 usage, 75 a temporary
-- failure worth retrying later, 130 interrupted (Ctrl-C). With `--json`,
-- stdout holds exactly one JSON document whatever happens. docs/cli.md is
-- the manual.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli

local error, ipairs, pairs, pcall, require, tonumber, tostring, type =
  error, ipairs, pairs, pcall, require, tonumber, tostring, type
local io, os, string, table = io, os, string, table
local format, concat = string.format, table.concat

local core = require "cachectl.core"
local output = require "cachectl.cli.output"

local M = {}

local SUCCESS, FAILURE, USAGE = output.SUCCESS, output.FAILURE, output.USAGE

-- The --json writer, loaded when asked for.
local function json() return require "cachectl.cli.json" end
local escape = output.escape

local REDIS_ENV = "CACHECTL_REDIS_URL"      -- as cachectl.cli.parser.REDIS_ENV

local function nonempty(v)
  if v ~= nil and v ~= "" then return v end
  return nil
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
  redis_secrets(getenv(REDIS_ENV), secrets)
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

-- What argv says before it is parsed: the command words (the first two
-- arguments that are not flags: the flags before them take no value) and
-- whether --json is asked for, so that even a failed parse answers in JSON.
local function scan(argv)
  local words, as_json = {}, false
  for _, a in ipairs(argv) do
    if a == "--" then break end
    if a == "--json" then as_json = true end
    if a:sub(1, 1) ~= "-" and #words < 2 then words[#words + 1] = a end
  end
  words.first = words[2] ~= nil and argv[1] == words[1] and argv[2] == words[2]
  return words, as_json
end

-- Output ----------------------------------------------------------------

-- "modelslab clear-cache" once the words name a known action, else nil.
local function command_name(ctx)
  local w = ctx.words
  if w[1] and w[2] and ctx.state.actions[w[1] .. " " .. w[2]] then return w[1] .. " " .. w[2] end
  return nil
end

-- A failure of the run itself (no call made): a usage error (status 2) or
-- another (a refused confirmation): one line and a hint on stderr, or one
-- JSON document.
local function failure(ctx, status, kind, msg, hint)
  if ctx.json then
    ctx.doc(json().failure(command_name(ctx), kind, msg, ctx.secrets))
  else
    ctx.note("cachectl: error: " .. escape(msg) .. "\n" .. (hint and hint .. "\n" or ""))
  end
  return status
end

local function usage_error(ctx, msg)
  -- the deepest command the words name, for the hint
  local known, key = "", ""
  for _, w in ipairs(ctx.words) do
    key = key == "" and w or (key .. " " .. w)
    if not ctx.state.parsers[key] then break end
    known = key
  end
  msg = tostring(msg):gsub("\nDid you mean", "; did you mean")
  return failure(ctx, USAGE, "usage", msg,
    format("Run 'cachectl%s --help' for help.", known ~= "" and " " .. escape(known) or ""))
end

-- Credentials -------------------------------------------------------------

-- The credential, or nil and a usage message.
local function credential(ctx, svc)
  local key, err
  if ctx.args.key_file then
    key, err = require("cachectl.cli.sys").key_file(ctx, ctx.args.key_file)
  else
    key = nonempty(ctx.getenv(svc.env[svc.secret]))
    if not key then err = format("no credential: set %s or use --key-file PATH", svc.env[svc.secret]) end
  end
  if key then ctx.secrets[key] = true end
  return key, err
end

-- The client ----------------------------------------------------------------

-- Where the service is: --instance, --base-url, its variables or its default.
local function host_options(ctx, svc, opts)
  local args = ctx.args
  if args.instance and args.base_url then return "give --instance or --base-url, not both" end
  local instance = args.instance
  opts.base_url = args.base_url
  if not instance and not args.base_url then
    opts.base_url = nonempty(ctx.getenv(svc.env.base_url))
    local var = ctx.parser_mod.INSTANCE_ENV[svc.name]
    instance = not opts.base_url and var and nonempty(ctx.getenv(var)) or nil
    opts.base_url = opts.base_url or (not instance and svc.default_base) or nil
  end
  if args.playground and not instance then return "--playground goes with --instance (or $OMNI_INSTANCE)" end
  if instance then
    opts.instance, opts.playground = instance, args.playground or nil
  elseif not opts.base_url then
    local var = ctx.parser_mod.INSTANCE_ENV[svc.name]
    return format("give --instance NAME or --base-url URL (or set %s%s)", svc.env.base_url,
      var and " or " .. var or "")
  end
end

-- The rate limit: --rate-limit, kept in --redis (default $CACHECTL_REDIS_URL).
local function limit_options(ctx, svc, opts)
  local args = ctx.args
  local redis = args.redis or nonempty(ctx.getenv(REDIS_ENV))
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
  local opts = { timeout = args.timeout, retries = args.retries }
  local msg = host_options(ctx, svc, opts) or limit_options(ctx, svc, opts)
  if msg then return nil, msg end
  local key, kerr = credential(ctx, svc)
  if not key then return nil, kerr end
  opts[svc.secret] = key
  ctx.attempted, ctx.event_ms = {}, 0
  opts.on_event = function(ev)
    if ev.type == "attempt" then
      ctx.attempted[ev.call] = true
      ctx.event_ms = ctx.event_ms + (tonumber(ev.ms) or 0)
    elseif ev.type == "wait" then
      ctx.event_ms = ctx.event_ms + (tonumber(ev.wait) or 0) * 1000
    end
    if ev.type == "attempt" and ev.call == "model_yaml" then ctx.yaml_status = ev.status end
    if args.verbose or args.verbose_first then ctx.note(output.event_line(ev)) end
  end
  return opts
end

-- Running -----------------------------------------------------------------

-- Parses argv, building only the parser the command words need; returns
-- the arguments, or nil and the exit status.
local function parse(ctx)
  local flag = credential_flag(ctx.argv)
  local parser_mod = require "cachectl.cli.parser"
  ctx.parser_mod = parser_mod
  local parser = parser_mod.build(ctx.state, ctx.words)
  if flag then
    return nil, usage_error(ctx, format("%s: credentials are never taken from arguments (they would show in "
      .. "the process list); use the environment (%s) or --key-file PATH", flag, credential_vars()))
  end
  local called, ok, args = pcall(parser.pparse, parser, ctx.argv)
  local state = ctx.state
  if state.stop == "help" then
    local text = state.help_for:get_help() .. "\n"
    if ctx.json then ctx.doc(json().encode({ ok = true, command = command_name(ctx), help = text }, ctx.secrets))
    else ctx.out(text) end
    return nil, SUCCESS
  elseif state.stop == "version" then
    local text = "cachectl " .. tostring(core.version) .. "\n"
    if ctx.json then ctx.doc(json().encode({ ok = true, version = core.version }, ctx.secrets))
    else ctx.out(text) end
    return nil, SUCCESS
  end
  if not called then error(ok, 0) end
  if not ok then return nil, usage_error(ctx, parser_mod.negative_value(ctx.argv) or args) end
  return args
end

local function print_results(ctx, items)
  local args = ctx.args
  if args.json then
    ctx.doc(json().doc(items, ctx.action.service .. " " .. ctx.action.name, ctx.secrets))
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

-- Whether a call that cannot be undone (a row that is not idempotent:
-- restart-server, update-server) may go: yes with --yes, and without a
-- terminal on stdin (cron); else the answer to a question on stderr.
local function confirmed(ctx)
  local args = ctx.args
  if ctx.action.row.idempotent or args.yes or ctx.stdin_used or not ctx.sys.isatty(0) then return true end
  local step = require("cachectl.cli.dry").steps(ctx)[1]
  local where = step.request and (step.request.method .. " " .. escape(step.request.url)) or ctx.action.name
  ctx.note(format("cachectl: %s %s: %s; go ahead? [y/N] ", ctx.action.service, ctx.action.name, where))
  local line = ctx.sys.read_line(64)
  return line ~= nil and (line:match("^%s*[yY]%s*$") or line:match("^%s*[yY][eE][sS]%s*$")) ~= nil
end

local function dry_run(ctx)
  local dry = require "cachectl.cli.dry"
  local steps = dry.steps(ctx)
  local ok = true
  for _, s in ipairs(steps) do ok = ok and s.request ~= nil end
  if ctx.args.json then
    ctx.doc(json().encode({ ok = ok, command = command_name(ctx), dry_run = true,
      requests = dry.json(steps), results = json().list({}) }, ctx.secrets))
  elseif ok then
    ctx.out(dry.text(steps))
  else
    ctx.note(dry.text(steps))
  end
  return ok and SUCCESS or FAILURE
end

-- `cachectl completion bash|zsh|fish`: the script, from every action's parser.
local function completion(ctx, shell)
  ctx.out(ctx.parser_mod.completion(shell))
  return SUCCESS
end

local function command(ctx)
  local args, status = parse(ctx)
  if not args then return status end
  ctx.args = args
  if args.service == "completion" then return completion(ctx, args.shell) end
  ctx.action = ctx.state.actions[args.service .. " " .. args.action]
  local opts, msg = client_options(ctx)
  if not opts then return usage_error(ctx, msg) end
  ctx.opts = opts
  if args.dry_run then return dry_run(ctx) end
  if not confirmed(ctx) then
    return failure(ctx, FAILURE, "aborted", "not confirmed: nothing was sent", "Give --yes to skip the question.")
  end
  -- Progress for a batch, on a terminal only, in the human format only.
  ctx.progress = function(s)
    if args.json or args.quiet then return end
    local term = ctx.getenv("TERM")
    if term and term ~= "" and term ~= "dumb" and ctx.sys.isatty(1) then ctx.out(s) end
  end
  -- A plain call with nothing of the Lua layer to do goes to the core.
  local limit = opts.rate_limit
  ctx.direct = ctx.action.run == "call" and not args.coalesce and not (type(limit) == "table" and limit.redis)
  local client
  ctx.client = function()
    if not client then
      local copts = { coalesce = args.coalesce }
      for k, v in pairs(opts) do copts[k] = v end
      client = require("cachectl")[args.service].new(copts)
    end
    return client
  end
  local hints = {}
  ctx.later = function(s) hints[#hints + 1] = s end     -- said after the results
  local run = require(ctx.action.run == "call" and "cachectl.cli.run" or "cachectl.cli.omni")
  local ok, items = pcall(run[ctx.action.run], ctx)
  if client then pcall(client.close, client) end
  if not ok then error(items, 0) end
  print_results(ctx, items)
  for _, s in ipairs(hints) do ctx.note(s) end
  return output.exit_status(items)
end

-- A `getenv` function from `main`'s `env` argument.
local function getenv_of(env)
  if env == nil then return os.getenv end
  if type(env) == "function" then return env end
  if type(env) == "table" then return function(name) return env[name] end end
  error(format("bad argument #2 to 'cachectl.cli.main' (function or table expected, got %s)", type(env)), 3)
end

-- A writer: a function (which may return false and a message when it
-- fails), or anything with a `write` method (a file, then flushed at the
-- end); `failed(message)` is called on the first failure.
local function writer(w, default, failed)
  if w == nil then w = default end
  if type(w) == "function" then
    return function(s)
      local ok, e = w(s)
      if ok == false then failed(e) end
    end
  end
  return function(s)
    local ok, e = w:write(s)
    if not ok then failed(e) end
  end, function()
    local ok, e = w:flush()
    if not ok then failed(e) end
  end
end

-- The function `name` of cachectl.cli.sys, loaded when first called.
local function from_sys(name)
  return function(...) return require("cachectl.cli.sys")[name](...) end
end

--- Runs the `cachectl` command.
-- @tparam {string,...} argv the arguments (as the global `arg`; `arg[0]` and
--   below are ignored)
-- @tparam[opt] function|table env the environment: a function like `os.getenv`
--   or a table of variables (default `os.getenv`); read: each service's
--   credential and base URL variables (`core.services[svc].env`),
--   `OMNI_INSTANCE`, `CACHECTL_REDIS_URL` and `TERM`
-- @tparam[opt] table sys the outside world, for tests: `stdout`, `stderr`
--   (functions taking a string, or files; default `io.stdout`, `io.stderr`),
--   `isatty(fd)` (whether stdout, fd 1, or stdin, fd 0, is a terminal),
--   `read_line(max)` (a line of stdin, or nil; at most `max` + 1 bytes),
--   `clock()` (seconds), `file_mode(path)` (octal permission string); a
--   `stdout` function may return `false, message` when it cannot write
-- @treturn integer the exit status: 0 success, 1 a failure to fix (or an
--   output that could not be written), 2 usage, 75 a temporary failure worth
--   retrying later, 130 interrupted
-- @usage os.exit(require("cachectl.cli").main(arg, os.getenv))
function M.main(argv, env, sys)
  local getenv = getenv_of(env)
  sys = sys or {}
  local write_error
  local raw_out, flush = writer(sys.stdout, io.stdout, function(e) write_error = write_error or tostring(e) end)
  local raw_err = writer(sys.stderr, io.stderr, function() end)
  local ctx = {
    getenv = getenv, secrets = env_secrets(getenv), argv = {}, state = { parsers = {}, actions = {} },
    sys = { clock = sys.clock or from_sys("clock"), isatty = sys.isatty or from_sys("isatty"),
            file_mode = sys.file_mode or from_sys("file_mode"), read_line = sys.read_line or from_sys("read_line") },
  }
  ctx.out = function(s) raw_out(output.scrub(s, ctx.secrets)) end
  -- a --json document: its strings were masked before it was encoded
  -- (masking the text could cut its syntax apart)
  ctx.doc = raw_out
  ctx.note = function(s) raw_err(output.scrub(s, ctx.secrets)) end
  for i = 1, #(argv or {}) do ctx.argv[i] = tostring(argv[i]) end
  ctx.words, ctx.json = scan(ctx.argv)
  local ok, status = pcall(command, ctx)
  if not ok then
    local interrupted = output.interrupted(status)
    if ctx.json then
      ctx.doc(json().failure(command_name(ctx), interrupted and "interrupted" or "internal",
        interrupted and "interrupted" or tostring(status), ctx.secrets))
    end
    if interrupted then
      ctx.note("cachectl: interrupted\n")
      status = output.INTERRUPTED
    else
      ctx.note("cachectl: internal error: " .. escape(status) .. "\n")
      status = FAILURE
    end
  end
  -- what could not be written is no success (a full disk, a closed stdout)
  if flush then flush() end
  if write_error then
    ctx.note("cachectl: error: cannot write the output: " .. escape(write_error) .. "\n")
    if status == SUCCESS then status = FAILURE end
  end
  return status
end

return M
