--- cachectl.policies: an Omni model file's cache policies, and the check of
-- a policy name against them.
--
-- The YAML is read by lyaml (Debian `lua-yaml`, the rock `lyaml`), never by
-- hand: `lyaml.load` gives the values (anchors, aliases, merge keys, quoting),
-- and the event stream of the same library's parser gives the order of the
-- names, which a Lua table loses. lyaml is loaded on first use only: without
-- it everything else in cachectl works.
--
-- @module cachectl.policies

local pcall, require, error, type, pairs, ipairs, tostring = pcall, require, error, type, pairs, ipairs, tostring
local sort, concat = table.sort, table.concat
local min, huge = math.min, math.huge
local format = string.format

local M = {}

local MISSING = "cachectl: %s needs the YAML library lyaml: install the Debian package lua-yaml "
  .. "or the rock lyaml (luarocks install lyaml)"

local lyaml, yaml

--- Loads lyaml, or raises naming the package to install.
-- @tparam string what the call that needs it, for the message
-- @raise when lyaml cannot be loaded
function M.need_yaml(what)
  if not lyaml then
    local ok, lib = pcall(require, "lyaml")
    local ok2, parser = pcall(require, "yaml")
    if not (ok and ok2 and type(lib) == "table" and type(parser) == "table") then
      error(format(MISSING, what), 0)
    end
    lyaml, yaml = lib, parser
  end
end

-- A collection being read: its keys in order, whether the next node is a key.
local function frame(ev)
  return { map = ev.type == "MAPPING_START", want_key = true, keys = {}, anchor = ev.anchor }
end

-- A node event inside `top`: records a key, or notes that its value begins.
-- Returns the value's key when the node is the value of that key.
local function node(top, ev)
  if not (top and top.map) then return nil end
  if top.want_key then
    top.want_key = false
    top.last = ev.type == "SCALAR" and ev.value or nil
    if top.last then top.keys[#top.keys + 1] = top.last end
    return nil
  end
  top.want_key = true
  return top.last
end

--- The names of the top-level `cache_policies` mapping in the order the file
-- gives them, from the parser's events (an alias to an anchored mapping
-- gives that mapping's names).
-- @tparam string text YAML
-- @treturn {string,...} the names (empty when there is no such mapping)
local function ordered_names(text)
  local next_event = yaml.parser(text)
  local stack, anchors, found = {}, {}, nil
  while not found do
    local ev = next_event()
    if not ev or ev.type == "DOCUMENT_END" or ev.type == "STREAM_END" then break end
    local t, top = ev.type, stack[#stack]
    if t == "MAPPING_START" or t == "SEQUENCE_START" or t == "SCALAR" or t == "ALIAS" then
      local key = node(top, ev)
      local policies = #stack == 1 and key == "cache_policies"
      if t == "ALIAS" and policies then found = anchors[ev.anchor] or {} end
      if t == "MAPPING_START" or t == "SEQUENCE_START" then
        stack[#stack + 1] = frame(ev)
        stack[#stack].policies = policies
      end
    elseif t == "MAPPING_END" or t == "SEQUENCE_END" then
      stack[#stack] = nil
      if top.anchor then anchors[top.anchor] = top.keys end
      if top.policies then found = top.keys end
    end
  end
  return found or {}
end

-- A value as a policy attribute: lyaml's null is no value.
local function value(v)
  if v == lyaml.null then return nil end
  return v
end

-- One policy: its name and the attributes the file gives it.
local function policy(name, attrs)
  local p = {}
  if type(attrs) == "table" and attrs ~= lyaml.null then
    for k, v in pairs(attrs) do
      if type(k) == "string" then p[k] = value(v) end
    end
  end
  p.name = name
  return p
end

--- The cache policies a model file declares.
-- @tparam string text the model file (YAML)
-- @treturn table `{ { name = "daily", max_cache_age = "24 hours",
-- filter_suggestions_must_obey_policy = true }, ..., default = "daily" }` in
-- the file's order (`default` from `default_cache_policy`, or nil); an empty
-- list when the file declares none
-- @treturn[2] nil
-- @treturn[2] string what is wrong: the text is not YAML (line and column,
-- never the text itself)
function M.parse(text)
  M.need_yaml("omni:cache_policies")
  local ok, doc = pcall(lyaml.load, text)
  if not ok then
    local line, col = tostring(doc):match("^(%d+):(%d+):")
    return nil, format("the model file is not valid YAML%s", line and format(" (line %s, column %s)", line, col) or "")
  end
  local out = {}
  if type(doc) ~= "table" or doc == lyaml.null then return out end
  local declared = doc.cache_policies
  if type(declared) == "table" and declared ~= lyaml.null then
    local by_name, seen, rest = {}, {}, {}
    for k, v in pairs(declared) do
      if k ~= "<<" and type(k) ~= "table" then by_name[tostring(k)] = v end
    end
    for _, name in ipairs(ordered_names(text)) do
      if by_name[name] ~= nil and not seen[name] then
        seen[name] = true
        out[#out + 1] = policy(name, by_name[name])
      end
    end
    -- names merged in from elsewhere (`<<: *other`): after the file's own
    for name in pairs(by_name) do
      if not seen[name] then rest[#rest + 1] = name end
    end
    sort(rest)
    for _, name in ipairs(rest) do out[#out + 1] = policy(name, by_name[name]) end
  end
  local default = value(doc.default_cache_policy)
  if default ~= nil and type(default) ~= "table" then out.default = tostring(default) end
  return out
end

--- The Levenshtein distance between two strings, or a number over `limit`
-- as soon as it must exceed it.
-- @tparam string a
-- @tparam string b
-- @tparam number limit
-- @treturn number
function M.distance(a, b, limit)
  if #a - #b > limit or #b - #a > limit then return limit + 1 end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur, best = { [0] = i }, i
    local ca = a:byte(i)
    for j = 1, #b do
      local cost = ca == b:byte(j) and 0 or 1
      cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
      if cur[j] < best then best = cur[j] end
    end
    if best > limit then return limit + 1 end
    prev = cur
  end
  return prev[#b]
end

--- The declared name nearest to `name`, within two edits; the first in the
-- file's order on a tie.
-- @tparam string name
-- @tparam table policies as `parse` returns them
-- @treturn string|nil
function M.nearest(name, policies)
  local best, best_d = nil, huge
  for _, p in ipairs(policies) do
    local d = M.distance(name, p.name, 2)
    if d <= 2 and d < best_d then best, best_d = p.name, d end
  end
  return best
end

--- Whether a model declares `name`; else the message that refuses it.
-- @tparam string name the policy name asked for
-- @tparam table policies as `parse` returns them
-- @tparam string model_id the model, for the message
-- @treturn boolean|nil true when declared
-- @treturn[2] string "no cache policy 'dialy' in model <id>; did you mean 'daily'? (known: daily, hourly)"
function M.check(name, policies, model_id)
  local known = {}
  for i, p in ipairs(policies) do
    if p.name == name then return true end
    known[i] = p.name
  end
  if #known == 0 then
    return nil, format("no cache policy '%s' in model %s: its model file declares none", name, model_id)
  end
  local near = M.nearest(name, policies)
  return nil, format("no cache policy '%s' in model %s%s (known: %s)", name, model_id,
    near and format("; did you mean '%s'?", near) or "", concat(known, ", "))
end

return M
