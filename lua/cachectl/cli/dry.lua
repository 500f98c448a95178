--- The `cachectl` command's --dry-run: the requests an action would send,
-- built by `core.preview` from the same options a run would use, with
-- `***` where the credential goes. Nothing is sent.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.dry

local ipairs, pairs = ipairs, pairs
local string, table = string, table
local format, concat = string.format, table.concat

local core = require "cachectl.core"
local output = require "cachectl.cli.output"
local run = require "cachectl.cli.run"

local show, escape = output.show, output.escape
local call_options, call_label, is_uuid = run.call_options, run.call_label, run.is_uuid
local NIL_UUID = "00000000-0000-0000-0000-000000000000"
-- The page size the Lua layer asks the model list for (omni:models and
-- find_model, `PAGE_SIZE` in cachectl/init.lua): the URL shown is the one sent.
local PAGE_SIZE = 100

local M = {}

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
  local name = own.model_id and not is_uuid(own.model_id) and own.model_id
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
  if not is_uuid(args.model) then
    steps[1] = preview(ctx, "list_models", "the model named " .. show(args.model),
      { name = args.model, page_size = PAGE_SIZE },
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
    return { preview(ctx, "list_models", "omni models", { name = ctx.args.name, page_size = PAGE_SIZE },
      "and one more request per further page") }
  end,
  policies = function(ctx)
    local steps = {}
    if not is_uuid(ctx.args.model) then
      steps[1] = preview(ctx, "list_models", "the model named " .. show(ctx.args.model),
        { name = ctx.args.model, page_size = PAGE_SIZE },
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
function M.steps(ctx)
  return DRY[ctx.action.run](ctx)
end

--- The human text of a dry run's steps.
function M.text(steps)
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
function M.json(steps)
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
