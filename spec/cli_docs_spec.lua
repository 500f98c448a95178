-- docs/cli.md and the command agree: every action (and the flags before
-- the service) has a "### cachectl ..." section, and the flags its --help
-- lists are the flags its table documents, plus the common tables
-- ("Common flags (every action)", "Common flags (<service> actions)").
local support = require "support.cli"
local helpers = require "support.helpers"
local parser = require "cachectl.cli.parser"

-- The flags of a help text's "Options:" section: "-v, --verbose", "--model <uuid|name>".
local function help_flags(text)
  local flags, inside = {}, false
  for line in (text .. "\n"):gmatch("(.-)\n") do
    if line == "Options:" then
      inside = true
    elseif inside and line == "" then
      break
    elseif inside then
      local column = line:match("^   (%-.-)%s%s") or line:match("^   (%-.*)$")
      if column then
        for flag in (" " .. column):gmatch("%s(%-%-?[%w][%w%-]*)") do flags[flag] = true end
      end
    end
  end
  return flags
end

-- section heading -> set of flags, from the tables of docs/cli.md: the
-- first cell of each row holds backticked flags, e.g. "`-v`, `--verbose`".
local function doc_sections(text)
  local sections, current = {}, nil
  for line in (text .. "\n"):gmatch("(.-)\n") do
    local heading = line:match("^### (.+)$")
    if heading then
      current = {}
      sections[heading] = current
    elseif line:match("^## ") then
      current = nil
    elseif current and line:match("^| `") then
      local cell = line:match("^| (.-) |")
      for code in cell:gmatch("`([^`]+)`") do
        local flag = code:match("^(%-%-?[%w][%w%-]*)")
        if flag then current[flag] = true end
      end
    end
  end
  return sections
end

local function union(...)
  local out = {}
  for _, set in ipairs{ ... } do
    for k in pairs(set or {}) do out[k] = true end
  end
  return out
end

local function sorted(set)
  local list = {}
  for k in pairs(set) do list[#list + 1] = k end
  table.sort(list)
  return list
end

describe("docs/cli.md #docs", function()
  local sections = doc_sections(assert(helpers.read_file("docs/cli.md")))

  it("has a section per action and none for an action that does not exist", function()
    local want = { ["cachectl"] = true }
    for _, a in ipairs(parser.actions()) do want["cachectl " .. a.service .. " " .. a.name] = true end
    local got = {}
    for heading in pairs(sections) do
      if heading:match("^cachectl") then got[heading] = true end
    end
    assert.same(sorted(want), sorted(got))
  end)

  it("documents the flags the command's --help lists before the service", function()
    local status, out = support.run({ "--help" })
    assert.equal(0, status)
    assert.same(sorted(help_flags(out)), sorted(sections["cachectl"]))
  end)

  for _, a in ipairs(parser.actions()) do
    local heading = "cachectl " .. a.service .. " " .. a.name
    it("documents exactly the flags of '" .. heading .. " --help'", function()
      local status, out = support.run({ a.service, a.name, "--help" })
      assert.equal(0, status)
      local listed = help_flags(out)
      assert.is_true(listed["--json"] and listed["--help"] and true or false, "the help was not parsed")
      local documented = union(sections[heading], sections["Common flags (every action)"],
        sections["Common flags (" .. a.service .. " actions)"])
      assert.same(sorted(listed), sorted(documented))
    end)
  end

  it("would notice a flag missing from the docs (the check is not empty)", function()
    local _, out = support.run({ "omni", "reset-cache", "--help" })
    local listed = help_flags(out)
    for _, flag in ipairs{ "--model", "--policy", "--no-check", "--reset-at", "--instance", "-v", "--verbose" } do
      assert.is_true(listed[flag], flag)
    end
    assert.is_nil(sections["cachectl omni reset-cache"]["--instance"])
    assert.is_true(sections["Common flags (omni actions)"]["--instance"])
  end)
end)
