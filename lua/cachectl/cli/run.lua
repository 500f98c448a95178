--- The runner of a plain call of the `cachectl` command (every action of
-- a call row but the Omni reset), and what the other runners share
-- (`cachectl.cli.omni`: the reset, the model list and the policies;
-- `cachectl.cli.dry`: --dry-run). A runner takes the context built by
-- `cachectl.cli` and returns the result items.
--
-- A plain call with nothing of the Lua layer to do (no --coalesce, no
-- --redis) goes straight to `cachectl.core`, timed by its own events (no
-- clock to load); the rest goes through a client of the Lua layer
-- (`ctx.client()`), loaded only then.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.run

local error, ipairs, pairs, pcall, tonumber, tostring, unpack =
  error, ipairs, pairs, pcall, tonumber, tostring, table.unpack or unpack
local table = table
local concat = table.concat

local core = require "cachectl.core"
local output = require "cachectl.cli.output"

local show = output.show

local M = {}

--- A model UUID, 8-4-4-4-12 hex digits (a pattern).
M.is_uuid = core.is_uuid     -- the core says what a model id is

--- Calls fn(...) and times it; a raised error (a bug) becomes an error
-- value, except Ctrl-C, which goes on up.
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
M.timed = timed

local function item(call, label, res, err, ms, extra)
  local it = { call = call, label = label, result = res, err = err, ok = res ~= nil, ms = ms }
  for k, v in pairs(extra or {}) do it[k] = v end
  return it
end
M.item = item

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
M.call_options = call_options

-- The label of a ModelsLab call: "modelslab clear-queue [flux, deploy_type x]".
local function call_label(ctx)
  local a, args = ctx.action, ctx.args
  local where = {}
  if args.no_product then where[1] = "no product" elseif args.product then where[1] = show(args.product) end
  if args.deploy_type then where[#where + 1] = "deploy_type " .. show(args.deploy_type) end
  return a.service .. " " .. a.name .. (#where > 0 and " [" .. concat(where, ", ") .. "]" or "")
end
M.call_label = call_label

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
    -- its time: its attempts and waits, one after another (from the events)
    res, err = timed(function() return 0 end, core[a.service][a.call], opts)
    ms = ctx.event_ms
  else
    local positional = {}
    for i, o in ipairs(a.row.args) do positional[i] = flag_value(args, o) end
    positional[#a.row.args + 1] = per
    local client = ctx.client()
    res, err, ms = timed(ctx.sys.clock, client[a.call], client, unpack(positional, 1, #a.row.args + 1))
  end
  return { item(a.call, call_label(ctx), res, err, ms, { fields = call_fields(args) }) }
end

return M
