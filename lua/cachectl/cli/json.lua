--- The `cachectl` command's --json document: exactly one, whatever
-- happens, every string in it scrubbed of the credentials before it is
-- encoded (the encoded text is written as it is: masking it could cut its
-- syntax apart), and safe to print and to parse whatever a server sent (the
-- C1 controls of UTF-8, line separators, bidi controls and bytes that are
-- not UTF-8 as \u escapes; a number JSON cannot hold, such as 1e400, as
-- null). Loaded only with --json.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.json

local ipairs, next, pairs, pcall, tostring, type = ipairs, next, pairs, pcall, tostring, type
local math, string, table = math, string, table
local format, concat = string.format, table.concat

local cjson = require "cjson"
local output = require "cachectl.cli.output"

local M = {}

-- cjson writes an empty table as {}: lists that may be empty are marked
-- with a string no answer holds, replaced by [] after encoding.
local EMPTY = "\1cachectl-empty-list\1"

-- The document's own field names, never masked (a credential sharing 8
-- characters with one of them must not rename it); the names in a
-- server's answer are.
local OWN = {}
for _, k in ipairs{ "ok", "command", "results", "error", "help", "version", "dry_run", "requests", "call", "ms",
                    "result", "product", "deploy_type", "policy", "model_id", "kind", "message", "status", "code",
                    "retry_after", "attempts", "field", "candidates", "method", "url", "headers", "body", "note",
                    "policies", "default" } do
  OWN[k] = true
end

-- A copy of `v` with every string (keys too, but the document's own)
-- scrubbed, and every number JSON cannot hold (inf, nan: an answer's 1e400)
-- as null.
local function scrub_value(v, secrets)
  local t = type(v)
  if t == "string" then return v == EMPTY and v or output.scrub(v, secrets) end
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return cjson.null end
    return v
  end
  if t ~= "table" then return v end
  local copy = {}
  for k, x in pairs(v) do
    copy[OWN[k] and k or scrub_value(k, secrets)] = scrub_value(x, secrets)
  end
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
  if type(err.candidates) == "table" then out.candidates = M.list(err.candidates) end
  return out
end

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

local EMPTY_QUOTED = cjson.encode(EMPTY):gsub("%p", "%%%0")

-- The encoded text of a document already scrubbed, or nil and cjson's message.
local function encode_scrubbed(doc)
  local encoded, text = pcall(cjson.encode, doc)
  if not encoded then return nil, text end
  return json_safe((text:gsub(EMPTY_QUOTED, "[]"))) .. "\n"
end

--- One JSON document (and a newline) from a Lua table, every string in it
-- scrubbed of `secrets`; a value cjson cannot write is reported in the
-- document instead.
function M.encode(doc, secrets)
  local text, why = encode_scrubbed(scrub_value(doc, secrets))
  if text then return text end
  -- Rare (the numbers are made writable): a value nested deeper than cjson
  -- writes. The document stays valid, saying why the results are missing.
  return encode_scrubbed(scrub_value({ ok = false, command = doc.command or cjson.null, results = EMPTY,
    error = { kind = "internal", message = "cannot encode the document: " .. tostring(why) } }, secrets))
end

-- The document item of a result item.
local function doc_item(item)
  local d = { call = item.call, ok = item.ok, ms = math.floor(item.ms * 10 + 0.5) / 10 }
  for k, v in pairs(item.fields or {}) do d[k] = v end
  if item.ok then d.result = item.json and item.json(item.result) or item.result
  else d.error = json_error(item.err) end
  return d
end

--- The --json document of a run's results. An answer that cannot be
-- written as JSON (nested deeper than cjson writes) becomes that call's
-- `decode` error, in the item itself too (the exit status follows).
function M.doc(items, command, secrets)
  local doc_items, all_ok = {}, true
  for i, item in ipairs(items) do doc_items[i] = scrub_value(doc_item(item), secrets) end
  local doc = { command = scrub_value(command, secrets), results = list(doc_items) }
  local function encode()
    all_ok = true
    for _, item in ipairs(items) do all_ok = all_ok and item.ok end
    doc.ok = all_ok
    return encode_scrubbed(doc)
  end
  local text = encode()
  if text then return text end
  for i, item in ipairs(items) do
    local _, why = encode_scrubbed(doc_items[i])
    if why then
      item.ok, item.err = false, { kind = "decode", attempts = type(item.err) == "table" and item.err.attempts or nil,
        message = "the answer cannot be written as JSON: " .. tostring(why) }
      doc_items[i] = scrub_value(doc_item(item), secrets)
    end
  end
  return encode() or M.encode({ ok = false, command = command, results = EMPTY,
    error = { kind = "internal", message = "cannot encode the results" } }, secrets)
end

--- The --json document of a run that made no call: a usage error, an
-- unreadable key file, a refused confirmation.
function M.failure(command, kind, message, secrets)
  return M.encode({ ok = false, command = command or cjson.null, results = EMPTY,
                    error = json_error{ kind = kind, message = message } }, secrets)
end

return M
