-- The shape of the C core, checked: every file says what it owns in a
-- header comment, neither the includes nor the calls between the files go
-- in a circle (each file compiled alone, its symbols read with nm), and no
-- function runs past a screen.
local helpers = require "support.helpers"

local SRC = "src/"
local MAX_LINES = 60

local function files(pattern)
  local out = {}
  local p = assert(io.popen("ls " .. SRC .. " 2>/dev/null"))
  for name in p:lines() do
    if name:match(pattern) then out[#out + 1] = name end
  end
  p:close()
  table.sort(out)
  return out
end

-- A cycle in graph (node -> list of nodes) as "a -> b -> a", or nil.
local function cycle(graph)
  local state, path = {}, {}
  local function visit(n)
    if state[n] == "done" then return nil end
    if state[n] == "open" then
      local from
      for i, m in ipairs(path) do
        if m == n then from = i end
      end
      return table.concat(path, " -> ", from) .. " -> " .. n
    end
    state[n] = "open"
    path[#path + 1] = n
    for _, m in ipairs(graph[n] or {}) do
      local found = visit(m)
      if found then return found end
    end
    path[#path] = nil
    state[n] = "done"
    return nil
  end
  local names = {}
  for n in pairs(graph) do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do
    local found = visit(n)
    if found then return found end
  end
  return nil
end

describe("the C core's layout #lint", function()
  local sources = files("%.[ch]$")

  it("has a header comment naming each file and what it owns", function()
    assert.is_true(#sources > 10)
    for _, name in ipairs(sources) do
      local text = helpers.read_file(SRC .. name)
      assert.matches("^/%* " .. name:gsub("%.", "%%.") .. " — %S", text, nil, false, name)
    end
  end)

  it("includes its own headers without a circle", function()
    local graph = {}
    for _, name in ipairs(sources) do
      graph[name] = {}
      for inc in helpers.read_file(SRC .. name):gmatch('\n#include "([^"]+)"') do
        table.insert(graph[name], inc)
      end
    end
    assert.is_nil(cycle(graph))
    -- the check can fail: a header including the file that includes it
    graph["buf.h"] = { "cachectl.h" }
    assert.is_not_nil(cycle(graph))
  end)

  it("calls between its files without a circle (the clock and the buffer are leaves)", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(helpers.succeeds("mkdir " .. helpers.sh_quote(dir)))
    local defined, wanted = {}, {}
    for _, name in ipairs(files("%.c$")) do
      local unit = name:gsub("%.c$", "")
      local obj = dir .. "/" .. unit .. ".o"
      -- env -u LD_PRELOAD: under the ASan pass the compiler must not get the runtime
      assert(helpers.succeeds("env -u LD_PRELOAD cc -std=c99 -D_GNU_SOURCE -I/usr/include/lua5.4 -c " .. SRC .. name
        .. " -o " .. helpers.sh_quote(obj)), "cannot compile " .. name)
      wanted[unit] = {}
      local nm = assert(io.popen("env -u LD_PRELOAD nm " .. helpers.sh_quote(obj)))
      for line in nm:lines() do
        local kind, sym = line:match("^%x*%s+(%a)%s+(%S+)$")
        if kind == "U" then
          wanted[unit][#wanted[unit] + 1] = sym
        elseif kind and kind:match("[TDRB]") then
          defined[sym] = unit
        end
      end
      nm:close()
      os.remove(obj)
    end
    os.remove(dir)
    local graph = {}
    for unit, syms in pairs(wanted) do
      local seen = {}
      graph[unit] = {}
      for _, sym in ipairs(syms) do
        local to = defined[sym]
        if to and to ~= unit and not seen[to] then
          seen[to] = true
          table.insert(graph[unit], to)
        end
      end
      table.sort(graph[unit])
    end
    assert.is_nil(cycle(graph))
    assert.same({}, graph.clock)
    assert.same({}, graph.buf)
    assert.same({}, graph.digest)
  end)

  it("keeps every function under " .. MAX_LINES .. " lines", function()
    local long = {}
    for _, name in ipairs(files("%.c$")) do
      local n, start, head = 0, nil, nil
      for line in (helpers.read_file(SRC .. name) .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        if line == "{" then
          start = n
        elseif line == "}" and start then
          if n - start + 1 > MAX_LINES then long[#long + 1] = name .. ":" .. start .. " " .. head end
          start = nil
        elseif not start and line:match("^%a") then
          head = line
        end
      end
    end
    assert.same({}, long)
  end)

  it("keeps every Lua function of the layer under " .. MAX_LINES .. " lines", function()
    local long, checked = {}, 0
    local p = assert(io.popen("find lua mock/lua -name '*.lua'"))
    for path in p:lines() do
      local n, open = 0, {}
      for line in (helpers.read_file(path) .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        local indent = line:match("^(%s*)local function ") or line:match("^(%s*)function ")
          or (line:match("= function%(.*%)%s*$") and line:match("^(%s*)"))
        if indent then
          open[#open + 1] = { indent = indent, start = n, head = line }
          checked = checked + 1
        elseif #open > 0 and line == open[#open].indent .. "end" then
          local f = table.remove(open)
          if n - f.start + 1 > MAX_LINES then long[#long + 1] = path .. ":" .. f.start .. " " .. f.head end
        end
      end
    end
    p:close()
    assert.is_true(checked > 100)
    assert.same({}, long)
  end)
end)
