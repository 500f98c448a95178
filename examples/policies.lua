-- Lists an Omni model's cache policies, then resets one with the check on:
-- a policy the model does not declare (a typo) is refused, with the nearest
-- declared name, before anything is reset.
--   lua5.4 examples/policies.lua MODEL [POLICY]
-- MODEL is a UUID or a model name; POLICY defaults to the model's default.
-- Token from $OMNI_API_KEY; host from $OMNI_BASE_URL, or $OMNI_INSTANCE (acme -> https://acme.omniapp.co/api).
-- Exit status: 0 reset, 1 failure from the service or network, 2 refused.
local cachectl = require "cachectl"

local model, policy = arg[1] or "Sales", arg[2]
local instance = os.getenv("OMNI_INSTANCE")
local omni = cachectl.omni.new{ instance = instance ~= "" and instance or nil, check_policy = true }

local function fail(what, err)
  io.stderr:write(what, ": ", tostring(err), "\n")
  os.exit(err.kind == "invalid" and 2 or 1)
end

-- A name rather than a UUID: find the model by name.
if not model:match("^%x+%-%x+%-%x+%-%x+%-%x+$") then
  local found, err = omni:models{ name = model }
  if not found then fail("models", err) end
  if #found ~= 1 then
    io.stderr:write(("%d models are named %q"):format(#found, model), "\n")
    for _, m in ipairs(found) do io.stderr:write("  ", m.id, " ", m.modelKind, "\n") end
    os.exit(2)
  end
  model = found[1].id
end

local policies, err = omni:cache_policies(model)
if not policies then fail("cache_policies", err) end
print(("model %s declares %d cache policies (default: %s)"):format(model, #policies, policies.default or "none"))
for _, p in ipairs(policies) do
  local line = ("  %-16s max_cache_age: %-10s%s"):format(p.name, tostring(p.max_cache_age or "-"),
    p.filter_suggestions_must_obey_policy and "  filter suggestions obey it" or "")
  print((line:gsub("%s+$", "")))
end

policy = policy or policies.default
local res, rerr = omni:reset_cache(model, policy)   -- checked against the list above (kept 60 s)
if not res then fail("reset_cache " .. tostring(policy), rerr) end
print(("reset_cache %s: reset at %s"):format(policy, res.cache_reset.reset_at))
omni:close()
