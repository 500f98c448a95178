-- Policies adversary: an adversarial pass over the reading of Omni model
-- files and the policy check now in the C core (src/policies.c,
-- core.model_policies and core.policy_check; src/yaml.c), held to the
-- contract (API.md "Omni models and cache policies", "Bad input"; STYLE.md
-- "programmer errors raise with the argument's name, like luaL_argerror";
-- lua/cachectl/core.luadoc). Each DEFECT test is a reproduction of one
-- defect, written from the contract; the comment above it says what it got
-- before the fix; the tests without DEFECT hold what held.
local helpers = require "support.helpers"
local core = require "cachectl.core"

local UUID = helpers.UUID
local DOC = "cache_policies: {daily: {max_cache_age: 24 hours}, hourly: {}}\ndefault_cache_policy: daily\n"

-- The message of the error `fn` raises (it must raise).
local function raised(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "did not raise")
  return tostring(err)
end

describe("policies adversary: the arguments of core.model_policies", function()
  -- Contract: "A programming mistake raises a Lua error that names the
  -- option" (API.md, Bad input); STYLE.md: "programmer errors raise with the
  -- argument's name, like luaL_argerror". Got: model_policies calls the
  -- reader through lua_call, so every argument error named no function
  -- ("bad argument #2 to '?' (table expected, got number)") and a limit of
  -- the wrong type named neither the limit nor the argument ("bad argument
  -- #-1 to '?' (number expected, got string)"; LuaJIT: "#6").
  it("DEFECT: a wrong argument or limit raises naming model_policies and the limit, not '?' or #-1", function()
    local function call_limits(limits) return function() core.model_policies(DOC, limits) end end
    for _, fn in ipairs{ call_limits(5), call_limits("depth"),
                         function() core.model_policies(DOC, nil, "soon") end,
                         function() core.model_policies(DOC, nil, 1, 5) end } do
      local message = raised(fn)
      assert.matches("model_policies", message, 1, true)
      assert.not_matches("'?'", message, 1, true)
    end
    local message = raised(call_limits{ depth = "deep" })
    assert.matches("model_policies", message, 1, true)
    assert.matches("'depth'", message, 1, true)
    assert.not_matches("#-1", message, 1, true)
    assert.matches("'keys'", raised(call_limits{ keys = {} }), 1, true)
  end)

  -- Contract: "Every numeric option outside its documented range (...,
  -- limits, ...) is invalid or raises naming the option" (API.md, Fine
  -- points), and an unknown option name is "caught as a typo instead of
  -- being ignored" (Bad input). Got: a negative or NaN limit was taken as
  -- 0 (every document then refused as "nesting deeper than 0 levels", the
  -- caller's mistake reported as the server's), and a misspelt limit
  -- (`event = 10`) was ignored: the document read with the default.
  it("DEFECT: a negative or NaN limit, or an unknown one, raises naming it", function()
    for _, case in ipairs{ { { depth = -1 }, "'depth'" }, { { nodes = 0 / 0 }, "'nodes'" },
                           { { event = 10 }, "'event'" }, { { key_byte = 1 }, "'key_byte'" },
                           { { [1] = 5 }, "number" } } do
      local message = raised(function() core.model_policies(DOC, case[1]) end)
      assert.matches("model_policies", message, 1, true)
      assert.matches(case[2], message, 1, true)
    end
  end)

  it("limits of 0, fractions and huge values are taken as they are (0 lets nothing through)", function()
    local list, why, reason = core.model_policies(DOC, { depth = 0 })
    assert.is_nil(list)
    assert.equal("nesting deeper than 0 levels (the depth limit)", why)
    assert.equal("limit", reason)
    why = select(2, core.model_policies(DOC, { keys = 1.9 }))
    assert.equal("a mapping has more than 1 keys (the keys limit)", why)
    list = assert(core.model_policies(DOC, { depth = 1 / 0, events = 2 ^ 80, nodes = 1e300, keys = 3,
                                             key_bytes = 2 ^ 62 }))
    assert.same({ "daily", "hourly" }, { list[1].name, list[2].name })
    assert.equal("daily", list.default)
  end)
end)

describe("policies adversary: the arguments of core.policy_check", function()
  -- Contract: policy_check takes `policies` "as model_policies returns
  -- them" (core.luadoc); a programming mistake raises naming the argument
  -- (API.md, Bad input). Got: a list with a hole or an item that is not a
  -- table raised Lua's own "attempt to index a nil value" (or "a boolean
  -- value"), naming nothing; and a policy named by a number (never a name
  -- model_policies gives) was compared as text in the suggestion but not in
  -- the match: "no cache policy '1' in model ...; did you mean '1'? (known: 1)".
  it("DEFECT: an item that is not a policy raises naming the argument; a number is not a name", function()
    for _, policies in ipairs{ { { name = "b" }, false }, { 5 }, { "daily" } } do
      local message = raised(function() core.policy_check("a", policies, UUID) end)
      assert.matches("policy_check", message, 1, true)
      assert.matches("#2", message, 1, true)
    end
    for _, name in ipairs{ 1, 2 ^ 53 } do
      local message = raised(function() core.policy_check(tostring(name), { { name = name } }, UUID) end)
      assert.matches("policy_check", message, 1, true)
      assert.matches("a policy without a name", message, 1, true)
    end
  end)

  it("holds: a match before a bad item, metatables, a raising __index, no policies", function()
    assert.is_true(core.policy_check("a", { { name = "a" }, false }, UUID))
    assert.is_true(core.policy_check("a", { setmetatable({}, { __index = function() return "a" end }) }, UUID))
    local guarded = setmetatable({}, { __len = function() error("never asked") end,
                                      __index = function() error("never asked") end })
    assert.equal("no cache policy 'a' in model " .. UUID .. ": its model file declares none",
      select(2, core.policy_check("a", guarded, UUID)))
    assert.error_matches(function()
      core.policy_check("a", { setmetatable({}, { __index = function() error("from __index") end }) }, UUID)
    end, "from __index")
    for _, args in ipairs{ { nil, {}, UUID }, { "a", nil, UUID }, { "a", {}, nil }, { "a", 5, UUID } } do
      assert.matches("policy_check", raised(function() core.policy_check(args[1], args[2], args[3]) end), 1, true)
    end
  end)
end)
