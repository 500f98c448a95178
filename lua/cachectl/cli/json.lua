--- The `cachectl` command's --json document: exactly one, whatever
-- happens, every string in it scrubbed of the credentials, and safe to print
-- and to parse whatever a server sent (the C1 controls of UTF-8, line
-- separators, bidi controls and bytes that are not UTF-8 as \u escapes).
-- Loaded only with --json.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.json

local ipairs, next, pairs, pcall, tostring, type = ipairs, next, pairs, pcall, tostring, type
local math, string, table = math, string, table
local format, concat = string.format, table.concat

local cjson = require "cjson"
local output = require "cachectl.cli.output"

local M = {}

-- A copy of `v` with every string (keys too) scrubbed: masking the encoded
-- JSON instead could cut an escape sequence in two.
local function scrub_value(v, secrets)
  if type(v) == "string" then return output.scrub(v, secrets) end
  if type(v) ~= "table" then return v end
  local copy = {}
  for k, x in pairs(v) do copy[scrub_value(k, secrets)] = scrub_value(x, secrets) end
  return copy
end

local function json_error(err)
  if type(err) ~= "table" then err = { kind = "internal", message = tostring(err) } end
  local out = {}
  for _, k in ipairs{ "kind", "message", "status", "code", "retry_after", "attempts", "field" } do
    local v = err[k]
    if v == nil then v = cjson.null end
    out[k] = v
  end
  if type(err.candidates) == "table" then out.candidates = err.candidates end
  return out
end

-- cjson writes an empty table as {}: lists that may be empty are marked
-- with a string no answer holds, replaced by [] after encoding.
local EMPTY = "\1cachectl-empty-list\1"

local function list(t)
  if type(t) == "table" and next(t) == nil then return EMPTY end
  return t
end
M.list = list

local utf8_at, unruly = output.utf8_at, output.unruly

-- Encoded JSON made safe to print and to parse: the C1 controls of UTF-8,
-- U+2028, U+2029 and the bidi controls (output.unruly) as \u escapes, and
-- any byte that is not UTF-8 as the \u escape of its Latin-1 character (a
-- server may send either; cjson passes them on).
local function json_safe(text)
  if not text:find("[\128-\255]") then return text end
  local out, i, n = {}, 1, #text
  while i <= n do
    local len = utf8_at(text, i)
    local cp = len and unruly(text, i, len)
    if len and not cp then
      out[#out + 1] = text:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = format("\\u%04x", cp or text:byte(i))
      i = i + (len or 1)
    end
  end
  return concat(out)
end

--- One JSON document (and a newline) from a Lua table, every string in it
-- scrubbed of `secrets`; a value cjson cannot write is reported in the
-- document instead.
function M.encode(doc, secrets)
  local encoded, text = pcall(cjson.encode, scrub_value(doc, secrets))
  if not encoded then
    -- An answer cjson cannot write back (it decoded it, so this is rare):
    -- keep the document valid and say why the results are missing.
    text = cjson.encode(scrub_value({ ok = doc.ok, command = doc.command or cjson.null, results = cjson.null,
      error = { kind = "internal", message = "cannot encode the results: " .. tostring(text) } }, secrets))
  end
  local quoted = cjson.encode(EMPTY)
  local plain = quoted:gsub("%p", "%%%0")
  return json_safe((text:gsub(plain, "[]"))) .. "\n"
end

--- The --json document of a run's results.
function M.doc(items, command, secrets)
  local doc_items, all_ok = {}, true
  for i, item in ipairs(items) do
    local d = { call = item.call, ok = item.ok, ms = math.floor(item.ms * 10 + 0.5) / 10 }
    for k, v in pairs(item.fields or {}) do d[k] = v end
    if item.ok then d.result = item.json and item.json(item.result) or item.result
    else d.error = json_error(item.err); all_ok = false end
    doc_items[i] = d
  end
  return M.encode({ ok = all_ok, command = command, results = list(doc_items) }, secrets)
end

--- The --json document of a run that made no call: a usage error, an
-- unreadable key file, a refused confirmation.
function M.failure(command, kind, message, secrets)
  return M.encode({ ok = false, command = command or cjson.null, results = EMPTY,
                    error = json_error{ kind = kind, message = message } }, secrets)
end

return M
