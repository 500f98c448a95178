--- JSON for the mock server: lua-cjson, plus arrays that stay arrays when empty.
--
-- lua-cjson encodes an empty Lua table as `{}`. Tables made with `json.array`
-- always encode as JSON arrays: natively where the cjson build has `array_mt`
-- (OpenResty's), otherwise through a placeholder swapped for `[]` after encoding.
-- @module cachectl.mock.json

local pairs, pcall, setmetatable, getmetatable, type, next =
  pairs, pcall, setmetatable, getmetatable, type, next

local cjson = require "cjson"

local codec = cjson.new()   -- its own settings, whatever others set on cjson

local json = { null = cjson.null }

local NATIVE = cjson.array_mt ~= nil
local ARRAY = cjson.array_mt or {}
local EMPTY = "\0cachectl-mock-empty-array\0"
local EMPTY_ENCODED = '"\\u0000cachectl%-mock%-empty%-array\\u0000"'

--- Marks `t` (default a new table) as a JSON array.
-- @return t
function json.array(t)
  return setmetatable(t or {}, ARRAY)
end

-- A copy of `v` with every empty array replaced by the placeholder.
local function mark_empty(v)
  if type(v) ~= "table" then return v end
  if getmetatable(v) == ARRAY and next(v) == nil then return EMPTY end
  local out = {}
  for k, x in pairs(v) do out[k] = mark_empty(x) end
  return out
end

--- Encodes a value; raises on what JSON cannot hold.
-- @return JSON text
function json.encode(v)
  if NATIVE then return codec.encode(v) end
  local s = codec.encode(mark_empty(v))
  return (s:gsub(EMPTY_ENCODED, "[]"))
end

--- Decodes JSON text.
-- @return the value, or nil and lua-cjson's message when `s` is not JSON
function json.decode(s)
  local ok, v = pcall(codec.decode, s)
  if ok then return v end
  return nil, v
end

--- The text as a decoded JSON object.
-- @return a table, or nil when `s` is not a JSON object
function json.object(s)
  if type(s) ~= "string" or not s:match("^%s*{") then return nil end
  local v = json.decode(s)
  if type(v) == "table" then return v end
end

return json
