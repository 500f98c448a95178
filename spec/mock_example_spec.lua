-- docs/mock.md shows examples/mock_usage_spec.lua as it is: the page's
-- complete example is the file that `make docs-check` runs (from the
-- checkout and against installed rocks).
local helpers = require "support.helpers"

describe("docs/mock.md's complete example #docs", function()
  it("is examples/mock_usage_spec.lua, line for line", function()
    local page = assert(helpers.read_file("docs/mock.md"))
    local shown = page:match("\n### The example\n.-\n```lua norun\n(.-)```\n")
    assert.is_string(shown, "no ```lua norun block under '### The example'")
    assert.equal(assert(helpers.read_file("examples/mock_usage_spec.lua")), shown)
  end)
end)
