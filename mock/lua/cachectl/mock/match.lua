--- Matching names without backtracking: the path globs of fault rules and of
-- the request filter, and the simple regular expressions of Omni's
-- `fileName`. Both take time linear in the text for a given glob or
-- expression (a glob: one left-to-right pass per segment; an expression: a
-- set of NFA states advanced once per byte), so no request can make the
-- server spin, whatever it sends.
-- @module cachectl.mock.match

local ipairs = ipairs

local match = {}

-- The segments of a path: "/a/b" -> { "", "a", "b" }.
local function segments(path)
  local out, from = {}, 1
  while true do
    local slash = path:find("/", from, true)
    if not slash then
      out[#out + 1] = path:sub(from)
      return out
    end
    out[#out + 1] = path:sub(from, slash - 1)
    from = slash + 1
  end
end

-- A matcher of one segment of a glob, `*` standing for any run of bytes:
-- the literal pieces between stars are found left to right, each at its
-- first place after the one before (leftmost is always right for `*` alone).
local function segment_matcher(glob)
  if not glob:find("*", 1, true) then
    return function(s) return s == glob end
  end
  local pieces = {}
  for piece in (glob .. "*"):gmatch("([^*]*)%*") do pieces[#pieces + 1] = piece end
  local first, last = pieces[1], pieces[#pieces]
  return function(s)
    if #s < #first + #last or s:sub(1, #first) ~= first or s:sub(#s - #last + 1) ~= last then
      return false
    end
    local at, stop = #first + 1, #s - #last
    for i = 2, #pieces - 1 do
      local p = pieces[i]
      if p ~= "" then
        local found = s:find(p, at, true)
        if not found or found + #p - 1 > stop then return false end
        at = found + #p
      end
    end
    return true
  end
end

--- A matcher of a path glob against the end of a path: the glob starts with
-- `/` and has N segments; it matches when the last N segments of the path
-- match it, `*` standing for any run of characters but `/`, everything else
-- for itself. So "/v1/models" matches "/api/v1/models", not "/api/xv1/models".
-- Time linear in the path, whatever the glob and the path hold.
-- @param glob the glob (starts with "/")
-- @return function(path) -> boolean
function match.path_glob(glob)
  local parts = segments(glob)
  for i, part in ipairs(parts) do parts[i] = segment_matcher(part) end
  local n = #parts
  return function(path)
    local got = segments(path)
    if #got < n then return false end
    local offset = #got - n
    -- the glob's first segment is the empty one before its leading '/'
    for i = 2, n do
      if not parts[i](got[offset + i]) then return false end
    end
    return true
  end
end

-- ---- simple regular expressions ---------------------------------------

local CLASSES = {
  d = "0-9", w = "A-Za-z0-9_", s = " \t\r\n\f\v",
}

-- Adds the bytes of a class body ("a-z0-9_") to a set.
local function add_range(set, body)
  local i = 1
  while i <= #body do
    local a, b = body:byte(i), body:byte(i + 2)
    if body:sub(i + 1, i + 1) == "-" and b then
      for x = a, b do set[x] = true end
      i = i + 3
    else
      set[a] = true
      i = i + 1
    end
  end
end

-- A bracket expression starting at re[i] == "[": the set, negated?, the index after "]"; nil if unterminated.
local function bracket(re, i)
  local set, negate = {}, false
  i = i + 1
  if re:sub(i, i) == "^" then negate, i = true, i + 1 end
  local first = true
  while i <= #re do
    local ch = re:sub(i, i)
    if ch == "]" and not first then return set, negate, i + 1 end
    first = false
    if ch == "\\" and i < #re then
      local e = re:sub(i + 1, i + 1)
      add_range(set, CLASSES[e] or e)
      i = i + 2
    elseif re:sub(i + 1, i + 1) == "-" and i + 2 <= #re and re:sub(i + 2, i + 2) ~= "]" then
      add_range(set, re:sub(i, i + 2))
      i = i + 3
    else
      set[ch:byte()] = true
      i = i + 1
    end
  end
  return nil
end

-- The next atom of `re` at i: a test of one byte (a set, or true for any), the index after it.
local function atom(re, i)
  local ch = re:sub(i, i)
  if ch == "." then return true, i + 1 end
  if ch == "[" then
    local set, negate, after = bracket(re, i)
    if not set then return nil end
    if negate then
      local inverse = {}
      for b = 0, 255 do inverse[b] = not set[b] or nil end
      set = inverse
    end
    return set, after
  end
  local set = {}
  if ch == "\\" and i < #re then
    local e = re:sub(i + 1, i + 1)
    add_range(set, CLASSES[e] or e)
    return set, i + 2
  end
  set[ch:byte()] = true
  return set, i + 1
end

-- Compiles `re` to a list of steps { test, rep } (rep: nil, "*" or "?"; "x+" is "x" then "x*").
local function compile(re)
  if re:find("[|(){}]") then return nil end
  local steps, i = {}, 1
  local anchored_start = re:sub(1, 1) == "^"
  if anchored_start then i = 2 end
  local anchored_end = #re >= i and re:sub(-1) == "$" and re:sub(-2, -2) ~= "\\"
  local stop = anchored_end and #re - 1 or #re
  local body = re:sub(1, stop)
  while i <= stop do
    local test, after = atom(body, i)
    if not test then return nil end
    local q = body:sub(after, after)
    if after <= stop and (q == "*" or q == "?") then
      steps[#steps + 1] = { test = test, rep = q }
      after = after + 1
    elseif after <= stop and q == "+" then
      steps[#steps + 1] = { test = test }
      steps[#steps + 1] = { test = test, rep = "*" }
      after = after + 1
    else
      steps[#steps + 1] = { test = test }
    end
    i = after
  end
  return { steps = steps, start = anchored_start, finish = anchored_end }
end

-- Adds state k and what it reaches without reading (past optional steps) to `set`.
local function add_state(steps, set, list, k)
  while not set[k] do
    set[k] = true
    list[#list + 1] = k
    local step = steps[k]
    if not step or not step.rep then return end
    k = k + 1
  end
end

local function accepts(steps, test_of, s, start, finish)
  local n = #steps
  local set, list = {}, {}
  add_state(steps, set, list, 1)
  for pos = 1, #s + 1 do
    if set[n + 1] and not finish then return true end
    if pos > #s then break end
    local b = s:byte(pos)
    local nset, nlist = {}, {}
    for _, k in ipairs(list) do
      local step = steps[k]
      if step and test_of(step.test, b) then
        if step.rep == "*" then add_state(steps, nset, nlist, k) end
        add_state(steps, nset, nlist, k + 1)
      end
    end
    if not start then add_state(steps, nset, nlist, 1) end
    set, list = nset, nlist
  end
  return set[n + 1] == true
end

local function test_of(test, b)
  return test == true or test[b] == true
end

--- A matcher of a simple regular expression: `.`, `*`, `+`, `?`, `[...]`
-- (ranges, `^` negation), `\d` `\w` `\s`, `\x` for a literal x, `^` at the
-- start and `$` at the end as anchors; found anywhere in the text unless
-- anchored. Runs in time O(#text * #re), without backtracking.
-- @param re the expression
-- @return function(text) -> boolean; or nil for what it cannot say (`|`, groups, counts, an open `[`)
function match.regex(re)
  local compiled = compile(re)
  if not compiled then return nil end
  local steps, start, finish = compiled.steps, compiled.start, compiled.finish
  return function(s) return accepts(steps, test_of, s, start, finish) end
end

return match
