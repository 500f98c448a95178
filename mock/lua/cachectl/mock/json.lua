--- JSON for the mock server: lua-cjson, strict on what it reads, and arrays
-- that stay arrays when empty.
--
-- Decoding takes only JSON (RFC 8259): valid UTF-8; numbers as the grammar
-- writes them (no NaN, Infinity, hex, leading zeros, `1.` or `.5`) and finite
-- as doubles (no `1e400`); anything else is refused with a message naming the
-- problem, and the field for a number out of range. An empty JSON array
-- decodes to a table marked with `json.array`, so it encodes back as `[]`.
--
-- lua-cjson encodes an empty Lua table as `{}`. Tables made with `json.array`
-- always encode as JSON arrays: natively where the cjson build has `array_mt`
-- (OpenResty's), otherwise through a placeholder swapped for `[]` after encoding.
-- @module cachectl.mock.json

local math, os, string, table = math, os, string, table
local getmetatable, ipairs, next, pairs, pcall, setmetatable, tonumber, tostring, type =
  getmetatable, ipairs, next, pairs, pcall, setmetatable, tonumber, tostring, type

local cjson = require "cjson"
local util = require "cachectl.mock.util"

local codec = cjson.new()   -- its own settings, whatever others set on cjson
codec.decode_invalid_numbers(false)   -- NaN, Infinity, hex, leading zeros are not JSON
codec.encode_invalid_numbers(false)

local json = { null = cjson.null }

local NATIVE = cjson.array_mt ~= nil
local ARRAY = cjson.array_mt or {}
local EMPTY = "\0cachectl-mock-empty-array\0"
local EMPTY_ENCODED = '"\\u0000cachectl%-mock%-empty%-array\\u0000"'
-- What an empty array of the input becomes before lua-cjson reads it (unguessable,
-- so no input can forge it), and then, from the decoded value, a `json.array()`.
local MARK = string.format("\0cachectl-mock-[]-%x-%x\0", os.time(), math.floor((os.clock() % 1) * 1e9))
local MARK_ENCODED = '"' .. MARK:gsub("%z", "\\u0000") .. '"'

--- Marks `t` (default a new table) as a JSON array.
-- @return t
function json.array(t)
  return setmetatable(t or {}, ARRAY)
end

--- Whether `t` was marked with `json.array` (an empty JSON array decodes so).
function json.is_array(t)
  return getmetatable(t) == ARRAY
end

-- Whether `v` holds an empty marked array.
local function has_empty(v)
  if type(v) ~= "table" then return false end
  if getmetatable(v) == ARRAY and next(v) == nil then return true end
  for _, x in pairs(v) do
    if has_empty(x) then return true end
  end
  return false
end

-- A copy of `v` with every empty array replaced by the placeholder.
local function mark_empty(v)
  if type(v) ~= "table" then return v end
  if getmetatable(v) == ARRAY and next(v) == nil then return EMPTY end
  local out = {}
  for k, x in pairs(v) do out[k] = mark_empty(x) end
  return out
end

--- Encodes a value; raises on what JSON cannot hold (NaN, infinities, ...).
-- @return JSON text
function json.encode(v)
  if NATIVE or not has_empty(v) then return codec.encode(v) end
  local s = codec.encode(mark_empty(v))
  return (s:gsub(EMPTY_ENCODED, "[]"))
end

-- Whether a number token is one of RFC 8259's: -?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?
local function strict_number(t)
  local rest = t:match("^%-?0(.*)$") or t:match("^%-?[1-9]%d*(.*)$")
  if not rest then return false end
  if rest:sub(1, 1) == "." then rest = rest:match("^%.%d+(.*)$") end
  if rest and rest:find("^[eE]") then rest = rest:match("^[eE][%+%-]?%d+(.*)$") end
  return rest == ""
end

-- Skips the string that opens at s[at]; the index after it, or nil when it never ends.
local function skip_string(s, at)
  local i = at + 1
  while true do
    local q = s:find('["\\]', i)
    if not q then return nil end
    if s:byte(q) == 34 then return q + 1 end
    i = q + 2
  end
end

-- One pass over the text outside its strings: checks each number token;
-- notes the empty arrays and whether a number overflows a double.
-- @return the positions of the '[' of empty arrays (or nil), whether a number is infinite;
--   or false, message
local function scan(s)
  local pos, empties, infinite = 1, nil, false
  while true do
    local at, _, ch = s:find('(["%[%-%d])', pos)
    if not at then return empties, infinite end
    if ch == '"' then
      pos = skip_string(s, at)
      if not pos then return empties, infinite end   -- lua-cjson names the problem
    elseif ch == "[" then
      local after = s:match("^[ \t\r\n]*%]()", at + 1)
      if after then
        empties = empties or {}
        empties[#empties + 1] = at
      end
      pos = after or at + 1
    else
      local token = s:match("^[%-%+%.%deE]+", at)
      if not strict_number(token) then return false, "invalid number '" .. token .. "' at byte " .. at end
      local n = tonumber(token)
      if n == math.huge or n == -math.huge then infinite = true end
      pos = at + #token
    end
  end
end

-- The text with each empty array holding the mark.
local function with_marks(s, empties)
  local parts, last = {}, 1
  for _, at in ipairs(empties) do
    parts[#parts + 1] = s:sub(last, at)
    parts[#parts + 1] = MARK_ENCODED
    last = at + 1
  end
  parts[#parts + 1] = s:sub(last)
  return table.concat(parts)
end

-- Replaces marked arrays by `json.array()` and finds infinite numbers.
-- @return the value; or nil and the path to an infinite number, innermost key first
local function settle(v)
  if type(v) == "number" then
    if v == math.huge or v == -math.huge then return nil, {} end
    return v
  end
  if type(v) ~= "table" then return v end
  if v[1] == MARK and next(v, 1) == nil then return json.array() end
  for k, x in pairs(v) do
    local fixed, where = settle(x)
    if fixed == nil then
      where[#where + 1] = k
      return nil, where
    end
    v[k] = fixed
  end
  return v
end

-- A path ({ "x", 2, "body" }, innermost first) as text: body[2].x
local function path_text(where)
  local out = {}
  for i = #where, 1, -1 do
    local k = where[i]
    if type(k) == "number" then
      out[#out + 1] = "[" .. string.format("%d", k) .. "]"
    else
      out[#out + 1] = (#out > 0 and "." or "") .. tostring(k)
    end
  end
  return #out > 0 and table.concat(out) or "the value"
end

--- Decodes JSON text, strictly (see above).
-- @return the value; or nil and a message naming the problem
function json.decode(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local valid, bad = util.utf8_valid(s)
  if not valid then return nil, "not UTF-8 (byte " .. bad .. ")" end
  local empties, infinite = scan(s)
  if empties == false then return nil, infinite end
  local ok, v = pcall(codec.decode, empties and with_marks(s, empties) or s)
  if not ok then
    if empties then ok, v = pcall(codec.decode, s) end   -- the message with the text's own offsets
    if not ok then return nil, tostring(v) end
  end
  if not empties and not infinite then return v end
  local where
  v, where = settle(v)
  if v == nil then return nil, path_text(where) .. " is out of range: not a finite number" end
  return v
end

--- The text as a decoded JSON object.
-- @return a table; or nil and a message when `s` is not a JSON object
function json.object(s)
  if type(s) ~= "string" or not s:match("^[ \t\r\n]*{") then return nil, "not a JSON object" end
  local v, err = json.decode(s)
  if v == nil then return nil, err end
  if type(v) ~= "table" or json.is_array(v) then return nil, "not a JSON object" end
  return v
end

return json
