--- The runners of the `cachectl` command's Omni actions of the Lua layer:
-- a reset (several policies, the policy check, a model given by name), the
-- model list and a model's policies, each through a client (`ctx.client()`).
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.omni

local ipairs, pairs, pcall, tostring, type = ipairs, pairs, pcall, tostring, type
local string, table = string, table
local format, concat, sort = string.format, table.concat, table.sort

local cjson = require "cjson"
local output = require "cachectl.cli.output"
local json = require "cachectl.cli.json"
local run = require "cachectl.cli.run"

local show, escape, list = output.show, output.escape, json.list
local timed, item, call_options, is_uuid = run.timed, run.item, run.call_options, run.is_uuid

local M = {}

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
-- client: no request), else what was given when it is a UUID; nil when no
-- lookup was made (the call failed before it).
local function model_id_of(ctx)
  local given = ctx.args.model
  if is_uuid(given) then return given end
  -- never a lookup of its own: only the one the call made, kept by the client
  if not ctx.attempted.list_models then return nil end
  local client = ctx.client()
  local ok, model = pcall(client.find_model, client, given)
  return ok and type(model) == "table" and model.id or nil
end

-- The one item of a failed lookup of --model NAME, when every result
-- carries its error: the lookup found none or several, or it failed and
-- nothing was sent after it (`ctx.attempted`, from the events).
local function lookup_failure(ctx, results, ms)
  local first = results[1] and results[1].err
  if is_uuid(ctx.args.model) or type(first) ~= "table" then return nil end
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

return M
