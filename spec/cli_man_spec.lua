-- The command's man page and completion scripts come from the parser that
-- prints --help: the committed page is what `make man` writes now, each
-- command's section lists the flags its --help lists, and `cachectl
-- completion bash|zsh|fish` prints scripts that load (bash: `bash -n`,
-- then `complete -p cachectl` once sourced).
local support = require "support.cli"
local helpers = require "support.helpers"
local parser = require "cachectl.cli.parser"
local man = require "cachectl.cli.man"

local PAGE = "docs/man/man1/cachectl.1"

-- The shells and man run without LD_PRELOAD: under `make spec-asan`
-- LeakSanitizer would report on them (they are not ours).
local CLEAN = "env -u LD_PRELOAD "

-- The flags of a help text's "Options:" section ("-v", "--verbose", "--model").
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
        for flag in (" " .. column):gmatch("%s(%-%-?[%w][%w%-]*)") do flags[#flags + 1] = flag end
      end
    end
  end
  table.sort(flags)
  return flags
end

-- The man page's sections as plain text, by command ("" for cachectl):
-- roff's escapes undone.
local function man_sections(roff)
  local sections, current = {}, nil
  for line in (roff .. "\n"):gmatch("(.-)\n") do
    local name = line:match('^%.SS "cachectl ?(.-)"$')
    if name then
      current = {}
      sections[name:gsub("\\%-", "-")] = current
    elseif line:match("^%.S[HS]") then
      current = nil
    elseif current and not line:match("^%.[nf][fi]$") then
      current[#current + 1] = (line:gsub("^\\&", ""):gsub("\\%-", "-"):gsub("\\e", "\\"))
    end
  end
  for k, v in pairs(sections) do sections[k] = table.concat(v, "\n") end
  return sections
end

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

describe("the man page", function()
  local committed = helpers.read_file(PAGE)

  it("is committed, and is what make man writes now", function()
    assert.is_string(committed)
    assert(committed == man.page(), PAGE .. " is stale: run make man")
  end)

  it("has a section per command, each listing the flags its --help lists", function()
    local sections = man_sections(committed)
    local argvs = { [""] = { "--help" }, modelslab = { "modelslab", "--help" }, omni = { "omni", "--help" },
                    completion = { "completion", "--help" } }
    for _, a in ipairs(parser.actions()) do argvs[a.service .. " " .. a.name] = { a.service, a.name, "--help" } end
    local n = 0
    for key, argv in pairs(argvs) do
      local status, out = support.run(argv, {})
      assert.equal(0, status)
      assert.is_string(sections[key], "no section for cachectl " .. key)
      local listed = help_flags(out)
      assert.is_true(#listed >= 1)
      assert.same(listed, help_flags(sections[key]), "cachectl " .. key)
      n = n + 1
    end
    local all = 0
    for _ in pairs(sections) do all = all + 1 end
    assert.equal(n, all)
  end)

  it("would notice a flag missing (the check is not empty)", function()
    local sections = man_sections(committed)
    local flags = help_flags(sections["modelslab restart-server"])
    for _, f in ipairs{ "--dry-run", "--yes", "-y", "--json", "--key-file", "--product" } do
      local found = false
      for _, g in ipairs(flags) do found = found or g == f end
      assert.is_true(found, f)
    end
  end)

  it("reads as a man page", function()
    if not helpers.succeeds("command -v man >/dev/null") then return pending("man is not installed") end
    local text = capture(CLEAN .. "MANWIDTH=100 man -l " .. helpers.sh_quote(PAGE) .. " 2>&1")
    assert.matches("NAME%s+cachectl %- clear ModelsLab caches", text)
    assert.matches("EXIT STATUS", text, 1, true)
    assert.matches("75%s+a temporary failure", text)
    assert.matches("OMNI_INSTANCE", text, 1, true)
    assert.is_nil(text:find("warning", 1, true))
  end)
end)

describe("cachectl completion", function()
  local function script(shell)
    local status, out, err = support.run({ "completion", shell }, {})
    assert.equal(0, status, err)
    return out
  end

  it("bash: parses, and once sourced completes cachectl", function()
    local file = os.tmpname()
    helpers.write_file(file, script("bash"))
    assert.is_true(helpers.succeeds(CLEAN .. "bash -n " .. helpers.sh_quote(file)))
    local out = capture(CLEAN .. "bash -c 'source " .. file .. " && complete -p cachectl' 2>&1")
    os.remove(file)
    assert.equal("complete -o bashdefault -o default -F _cachectl cachectl\n", out)
  end)

  it("bash: offers the services, the actions and an action's flags", function()
    local file = os.tmpname()
    helpers.write_file(file, script("bash"))
    local function complete(line)
      local words = {}
      for w in line:gmatch("%S+") do words[#words + 1] = w end
      if line:sub(-1) == " " then words[#words + 1] = "" end
      local quoted = {}
      for i, w in ipairs(words) do quoted[i] = helpers.sh_quote(w) end
      local array = table.concat(quoted, " "):gsub("'", "'\\''")
      return capture(CLEAN .. "bash -c 'source " .. file .. "; COMP_WORDS=(" .. array
        .. "); COMP_CWORD=" .. (#words - 1) .. "; _cachectl; printf \"%s\\n\" \"${COMPREPLY[@]}\"'")
    end
    local services = complete("cachectl ")
    local actions = complete("cachectl modelslab ")
    local flags = complete("cachectl modelslab restart-server --")
    local shells = complete("cachectl completion ")
    os.remove(file)
    assert.equal("bash\nzsh\nfish\n", shells)
    -- an action's own flags only: --version is cachectl's, and --help comes once
    assert.is_nil(flags:find("--version", 1, true))
    assert.equal(1, select(2, flags:gsub("%-%-help\n", "")))
    for _, w in ipairs{ "modelslab", "omni", "completion" } do assert.matches("\n?" .. w .. "\n", services) end
    assert.matches("restart%-server\n", actions)
    assert.matches("%-%-dry%-run\n", flags)
    assert.matches("%-%-yes\n", flags)
  end)

  it("zsh and fish: scripts for their shell, naming every action", function()
    local zsh, fish = script("zsh"), script("fish")
    assert.matches("^#compdef cachectl\n", zsh)
    assert.matches("complete %-c cachectl", fish)
    -- each command's own flags only (argparse adds those of the commands above)
    assert.is_nil(zsh:find("options=%(\n%s*%$options"))
    assert.is_nil(fish:find("\ncomplete %-c cachectl %-[sl]"))
    assert.is_nil(fish:find("seen_command [a-z]"))
    assert.matches("using_command completion' -xa 'bash zsh fish'", fish, 1, true)
    for _, a in ipairs(parser.actions()) do
      assert.matches(a.name, zsh, 1, true)
      assert.matches(a.name, fish, 1, true)
    end
    if helpers.succeeds("command -v zsh >/dev/null") then
      local file = os.tmpname()
      helpers.write_file(file, zsh)
      assert.is_true(helpers.succeeds(CLEAN .. "zsh -n " .. helpers.sh_quote(file)))
      os.remove(file)
    end
  end)

  it("an unknown shell is a usage error", function()
    local status, out, err = support.run({ "completion", "tcsh" }, {})
    assert.equal(2, status)
    assert.equal("", out)
    assert.matches("cachectl: error: ", err, 1, true)
  end)
end)
