-- Clears the ModelsLab user cache.
-- Key from $MODELSLAB_API_KEY, base URL from $MODELSLAB_BASE_URL (default https://modelslab.com/api).
local cachectl = require "cachectl"

local ml = cachectl.modelslab.new()
local res, err = ml:clear_cache()
ml:close()
if not res then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
print(("clear_cache: %s (%s)"):format(res.status, res.message))
