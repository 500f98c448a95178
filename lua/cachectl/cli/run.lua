--- The runners of the `cachectl` command's actions: a plain call, an Omni
-- reset (several policies, the policy check, a model given by name), and
-- the model list and a model's policies. Each takes the context built by
-- `cachectl.cli` and returns the result items, or nil and a usage message.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.run

local error, ipairs, pairs, pcall, tonumber, tostring, type, unpack =
  error, ipairs, pairs, pcall, tonumber, tostring, type, table.unpack or unpack
local string, table = string, table
local format, concat, sort = string.format, table.concat, table.sort

local cjson = require "cjson"
local output = require "cachectl.cli.output"

local show, list = output.show, output.list

local M = {}

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

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

local function model_lines(models)
  local lines = {}
  for _, m in ipairs(models) do
    lines[#lines + 1] = format("  %s  %-16s %s", tostring(m.id), tostring(m.modelKind), show(m.name))
  end
  return concat(lines, "\n")
end

-- The UUID of --model: as given, or the one model of that name. Returns
-- id, name; or nil, a usage message; or nil, nil, the items of a failure.
local function resolve(ctx)
  local given = ctx.args.model
  if given:match(UUID) then return given end
  local client = ctx.client
  local models, err, ms = timed(ctx.sys.clock, client.models, client, { name = given })
  if not models then
    return nil, nil, { item("models", format("omni %s --model %s", ctx.action.name, show(given)), nil, err, ms) }
  end
  local exact = {}
  for _, m in ipairs(models) do
    if m.name == given then exact[#exact + 1] = m end
  end
  if #exact == 1 then return exact[1].id, given end
  if #exact > 1 then
    return nil, format("several models are named %s; give one of their ids with --model:\n%s",
      show(given), model_lines(exact))
  end
  if #models > 0 then
    return nil, format("no model is named %s; models with a similar name:\n%s", show(given), model_lines(models))
  end
  return nil, format("no model is named %s ('cachectl omni models' lists them)", show(given))
end

--- A call with no list argument: its flags as options, its row's positional
-- arguments from their flags.
function M.call(ctx)
  local a, args = ctx.action, ctx.args
  local positional = {}
  for i, o in ipairs(a.row.args) do positional[i] = flag_value(args, o) end
  local per = call_options(ctx)
  positional[#a.row.args + 1] = per
  local label = a.service .. " " .. a.name
  local where = {}
  if args.no_product then where[1] = "no product" elseif args.product then where[1] = args.product end
  if args.deploy_type then where[#where + 1] = "deploy_type " .. args.deploy_type end
  if #where > 0 then label = label .. " [" .. concat(where, ", ") .. "]" end
  local res, err, ms = timed(ctx.sys.clock, ctx.client[a.call], ctx.client, unpack(positional, 1, #a.row.args + 1))
  local fields = {}
  if args.no_product then fields.product = false elseif args.product then fields.product = args.product end
  fields.deploy_type = args.deploy_type
  return { item(a.call, label, res, err, ms, { fields = fields }) }
end

-- Said once after a reset whose policy check could not read the YAML.
local function permission_hint(ctx, items, model_id)
  if ctx.args.no_check or (ctx.yaml_status ~= nil and ctx.yaml_status ~= 403) then return end
  for _, it in ipairs(items) do
    if not it.ok and type(it.err) == "table" and it.err.status == 403 then
      ctx.later(format("cachectl: the credential lacks permission to read model %s's YAML (HTTP 403), "
        .. "which the policy check needs; --no-check resets without the check\n", model_id))
      return
    end
  end
end

--- An Omni reset of one or more policies, checked unless --no-check.
function M.reset(ctx)
  local model_id, usage, failed = resolve(ctx)
  if not model_id then return failed, usage end
  local a, client, policies = ctx.action, ctx.client, ctx.args.policy
  local per = call_options(ctx)
  local checked = not ctx.args.no_check
  if checked then per.check_policy = true end     -- off by default in the library
  local items = {}
  local function add(i, p, res, err, ms)
    items[i] = item(a.call, format("omni %s %s", a.name, show(p)), res, err, ms,
      { checked = checked, fields = { policy = p, model_id = model_id } })
  end
  if #policies == 1 then
    add(1, policies[1], timed(ctx.sys.clock, client[a.call], client, model_id, policies[1], per))
  else
    ctx.progress(format("resetting %d policies of model %s...\n", #policies, show(ctx.args.model)))
    local results, err, ms = timed(ctx.sys.clock, client.reset_caches, client, model_id, policies, per)
    for i, p in ipairs(policies) do
      local r = results and results[i] or { err = err }
      -- The batch runs concurrently: each item reports the whole batch's time.
      add(i, p, r.result, r.err, ms)
    end
  end
  permission_hint(ctx, items, model_id)
  return items
end

--- The model list.
function M.models(ctx)
  local res, err, ms = timed(ctx.sys.clock, ctx.client.models, ctx.client, { name = ctx.args.name })
  return { item("models", "omni models", res, err, ms, {
    describe = function(models)
      local n = #models
      return format("%d model%s", n, n == 1 and "" or "s") .. (n > 0 and "\n" .. model_lines(models) or "")
    end,
    json = list,
  }) }
end

local function policy_lines(policies)
  local lines = {}
  for _, p in ipairs(policies) do
    local keys, attrs = {}, {}
    for k in pairs(p) do
      if k ~= "name" then keys[#keys + 1] = k end
    end
    sort(keys)
    for _, k in ipairs(keys) do attrs[#attrs + 1] = k .. ": " .. tostring(p[k]) end
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
  local model_id, usage, failed = resolve(ctx)
  if not model_id then return failed, usage end
  local res, err, ms = timed(ctx.sys.clock, ctx.client.cache_policies, ctx.client, model_id)
  if not res and type(err) == "table" and err.status == 403 then
    ctx.later(format("cachectl: the credential lacks permission to read model %s's YAML (HTTP 403)\n", model_id))
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

return M
