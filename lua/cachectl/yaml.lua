--- cachectl.yaml: a YAML document read within limits, for text a server sent.
--
-- lyaml's `load` builds the whole document with no bound: merge keys copied
-- without limit, aliases shared (a billion laughs), anchors that contain
-- their own alias (a cycle), deep nesting read in quadratic time, and any
-- failure, out-of-memory included, raised as a parse error. Here the events
-- of the same library's parser (its C part, `yaml.parser`) are read one by
-- one and the document is built from them, counting as it goes: nesting
-- depth, events, nodes with every alias and merge key expanded, keys per
-- mapping and bytes per key. Past a limit the reading stops at once, so
-- memory and time stay bounded by the limits (and by a deadline).
--
-- Scalars are resolved like lyaml does (its `lyaml.implicit` and
-- `lyaml.explicit` rules: `true`, `1`, `1.5`, `~` ...), except that a value
-- that is not a finite number stays text, and so does a plain scalar on
-- which one of lyaml's rules raises (`01_`, `0b1_`); a tagged one (`!!int
-- 01_`) is refused as not what its tag says. The document is built of
-- private nodes, read with the functions below; nothing in it is cyclic.
--
-- @module cachectl.yaml

local require, error, pcall, type, tostring, setmetatable, getmetatable =
  require, error, pcall, type, tostring, setmetatable, getmetatable
local format = string.format
local huge = math.huge

local M = {}

--- The limits of a document (documented in docs/lua.md).
M.LIMITS = {
  depth = 64,        -- nested mappings and sequences, aliases expanded
  events = 100000,   -- events of the parser
  nodes = 100000,    -- nodes, every alias and merge key expanded
  keys = 10000,      -- keys of one mapping, merged ones included
  key_bytes = 1024,  -- bytes of one key
}

--- The value of a null scalar (`~`, `null`, an empty value).
M.null = setmetatable({}, { __tostring = function() return "null" end })
local NULL = M.null

local TAG = "tag:yaml.org,2002:"
local parser, implicit, explicit, lyaml_null

-- lyaml's parser and its scalar rules, loaded on first use.
local function load_lyaml()
  if parser then return end
  local functional, imp, exp = require "lyaml.functional", require "lyaml.implicit", require "lyaml.explicit"
  implicit = { imp.null, imp.octal, imp.decimal, imp.float, imp.bool, imp.inf, imp.nan,
    imp.hexadecimal, imp.binary, imp.sexagesimal, imp.sexfloat }
  explicit = { [TAG .. "bool"] = exp.bool, [TAG .. "float"] = exp.float, [TAG .. "int"] = exp.int,
    [TAG .. "null"] = exp.null, [TAG .. "str"] = exp.str }
  lyaml_null = functional.NULL
  parser = require("yaml").parser
end

-- A refusal: raised inside `read`, returned by `load`.
local Refusal = {}

local function refuse(reason, message, ...)
  error(setmetatable({ reason = reason, message = format(message, ...) }, Refusal), 0)
end

-- ------------------------------------------------------------ nodes

-- A mapping: { own = {key, ...}, merged = {key, ...}, values = {[slot] = value},
-- from_merge = {[slot] = true}, count, n, h }; a sequence: { items = {...}, n, h }.
-- n: nodes with aliases expanded; h: height (1 for an empty collection).

local function is_mapping(v) return type(v) == "table" and v.values ~= nil end
local function is_sequence(v) return type(v) == "table" and v.items ~= nil end
M.is_mapping, M.is_sequence = is_mapping, is_sequence

local function nodes_of(v) return type(v) == "table" and v.n or 1 end
local function height_of(v) return type(v) == "table" and v.h or 0 end

-- The table key a mapping key is kept under: a string as itself, any
-- other scalar under a form no YAML text spells by accident.
local function slot(key)
  if type(key) == "string" then return key end
  if key == NULL then return "\0null" end
  return "\0" .. type(key) .. "\0" .. tostring(key)
end

--- The value of `key` in a mapping, or nil.
function M.get(map, key)
  return map.values[slot(key)]
end

--- The keys and values of a mapping: its own keys in the document's order,
-- then the keys merge keys brought in (in their mapping's order).
-- @usage for key, value in yaml.each(map) do ... end
function M.each(map)
  local list, i = map.own, 0
  return function()
    while true do
      i = i + 1
      local key = list[i]
      if key == nil then
        if list == map.merged then return nil end
        list, i = map.merged, 1
        key = list[1]
        if key == nil then return nil end
      end
      local s = slot(key)
      if list == map.own or map.from_merge[s] then return key, map.values[s] end
    end
  end
end

--- The items of a sequence, in order.
function M.items(seq)
  return seq.items
end

-- ------------------------------------------------------------ building

local function grow(c, v)
  c.n = c.n + nodes_of(v)
  if height_of(v) + 1 > c.h then c.h = height_of(v) + 1 end
end

local function new_key(map, limits, key, merged)
  map.count = map.count + 1
  if map.count > limits.keys then refuse("limit", "a mapping has more than %d keys (the keys limit)", limits.keys) end
  local list = merged and map.merged or map.own
  list[#list + 1] = key
end

-- key: value, written in the mapping (a later one replaces an earlier one,
-- and any value a merge key brought in).
local function set(map, limits, key, value)
  local s = slot(key)
  if map.values[s] == nil then
    new_key(map, limits, key, false)
  elseif map.from_merge[s] then
    map.from_merge[s] = nil
    map.own[#map.own + 1] = key
  end
  map.values[s] = value
  grow(map, value)
end

-- `<<: value`: the keys of a mapping, or of a sequence of mappings (the
-- first one wins), that the mapping does not have yet.
local function merge(map, limits, value)
  local sources = is_mapping(value) and { value } or is_sequence(value) and value.items
  if not sources then refuse("shape", "a merge key (<<) whose value is not a mapping or a list of mappings") end
  for i = 1, #sources do
    local src = sources[i]
    if not is_mapping(src) then refuse("shape", "a merge key (<<) whose list holds something else than mappings") end
    for key, v in M.each(src) do
      local s = slot(key)
      if map.values[s] == nil then
        new_key(map, limits, key, true)
        map.values[s], map.from_merge[s] = v, true
        grow(map, v)
      end
    end
  end
end

-- A rule of lyaml's applied to a scalar's text: its value, or nil when the
-- rule does not take the text. Some of lyaml's rules raise on texts they
-- half match (`01_`, `0b1_`, `-` and 400 digits, `1:00:` and 400 digits:
-- arithmetic on a nil): that is no value either. Running out of memory is
-- raised on (`load` reports it).
local function apply(rule, text)
  local ok, v = pcall(rule, text)
  if ok then return v end
  if tostring(v):find("not enough memory", 1, true) then error(v, 0) end
  return nil
end

-- A scalar event's value, resolved like lyaml does; a plain scalar no rule
-- takes stays text.
local function scalar(ev)
  local text, tag = ev.value, ev.tag
  local rule = tag and explicit[tag]
  local v
  if rule then
    v = apply(rule, text)
    if v == nil then refuse("shape", "a scalar tagged %s that is not one", tag:sub(#TAG + 1)) end
  elseif ev.style == "PLAIN" then
    for i = 1, #implicit do             -- the first rule that takes it (lyaml's anyof)
      v = apply(implicit[i], text)
      if v ~= nil then break end
    end
    if v == nil then v = text end
  else
    v = text
  end
  if v == lyaml_null then return NULL end
  if type(v) == "number" and not (v > -huge and v < huge) then return text end
  return v
end

local function is_merge_key(ev)
  return ev.tag == TAG .. "merge" or (ev.tag == nil and ev.style == "PLAIN" and ev.value == "<<")
end

-- Puts a complete value into the collection at the top of the stack (or
-- makes it the document).
local function put(st, value, merge_key)
  local top = st.stack[#st.stack]
  if not top then
    st.root = value
  elseif top.items then
    top.items[#top.items + 1] = value
    grow(top, value)
  elseif not top.has_key then
    if type(value) == "table" and value ~= NULL then
      refuse("shape", "a mapping key that is a mapping or a sequence")
    end
    if type(value) == "string" and #value > st.limits.key_bytes then
      refuse("limit", "a key longer than %d bytes (the key_bytes limit)", st.limits.key_bytes)
    end
    top.has_key, top.key, top.merging = true, value, merge_key
  else
    top.has_key = false
    if top.merging then merge(top, st.limits, value) else set(top, st.limits, top.key, value) end
    top.n = top.n + 1                              -- the key
  end
end

local function count_nodes(st, n)
  st.nodes = st.nodes + n
  if st.nodes > st.limits.nodes then
    refuse("limit", "more than %d nodes with aliases and merge keys expanded (the nodes limit)", st.limits.nodes)
  end
end

local function deeper(st, extra)
  if #st.stack + extra > st.limits.depth then
    refuse("limit", "nesting deeper than %d levels (the depth limit)", st.limits.depth)
  end
end

local function start(st, ev)
  count_nodes(st, 1)
  deeper(st, 1)
  local c = ev.type == "MAPPING_START"
    and { own = {}, merged = {}, values = {}, from_merge = {}, count = 0, n = 1, h = 1 }
    or { items = {}, n = 1, h = 1 }
  if ev.anchor then
    c.anchor = ev.anchor
    st.open[ev.anchor] = (st.open[ev.anchor] or 0) + 1
  end
  st.stack[#st.stack + 1] = c
end

local function finish(st)
  local c = st.stack[#st.stack]
  st.stack[#st.stack] = nil
  if c.anchor then
    st.open[c.anchor] = st.open[c.anchor] - 1
    st.anchors[c.anchor], c.anchor = c, nil
  end
  c.has_key, c.key, c.merging = nil, nil, nil
  put(st, c)
end

local function alias(st, ev)
  local name = ev.anchor
  if (st.open[name] or 0) > 0 then refuse("shape", "an alias inside the node it names (a cycle)") end
  local v = st.anchors[name]
  if v == nil then refuse("shape", "an alias to no anchor before it") end
  count_nodes(st, nodes_of(v))
  deeper(st, height_of(v))
  put(st, v)
end

local HANDLERS = {
  SCALAR = function(st, ev)
    count_nodes(st, 1)
    local v = scalar(ev)
    if ev.anchor then st.anchors[ev.anchor] = v end
    put(st, v, is_merge_key(ev))
  end,
  ALIAS = alias,
  MAPPING_START = start,
  SEQUENCE_START = start,
  MAPPING_END = finish,
  SEQUENCE_END = finish,
  DOCUMENT_START = function(st)
    st.documents = st.documents + 1
    if st.documents > 1 then refuse("shape", "more than one YAML document") end
  end,
}

local function read(text, limits, clock, deadline)
  local next_event = parser(text)
  local st = { stack = {}, anchors = {}, open = {}, nodes = 0, documents = 0, limits = limits }
  local events = 0
  while true do
    local ev = next_event()
    if ev == nil or ev.type == "STREAM_END" then break end
    events = events + 1
    if events > limits.events then refuse("limit", "more than %d events (the events limit)", limits.events) end
    if deadline and events % 512 == 0 and clock() > deadline then
      refuse("timeout", "reading the YAML took longer than the call's timeout")
    end
    local handler = HANDLERS[ev.type]
    if handler then handler(st, ev) end
  end
  return st.root
end

--- Reads a YAML document within limits.
-- @tparam string text the YAML
-- @tparam[opt] table opts `deadline` (a `clock()` time past which reading
-- stops), `clock` (seconds; default the core's monotonic clock), `limits` (default
-- `M.LIMITS`)
-- @return the document (`M.null` for an empty one)
-- @treturn[2] nil
-- @treturn[2] string what is wrong, never the text itself: the limit passed,
-- the shape refused, or where the text is not YAML
-- @treturn[2] string why: "limit", "shape", "syntax", "memory" or "timeout"
function M.load(text, opts)
  load_lyaml()
  opts = opts or {}
  local clock = opts.clock or (opts.deadline and require("cachectl.core").monotonic)
  local ok, doc = pcall(read, text, opts.limits or M.LIMITS, clock, opts.deadline)
  if ok then
    if doc == nil then return NULL end
    return doc
  end
  if getmetatable(doc) == Refusal then return nil, doc.message, doc.reason end
  local msg = tostring(doc)
  if msg:find("not enough memory", 1, true) or msg:find("^A problem at document") then
    -- a Lua allocation failed, or libyaml's (its only error without a problem)
    return nil, "not enough memory to read the YAML", "memory"
  end
  if not msg:find(" at document: %d") then error(doc, 0) end  -- not the parser's: a bug, raised
  local problem = msg:match("^(.-) at document:") or "?"
  local line, col = msg:match("line: (%d+), column: (%d+)")
  return nil, format("not valid YAML%s: %s", line and format(" (line %s, column %s)", line, col) or "", problem),
    "syntax"
end

return M
