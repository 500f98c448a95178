-- Clears a ModelsLab Enterprise queue: the 3D product unless a product is given.
--   lua5.4 examples/clear_queue.lua [product]
local cachectl = require "cachectl"

local ml = cachectl.modelslab.new()
local res, err = ml:clear_queue{ product = arg[1] or "3d" }
ml:close()
if not res then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
print(("clear_queue %s: %s (%s)"):format(arg[1] or "3d", res.status, res.message))
