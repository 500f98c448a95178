--- cachectl.yaml: a YAML document read within limits, for text a server sent.
--
-- The C core reads it (`core.yaml_load`, src/yaml.c, with libyaml): nesting
-- depth, events, nodes with every alias and merge key expanded, keys per
-- mapping and bytes per key are counted as it goes, and past a limit (or the
-- deadline) the reading stops at once. Scalars are resolved like lyaml's
-- rules (`true`, `1`, `1.5`, `~` ...); a value that is not a finite number
-- stays text. The document is built of private nodes, read with the
-- functions below; nothing in it is cyclic.
--
-- @module cachectl.yaml

local type, require = type, require
local core = require "cachectl.core"
local slot = core.yaml_slot

local M = {}

--- The limits of a document (documented in docs/lua.md): `depth`, `events`,
-- `nodes`, `keys`, `key_bytes`.
M.LIMITS = core.yaml_limits

--- The value of a null scalar (`~`, `null`, an empty value).
M.null = core.yaml_null

--- Whether a value is a mapping.
function M.is_mapping(v) return type(v) == "table" and v.values ~= nil end

--- Whether a value is a sequence.
function M.is_sequence(v) return type(v) == "table" and v.items ~= nil end

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

--- Reads a YAML document within limits.
-- @tparam string text the YAML
-- @tparam[opt] table opts `deadline` (a `clock()` time past which reading
-- stops), `clock` (seconds; default the core's monotonic clock), `limits`
-- (those to change from `M.LIMITS`)
-- @return the document (`M.null` for an empty one)
-- @treturn[2] nil
-- @treturn[2] string what is wrong, never the text itself: the limit passed,
-- the shape refused, or where the text is not YAML
-- @treturn[2] string why: "limit", "shape", "syntax", "memory" or "timeout"
function M.load(text, opts)
  opts = opts or {}
  return core.yaml_load(text, opts.limits, opts.deadline, opts.clock)
end

return M
