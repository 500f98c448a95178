-- Resets Omni cache policies of a model, concurrently.
--   lua5.4 examples/reset_cache.lua MODEL_UUID policy [policy ...]
-- Token from $OMNI_API_KEY; host from $OMNI_BASE_URL, or $OMNI_INSTANCE (acme -> https://acme.omniapp.co/api).
local cachectl = require "cachectl"

local model = arg[1] or "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
local policies = { table.unpack(arg, 2) }
if #policies == 0 then policies = { "daily", "hourly" } end

local instance = os.getenv("OMNI_INSTANCE")
local omni = cachectl.omni.new{ instance = instance ~= "" and instance or nil }

local failed = 0
for _, item in ipairs(omni:reset_caches(model, policies)) do
  if item.err then
    failed = failed + 1
    print(("reset_cache %s: %s"):format(item.policy, tostring(item.err)))
  else
    print(("reset_cache %s: reset at %s"):format(item.policy, item.result.cache_reset.reset_at))
  end
end
omni:close()
os.exit(failed == 0 and 0 or 1)
