--- The runners of the `cachectl` command's actions: a plain call, an Omni
-- reset (several policies, the policy check, a model given by name), the
-- model list and a model's policies; and, for --dry-run, the requests each
-- would send. Each runner takes the context built by `cachectl.cli` and
-- returns the result items.
--
-- A plain call with nothing of the Lua layer to do (no --coalesce, no
-- --redis) goes straight to `cachectl.core`; the rest goes through a client
-- of the Lua layer (`ctx.client()`), loaded only then.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.run

local error, ipairs, pairs, pcall, tonumber, tostring, type, unpack =
  error, ipairs, pairs, pcall, tonumber, tostring, type, table.unpack or unpack
local string, table = string, table
local format, concat, sort = string.format, table.concat, table.sort

local cjson = require "cjson"
local core = require "cachectl.core"
local output = require "cachectl.cli.output"

local show, list, escape = output.show, output.list, output.escape

local M = {}

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
local NIL_UUID = "00000000-0000-0000-0000-000000000000"

-- Calls fn(...) and times it; a raised error (a bug) becomes an error value,
-- except Ctrl-C, which goes on up.
local function timed(clock, fn, ...)
  local t0 = clock()
  local ok, res, err = pcall(fn, ...)
  local ms = (clock() - t0) * 1000
  if not ok then
    if output.interrupted(res) then error(res, 0) end
    return nil, { kind = "internal", message = tostring(res) }, ms
  end
  return res, err, ms
end

local function item(call, label, res, err, ms, extra)
  local it = { call = call, label = label, result = res, err = err, ok = res ~= nil, ms = ms }
  for k, v in pairs(extra or {}) do it[k] = v end
  return it
end

-- The value of the flag of option `o` (--model holds model_id; numeric
-- --reset-at values are epoch seconds).
local function flag_value(args, o)
  if o == "model_id" then return args.model end
  local v = args[o]
  if o == "reset_at" and v then return tonumber(v:match("^%d+%.?%d*$") or "") or v end
  return v
end

-- The call's own options from its flags, leaving out its positional ones.
local function call_options(ctx)
  local positional, per = {}, {}
  for _, a in ipairs(ctx.action.row.args) do positional[a] = true end
  for _, o in ipairs(ctx.action.takes) do
    if not positional[o] then per[o] = flag_value(ctx.args, o) end
  end
  if ctx.args.no_product then per.product = false end
  return per
end

-- The label of a ModelsLab call: "modelslab clear-queue [flux, deploy_type x]".
local function call_label(ctx)
  local a, args = ctx.action, ctx.args
  local where = {}
  if args.no_product then where[1] = "no product" elseif args.product then where[1] = show(args.product) end
  if args.deploy_type then where[#where + 1] = "deploy_type " .. show(args.deploy_type) end
  return a.service .. " " .. a.name .. (#where > 0 and " [" .. concat(where, ", ") .. "]" or "")
end

local function call_fields(args)
  local fields = {}
  if args.no_product then fields.product = false elseif args.product then fields.product = args.product end
  fields.deploy_type = args.deploy_type
  return fields
end

--- A call with no list argument: its flags as options, its row's positional
-- arguments from their flags.
function M.call(ctx)
  local a, args = ctx.action, ctx.args
  local per = call_options(ctx)
  local res, err, ms
  if ctx.direct then
    local opts = {}
    for k, v in pairs(ctx.opts) do opts[k] = v end
    for k, v in pairs(per) do opts[k] = v end
    res, err, ms = timed(ctx.sys.clock, core[a.service][a.call], opts)
  else
    local positional = {}
    for i, o in ipairs(a.row.args) do positional[i] = flag_value(args, o) end
    positional[#a.row.args + 1] = per
    local client = ctx.client()
    res, err, ms = timed(ctx.sys.clock, client[a.call], client, unpack(positional, 1, #a.row.args + 1))
  end
  return { item(a.call, call_label(ctx), res, err, ms, { fields = call_fields(args) }) }
end

-- Said once after a reset whose policy check could not read the YAML.
local function permission_hint(ctx, items, model)
  if ctx.args.no_check or (ctx.yaml_status ~= nil and ctx.yaml_status ~= 403) then return end
  for _, it in ipairs(items) do
    if not it.ok and type(it.err) == "table" and it.err.status == 403 then
      ctx.later(format("cachectl: the credential lacks permission to read model %s's YAML (HTTP 403), "
        .. "which the policy check needs; --no-check resets without the check\n", escape(model)))
      return
    end
  end
end

-- The model's UUID once a name given to --model was found (kept by the
-- client: no request), else what was given when it is a UUID.
local function model_id_of(ctx)
  local given = ctx.args.model
  if given:match(UUID) then return given end
  local client = ctx.client()
  local ok, model = pcall(client.find_model, client, given)
  return ok and type(model) == "table" and model.id or nil
end

-- The one item of a failed lookup of --model NAME, when every result
-- carries its error: the lookup found none or several, or it failed and
-- nothing was sent after it (`ctx.attempted`, from the events).
local function lookup_failure(ctx, results, ms)
  local first = results[1] and results[1].err
  if ctx.args.model:match(UUID) or type(first) ~= "table" then return nil end
  local attempted = ctx.attempted
  if not (first.field == "model" or (attempted.list_models and not attempted.model_yaml
                                     and not attempted.reset_cache)) then
    return nil
  end
  for _, r in ipairs(results) do
    if r.err ~= first then return nil end
  end
  return { item("find_model", format("omni %s --model %s", ctx.action.name, show(ctx.args.model)), nil, first, ms) }
end

--- An Omni reset of one or more policies, checked unless --no-check; a
-- model name is looked up by the client (after the options are checked).
function M.reset(ctx)
  local a, policies, client = ctx.action, ctx.args.policy, ctx.client()
  local per = call_options(ctx)
  local checked = not ctx.args.no_check
  if checked then per.check_policy = true end     -- off by default in the library
  if #policies > 1 then
    ctx.progress(format("resetting %d policies of model %s...\n", #policies, show(ctx.args.model)))
  end
  local results, err, ms = timed(ctx.sys.clock, client.reset_caches, client, ctx.args.model, policies, per)
  if not results then
    results = {}
    for i, p in ipairs(policies) do results[i] = { policy = p, err = err } end
  end
  local failed = lookup_failure(ctx, results, ms)
  if failed then return failed end
  local model_id = model_id_of(ctx)
  local items = {}
  for i, p in ipairs(policies) do
    local r = results[i]
    -- The batch runs concurrently: each item reports the whole batch's time.
    items[i] = item(a.call, format("omni %s %s", a.name, show(p)), r.result, r.err, ms,
      { checked = checked, fields = { policy = p, model_id = model_id } })
  end
  permission_hint(ctx, items, model_id or ctx.args.model)
  return items
end

--- The model list.
function M.models(ctx)
  local client = ctx.client()
  local res, err, ms = timed(ctx.sys.clock, client.models, client, { name = ctx.args.name })
  return { item("models", "omni models", res, err, ms, {
    describe = function(models)
      local n = #models
      return format("%d model%s", n, n == 1 and "" or "s") .. (n > 0 and "\n" .. output.model_lines(models) or "")
    end,
    json = list,
  }) }
end

-- An attribute's value as printed: plain values as they are, anything
-- else (a table) as JSON; escaped either way.
local function attribute(v)
  if type(v) == "table" then
    local ok, text = pcall(cjson.encode, v)
    v = ok and text or "(a value that is not JSON)"
  end
  return escape(v)
end

local function policy_lines(policies)
  local lines = {}
  for _, p in ipairs(policies) do
    local keys, attrs = {}, {}
    for k in pairs(p) do
      if k ~= "name" then keys[#keys + 1] = tostring(k) end
    end
    sort(keys)
    for _, k in ipairs(keys) do attrs[#attrs + 1] = escape(k) .. ": " .. attribute(p[k]) end
    local mark = p.name == policies.default and "  (default)" or ""
    lines[#lines + 1] = format("  %-16s %s%s", show(p.name), concat(attrs, "; "), mark)
  end
  return concat(lines, "\n")
end

local function policies_json(policies)
  local out = {}
  for i, p in ipairs(policies) do out[i] = p end
  local default = policies.default
  if default == nil then default = cjson.null end
  return { policies = list(out), default = default }
end

--- A model's declared cache policies.
function M.policies(ctx)
  local client = ctx.client()
  local res, err, ms = timed(ctx.sys.clock, client.cache_policies, client, ctx.args.model)
  if not res then
    local failed = lookup_failure(ctx, { { err = err } }, ms)
    if failed then return failed end
  end
  local model_id = model_id_of(ctx)
  if not res and type(err) == "table" and err.status == 403 then
    ctx.later(format("cachectl: the credential lacks permission to read model %s's YAML (HTTP 403)\n",
      escape(model_id or ctx.args.model)))
  end
  return { item("cache_policies", "omni policies " .. show(ctx.args.model), res, err, ms, {
    fields = { model_id = model_id },
    describe = function(policies)
      local n = #policies
      local head = format("%d cache polic%s", n, n == 1 and "y" or "ies")
      if policies.default then head = head .. ", default " .. show(policies.default) end
      return head .. (n > 0 and "\n" .. policy_lines(policies) or "")
    end,
    json = policies_json,
  }) }
end

-- ---- --dry-run ---------------------------------------------------------

-- The options of `call` a run would give the core: the client's that the
-- call takes (the rate limit aside: it shapes no request) and `own`.
local function core_options(ctx, call, own)
  local takes, opts = core.services[ctx.action.service].calls[call].options, {}
  for k, v in pairs(ctx.opts) do
    if takes[k] and k ~= "rate_limit" and k ~= "on_event" then opts[k] = v end
  end
  for k, v in pairs(own or {}) do opts[k] = v end
  return opts
end

-- One request of a dry run: its preview, or the invalid error that would
-- stop it (nothing would be sent for it). A model given by name shows as
-- `<id of model NAME>` in the URL.
local function preview(ctx, call, label, own, note)
  local name = own.model_id and not own.model_id:match(UUID) and own.model_id
  if name then own.model_id = NIL_UUID end
  local req, err = core.preview(ctx.action.service, call, core_options(ctx, call, own))
  if req and name then
    local url = req.url:gsub((NIL_UUID:gsub("%-", "%%-")), function() return "<id of model " .. show(name) .. ">" end)
    req.url = url
  end
  return { call = call, label = label, request = req, err = err, note = note }
end

local function dry_reset(ctx)
  local args, per, steps = ctx.args, call_options(ctx), {}
  if not args.model:match(UUID) then
    steps[1] = preview(ctx, "list_models", "the model named " .. show(args.model), { name = args.model },
      "and one more request per further page of the model list")
  end
  if not args.no_check then
    steps[#steps + 1] = preview(ctx, "model_yaml", "the policy check",
      { model_id = args.model, file_name = "model.yaml", fully_resolved = true })
  end
  for _, p in ipairs(args.policy) do
    local own = { model_id = args.model, policy = p }
    for k, v in pairs(per) do own[k] = v end
    steps[#steps + 1] = preview(ctx, "reset_cache", "policy " .. show(p), own)
  end
  return steps
end

local DRY = {
  call = function(ctx)
    return { preview(ctx, ctx.action.call, call_label(ctx), call_options(ctx)) }
  end,
  reset = dry_reset,
  models = function(ctx)
    return { preview(ctx, "list_models", "omni models", { name = ctx.args.name },
      "and one more request per further page") }
  end,
  policies = function(ctx)
    local steps = {}
    if not ctx.args.model:match(UUID) then
      steps[1] = preview(ctx, "list_models", "the model named " .. show(ctx.args.model), { name = ctx.args.model },
        "and one more request per further page of the model list")
    end
    steps[#steps + 1] = preview(ctx, "model_yaml", "omni policies " .. show(ctx.args.model),
      { model_id = ctx.args.model, file_name = "model.yaml", fully_resolved = true })
    return steps
  end,
}

--- The requests the action would send, as
-- `{ call, label, request = { method, url, headers, body } | nil, err, note }`
-- (a step whose options are invalid carries the error instead: it would
-- not be sent). Nothing is sent.
function M.dry_run(ctx)
  return DRY[ctx.action.run](ctx)
end

--- The human text of a dry run's steps.
function M.dry_text(steps)
  local out = {}
  for _, s in ipairs(steps) do
    local req = s.request
    if req then
      out[#out + 1] = format("# %s (%s)%s", s.label, s.call, s.note and (": " .. s.note) or "")
      out[#out + 1] = req.method .. " " .. escape(req.url)
      for _, h in ipairs(req.headers) do out[#out + 1] = escape(h) end
      if req.body then out[#out + 1] = "\n" .. escape(req.body) end
    else
      out[#out + 1] = format("# %s (%s): not sent: %s", s.label, s.call, output.err_line(s.err))
    end
    out[#out + 1] = ""
  end
  return "# dry run: nothing is sent\n" .. concat(out, "\n")
end

--- The --json document's fields of a dry run: `requests`, in order (each
-- `{ call, method, url, headers, body, note }` or `{ call, error }`).
function M.dry_json(steps)
  local reqs = {}
  for i, s in ipairs(steps) do
    local req = s.request
    if req then
      reqs[i] = { call = s.call, method = req.method, url = req.url, headers = req.headers, body = req.body,
                  note = s.note }
    else
      reqs[i] = { call = s.call, error = { kind = s.err.kind, message = s.err.message, field = s.err.field } }
    end
  end
  return reqs
end

return M
