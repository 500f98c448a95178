--- Small helpers of the mock server: logging, dates, UUIDs, percent-encoding,
-- query strings, UTF-8 checks. No I/O but the log line on stderr.
-- @module cachectl.mock.util

local io, math, os, string, table = io, math, os, string, table
local tonumber, type, utf8, _VERSION = tonumber, type, rawget(_G, "utf8"), _VERSION

local match = require "cachectl.mock.match"

local util = {}

--- Writes one line on stderr, prefixed with the program's name.
function util.log(...)
  io.stderr:write("cachectl-mock: ", table.concat({ ... }), "\n")
end

--- The current UTC time as RFC 3339 (whole seconds).
function util.now_rfc3339()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }

--- An HTTP date (IMF-fixdate) of epoch seconds `t`.
function util.http_date(t)
  local d = os.date("!*t", t)
  return string.format("%s, %02d %s %04d %02d:%02d:%02d GMT",
    DAYS[d.wday], d.day, MONTHS[d.month], d.year, d.hour, d.min, d.sec)
end

--- A random version 4 UUID.
function util.new_uuid()
  local r = math.random
  return string.format("%04x%04x-%04x-%04x-%04x-%04x%04x%04x",
    r(0, 0xffff), r(0, 0xffff), r(0, 0xffff), 0x4000 + r(0, 0x0fff),
    0x8000 + r(0, 0x3fff), r(0, 0xffff), r(0, 0xffff), r(0, 0xffff))
end

local UUID_PATTERN = "^" .. string.rep("%x", 8) .. "%-" .. string.rep("%x", 4) .. "%-"
  .. string.rep("%x", 4) .. "%-" .. string.rep("%x", 4) .. "%-" .. string.rep("%x", 12) .. "$"

--- True when `s` is an 8-4-4-4-12 hex UUID (either case).
function util.is_uuid(s)
  return type(s) == "string" and s:match(UUID_PATTERN) ~= nil
end

--- True when `s` is a slug: 1 to 64 characters of a-z, 0-9, '_' and '-'.
function util.is_slug(s)
  return type(s) == "string" and #s >= 1 and #s <= 64 and s:match("^[a-z0-9_%-]+$") ~= nil
end

--- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function days_in_month(y, m)
  if m == 2 then
    local leap = (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0
    return leap and 29 or 28
  end
  return (m == 4 or m == 6 or m == 9 or m == 11) and 30 or 31
end

-- Seconds east of UTC of an RFC 3339 offset ("Z" or "+hh:mm"), or nil.
local function offset_seconds(rest)
  if rest == "Z" or rest == "z" then return 0 end
  local sign, oh, om = rest:match("^([%+%-])(%d%d):(%d%d)$")
  if not sign then return nil end
  oh, om = tonumber(oh), tonumber(om)
  if oh > 23 or om > 59 then return nil end
  local offset = (oh * 60 + om) * 60
  return sign == "-" and -offset or offset
end

--- Parses an RFC 3339 date-time.
-- @return seconds since the epoch, or nil
function util.parse_rfc3339(s)
  local y, mo, d, h, mi, se, rest =
    s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  y, mo, d, h, mi, se = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(se)
  if mo < 1 or mo > 12 or d < 1 or d > days_in_month(y, mo) or h > 23 or mi > 59 or se > 60 then
    return nil
  end
  local frac = rest:match("^%.%d+")
  if frac then rest = rest:sub(#frac + 1) end
  local offset = offset_seconds(rest)
  if not offset then return nil end
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se
    + (frac and tonumber(frac) or 0) - offset
end

--- Decodes %XX escapes.
-- @return the decoded text, or nil for a malformed escape
function util.percent_decode(s)
  if s:find("%%%X") or s:find("%%.%X") or s:find("%%.?$") then return nil end
  return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

--- A matcher of a path glob against the end of a path, in time linear in
-- the path (`cachectl.mock.match.path_glob`).
util.path_glob = match.path_glob

-- The length of the valid UTF-8 sequence at s[i] (a byte >= 0x80), or 0.
local function sequence(s, i)
  local a, b, c, d = s:byte(i, i + 3)
  local function cont(x) return x and x >= 0x80 and x <= 0xBF end
  if a >= 0xC2 and a <= 0xDF then return cont(b) and 2 or 0 end
  if a >= 0xE0 and a <= 0xEF then
    local low, high = 0x80, 0xBF
    if a == 0xE0 then low = 0xA0 elseif a == 0xED then high = 0x9F end   -- no overlongs, no surrogates
    return (b and b >= low and b <= high and cont(c)) and 3 or 0
  end
  if a >= 0xF0 and a <= 0xF4 then
    local low, high = 0x80, 0xBF
    if a == 0xF0 then low = 0x90 elseif a == 0xF4 then high = 0x8F end   -- U+10000 to U+10FFFF
    return (b and b >= low and b <= high and cont(c) and cont(d)) and 4 or 0
  end
  return 0
end

-- Lua 5.4's utf8.len is strict (no surrogates, no overlongs, nothing past U+10FFFF), as is `sequence`.
local utf8_len = _VERSION == "Lua 5.4" and utf8 and utf8.len

--- Whether `s` is valid UTF-8.
-- @return true, or false and the index of the first bad byte
function util.utf8_valid(s)
  if utf8_len then
    local n, bad = utf8_len(s)
    if n then return true end
    return false, bad
  end
  local pos = 1
  while true do
    local at = s:find("[\128-\255]", pos)
    if not at then return true end
    local n = sequence(s, at)
    if n == 0 then return false, at end
    pos = at + n
  end
end

--- `s` with every byte that is not part of valid UTF-8 replaced by U+FFFD.
-- @return the text (`s` itself when it is valid), and true when something was replaced
function util.utf8_repair(s)
  local ok, first = util.utf8_valid(s)
  if ok then return s, false end
  local out, last, pos = {}, 1, first
  while true do
    local at = s:find("[\128-\255]", pos)
    if not at then break end
    local n = sequence(s, at)
    if n == 0 then
      out[#out + 1] = s:sub(last, at - 1)
      out[#out + 1] = "\239\191\189"
      last, pos = at + 1, at + 1
    else
      pos = at + n
    end
  end
  out[#out + 1] = s:sub(last)
  return table.concat(out), true
end

--- The path of a request target (without its query).
function util.path_of(target)
  return (target:match("^[^?]*"))
end

--- Parses the query string of a request target (`+` is a space).
-- The first value of a repeated name wins; a name without `=` has the value "".
-- @return a table of names to values, or nil, "bad name" when an escape is malformed
function util.parse_query(target)
  local query = target:match("%?(.*)$") or ""
  local out = {}
  for pair in query:gmatch("[^&]+") do
    local name, value = pair:match("^([^=]*)=?(.*)$")
    name = util.percent_decode((name:gsub("%+", " ")))
    value = util.percent_decode((value:gsub("%+", " ")))
    if not name or not value then return nil, pair end
    if out[name] == nil then out[name] = value end
  end
  return out
end

return util
