--- The documentation's code samples, run: every ```lua and ```sh block of
-- README.md and docs/*.md runs against a real cachectl-mock, and a block
-- followed by an ```output block must print that output. Run it with
-- `make docs-check` (part of `make test`); plain `busted` leaves it out (see
-- .busted), since it runs every sample as a process of its own.
--
-- The convention (written for authors in docs/README.md, "Code samples"):
--   ```lua / ```sh (or ```bash)  runnable: a fresh `lua5.4` process, or `bash`
--                                with `set -e -o pipefail`, from the checkout's
--                                root; it must exit 0.
--   ```lua norun / ```sh norun   not run (real vendor hosts, nginx, other
--                                machines): Lua is compiled with Lua 5.4's
--                                `load`, sh is checked with `bash -n`.
--   ```output                    right after a runnable block (blank lines
--                                between allowed): its stdout, compared line
--                                by line after dropping trailing white space
--                                and leading/trailing blank lines; `...` alone
--                                on a line stands for any number of lines,
--                                `...` inside a line for any text, `<uuid>` for
--                                a UUID, `<n>` for a number.
--   any other language           ignored (```nginx, ```json, ```yaml, ```text).
-- Each runnable block gets MODELSLAB_API_KEY, OMNI_API_KEY, MODELSLAB_BASE_URL
-- and OMNI_BASE_URL (the mock's /api), CACHECTL_MOCK_URL (the mock's root, for
-- its control API), LUA_PATH/LUA_CPATH to lua/ and build/5.4, and bin/ first
-- in PATH; the mock is reset before each block. `DOCS_PAGES="docs/lua.md"`
-- limits the run to some pages. The pages' relative links (and #anchors)
-- must lead somewhere, and README.md must link every page of docs/.
local io, os, string, table = io, os, string, table
local assert, ipairs, load, pairs, error, tonumber, tostring =
  assert, ipairs, load, pairs, error, tonumber, tostring

local helpers = require "support.helpers"
local server = require "support.mock_server"

local sh_quote, read_file, write_file = helpers.sh_quote, helpers.read_file, helpers.write_file

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local ROOT = capture("pwd"):gsub("%s+$", "")

-- Pages: README.md and docs/*.md, or the ones $DOCS_PAGES names.
local function pages()
  local list = {}
  local wanted = os.getenv("DOCS_PAGES")
  local names = wanted and wanted ~= "" and wanted
    or "README.md\n" .. capture("ls docs/*.md 2>/dev/null")
  for name in names:gmatch("%S+") do list[#list + 1] = name end
  return list
end

-- A fence's opening line: its indentation, backticks and info string.
local function fence(line)
  local indent, ticks, info = line:match("^( *)(```+)%s*(.-)%s*$")
  if indent and #indent <= 3 + 8 and not info:find("`", 1, true) then
    return indent, ticks, info
  end
end

--- The fenced blocks of a markdown text, in order: { lang, flags, code, line,
-- after } where `after` is true when only blank lines separate the block
-- from the block before it; and the text outside the blocks.
local function blocks_of(text)
  local out, open, gap_only, prose = {}, nil, false, {}
  local n = 0
  for line in (text .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    if open then
      local indent, ticks, info = fence(line)
      if indent and info == "" and #ticks >= #open.ticks then
        open.code = table.concat(open.lines, "\n") .. "\n"
        out[#out + 1], open, gap_only = open, nil, true
      else
        open.lines[#open.lines + 1] = line:sub(1, #open.indent) == open.indent
          and line:sub(#open.indent + 1) or line:gsub("^ +", "")
      end
    else
      local indent, ticks, info = fence(line)
      if indent then
        local words = {}
        for w in info:gmatch("%S+") do words[#words + 1] = w end
        open = { indent = indent, ticks = ticks, lang = (words[1] or ""):lower(),
                 flags = { table.unpack(words, 2) }, lines = {}, line = n, after = gap_only }
      else
        prose[#prose + 1] = line
        if line:find("%S") then gap_only = false end
      end
    end
  end
  assert(not open, "a code block opened at line " .. (open and open.line or 0) .. " is never closed")
  return out, table.concat(prose, "\n")
end

local RUNNABLE = { lua = "lua", sh = "sh", bash = "sh" }

--- The samples of a page: { kind = "lua"|"sh", run = bool, code, line,
-- output = expected text or nil }. Raises on a misplaced ```output or an
-- unknown flag.
local function samples_of(page, text)
  local list, prev = {}, nil   -- prev: the sample an ```output may follow
  for _, b in ipairs(blocks_of(text)) do
    local where = page .. ":" .. b.line
    if b.lang == "output" then
      if not (b.after and prev and prev.run and not prev.output) then
        error(where .. ": an ```output block must follow a runnable ```lua or ```sh block")
      end
      prev.output, prev = b.code, nil
    elseif RUNNABLE[b.lang] then
      local run = true
      for _, flag in ipairs(b.flags) do
        if flag ~= "norun" then error(where .. ": unknown marker '" .. flag .. "' (only 'norun')") end
        run = false
      end
      prev = { kind = RUNNABLE[b.lang], run = run, code = b.code, line = b.line, where = where }
      list[#list + 1] = prev
    else
      prev = nil
    end
  end
  return list
end

-- One expected line as an anchored Lua pattern.
local UUID = ("%x"):rep(8) .. ("%-" .. ("%x"):rep(4)):rep(3) .. "%-" .. ("%x"):rep(12)
local function line_pattern(line)
  local p = line:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
  p = p:gsub("%%%.%%%.%%%.", function() return ".-" end)
  p = p:gsub("<uuid>", function() return UUID end)
  p = p:gsub("<n>", function() return "%-?%d+%.?%d*" end)
  return "^" .. p .. "$"
end

-- Lines without trailing white space, without leading or trailing blank lines.
local function lines_of(text)
  local out = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do out[#out + 1] = (line:gsub("%s+$", "")) end
  while out[1] == "" do table.remove(out, 1) end
  while out[#out] == "" do out[#out] = nil end
  return out
end

--- Whether `actual` (a program's stdout) matches `expected` (an ```output
-- block) under the rules above.
local function output_matches(expected, actual)
  local e, a = lines_of(expected), lines_of(actual)
  local function from(i, j)
    if i > #e then return j > #a end
    if e[i] == "..." then
      for k = j, #a + 1 do
        if from(i + 1, k) then return true end
      end
      return false
    end
    return j <= #a and a[j]:find(line_pattern(e[i])) ~= nil and from(i + 1, j + 1)
  end
  return from(1, 1)
end

-- The environment of a runnable block, as `env` arguments.
local function environment(srv)
  local lpath = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua;" .. ROOT .. "/mock/lua/?.lua;" .. ROOT
    .. "/mock/lua/?/init.lua;;"
  local cpath = ROOT .. "/build/5.4/?.so;;"
  local vars = {
    MODELSLAB_API_KEY = "demo-modelslab-key", OMNI_API_KEY = "demo-omni-token",
    MODELSLAB_BASE_URL = srv.base, OMNI_BASE_URL = srv.base, CACHECTL_MOCK_URL = srv.url,
    LUA_PATH = lpath, LUA_PATH_5_4 = lpath, LUA_CPATH = cpath, LUA_CPATH_5_4 = cpath,
    PATH = ROOT .. "/bin:" .. os.getenv("PATH"), NO_PROXY = "127.0.0.1,localhost,::1",
  }
  local parts = { "env" }
  for _, name in ipairs{ "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                         "all_proxy", "CACHECTL_REDIS_URL", "OMNI_INSTANCE", "LUA_INIT", "LUA_INIT_5_4" } do
    parts[#parts + 1] = "-u " .. name
  end
  local names = {}
  for name in pairs(vars) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do parts[#parts + 1] = name .. "=" .. sh_quote(vars[name]) end
  return table.concat(parts, " ")
end

-- Runs a sample in its own process group (timeout makes one); processes it
-- leaves running are stopped by that group's id and reported.
local RUNNER = [[
cd "$1" && shift
dir=$1 && shift
"$@" >"$dir/out" 2>"$dir/err" &
pid=$!
wait $pid
status=$?
if kill -0 -- -$pid 2>/dev/null; then
  kill -TERM -- -$pid 2>/dev/null
  echo "the sample left processes running (stopped now)" >>"$dir/err"
  status=99
fi
echo $status
]]

--- Runs one runnable sample; returns status, stdout, stderr.
local function run(sample, env)
  local dir = capture("mktemp -d"):gsub("%s+$", "")
  local file = dir .. (sample.kind == "lua" and "/sample.lua" or "/sample.sh")
  write_file(file, sample.code)
  write_file(dir .. "/run.sh", RUNNER)
  local interp = sample.kind == "lua" and "lua5.4" or "bash -e -o pipefail"
  local status = capture(string.format("bash %s/run.sh %s %s %s timeout 60 %s %s", dir,
    sh_quote(ROOT), dir, env, interp, sh_quote(file)))
  local out, err = read_file(dir .. "/out"), read_file(dir .. "/err")
  os.execute("rm -rf " .. sh_quote(dir))
  return tonumber(status), out, err
end

--- Checks a sample that is not run: Lua compiles (Lua 5.4), sh parses.
local function compile(sample)
  if sample.kind == "lua" then
    local ok, msg = load(sample.code, "=" .. sample.where)
    return ok ~= nil, msg
  end
  local file = os.tmpname()
  write_file(file, sample.code)
  local out = capture("bash -n " .. sh_quote(file) .. " 2>&1; echo $?")
  os.remove(file)
  return out:match("(%d+)%s*$") == "0", out
end

--- The anchors of a page's headings, as GitHub makes them: lower case,
-- punctuation dropped, spaces as hyphens, "-1", "-2" for repeats.
local function anchors_of(text)
  local out, seen = {}, {}
  local _, prose = blocks_of(text)
  for heading in ("\n" .. prose):gmatch("\n#+ +([^\n]+)") do
    heading = heading:gsub("%s+#*%s*$", "")
    local slug = heading:lower():gsub("[^%w%- _]", ""):gsub(" ", "-")
    if seen[slug] then
      seen[slug] = seen[slug] + 1
      slug = slug .. "-" .. seen[slug]
    else
      seen[slug] = 0
    end
    out[slug] = true
  end
  return out
end

local function indent(text)
  return "    " .. (text or ""):gsub("\n", "\n    ")
end

describe("the documentation's samples #docs", function()
  assert(_VERSION == "Lua 5.4", "docs_spec compiles samples as Lua 5.4: run it with busted --lua=lua5.4")
  local srv, env
  setup(function()
    srv = server.start()
    env = environment(srv)
  end)
  teardown(function() if srv then srv:stop() end end)

  it("come from README.md and the pages of docs/", function()
    assert.is_true(#pages() >= 1)
    for _, page in ipairs(pages()) do assert.is_truthy(read_file(page), page .. " cannot be read") end
  end)

  for _, page in ipairs(pages()) do
    local text = read_file(page) or ""
    for _, sample in ipairs(samples_of(page, text)) do
      local label = sample.where .. " (" .. sample.kind .. (sample.run and "" or " norun") .. ")"
      it(label, function()
        if not sample.run then
          local ok, msg = compile(sample)
          assert(ok, sample.where .. ": does not compile:\n" .. indent(msg))
          return
        end
        srv:reset()
        local status, out, err = run(sample, env)
        assert(status == 0, string.format("%s: exited with status %s\n  stdout:\n%s\n  stderr:\n%s",
          sample.where, tostring(status), indent(out), indent(err)))
        if sample.output then
          assert(output_matches(sample.output, out), string.format(
            "%s: the output differs\n  expected:\n%s\n  got:\n%s\n  stderr:\n%s",
            sample.where, indent(sample.output), indent(out), indent(err)))
        end
      end)
    end
  end
end)

describe("the docs' pages #docs", function()
  it("are all linked from README.md", function()
    local readme = read_file("README.md")
    for name in capture("ls docs/*.md 2>/dev/null"):gmatch("%S+") do
      assert(readme:find("(" .. name .. ")", 1, true) or readme:find("(" .. name .. "#", 1, true),
        "README.md does not link " .. name)
    end
  end)

  it("link only to files and headings that exist", function()
    local broken = {}
    for _, page in ipairs(pages()) do
      local dir = page:match("^(.*)/") or "."
      local _, text = blocks_of(read_file(page))
      for target in text:gsub("`[^`]*`", ""):gmatch("%]%(([^)%s]+)%)") do
        local path, anchor = target:match("^([^#]*)#?(.*)$")
        if not path:find("^%a[%w+.-]*:") then
          local file = path == "" and page or dir .. "/" .. path
          local linked = read_file(file)
          if not linked and capture("test -d " .. sh_quote(file) .. " && echo dir") == "" then
            broken[#broken + 1] = page .. " links to a missing file: " .. target
          elseif anchor ~= "" and file:find("%.md$") and not anchors_of(linked)[anchor] then
            broken[#broken + 1] = page .. " links to a missing heading: " .. target
          end
        end
      end
    end
    assert(#broken == 0, table.concat(broken, "\n"))
  end)
end)

describe("the output comparison #docs", function()
  it("ignores trailing spaces and blank lines around, and nothing else", function()
    assert.is_true(output_matches("a\nb\n", "\na  \nb\n\n"))
    assert.is_false(output_matches("a\nb\n", "a\nc\n"))
    assert.is_false(output_matches("a\n", "a\nb\n"))
    assert.is_false(output_matches("a\nb\n", " a\nb\n"))
  end)

  it("takes ..., <uuid> and <n> as placeholders", function()
    assert.is_true(output_matches("x ... z", "x anything at all z"))
    assert.is_true(output_matches("a\n...\nd", "a\nb\nc\nd"))
    assert.is_true(output_matches("a\n...\nb", "a\nb"))
    assert.is_false(output_matches("a\n...\nd", "a\nb\nc"))
    assert.is_true(output_matches("id <uuid> in <n> ms", "id 3f2504e0-4f89-41d3-9a0c-0305e82c3301 in 12.5 ms"))
    assert.is_false(output_matches("id <uuid>", "id 3f2504e0"))
    assert.is_false(output_matches("(<n>)", "(x)"))
    assert.is_true(output_matches("100% (a.b) [c]", "100% (a.b) [c]"))
  end)

  it("finds blocks, their markers and their outputs", function()
    local s = samples_of("t.md", "text\n```lua\nprint(1)\n```\n\n```output\n1\n```\n"
      .. "  ```sh norun\n  echo x\n  ```\n```nginx\nx;\n```\n")
    assert.equal(2, #s)
    assert.same({ "lua", true, "print(1)\n", "1\n" }, { s[1].kind, s[1].run, s[1].code, s[1].output })
    assert.same({ "sh", false, "echo x\n" }, { s[2].kind, s[2].run, s[2].code })
    assert.has_error(function() samples_of("t.md", "```json\n{}\n```\n```output\nx\n```\n") end)
    assert.has_error(function() samples_of("t.md", "```lua\nx()\n```\nprose\n```output\nx\n```\n") end)
    assert.has_error(function() samples_of("t.md", "```lua skip\nx()\n```\n") end)
  end)
end)

describe("the heading anchors #docs", function()
  it("are made the way GitHub makes them", function()
    local a = anchors_of("# A b\ntext # not a heading\n## The reference (LDoc)\n### `cachectl` omni models\n"
      .. "## A b\n```sh\n# a comment, not a heading\n```\n")
    assert.same({ ["a-b"] = true, ["the-reference-ldoc"] = true, ["cachectl-omni-models"] = true,
                  ["a-b-1"] = true }, a)
  end)
end)
