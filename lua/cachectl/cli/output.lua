--- What the `cachectl` command prints: one line per call, one line per
-- event with --verbose, and the exit status (`cachectl.cli.json` writes
-- the --json document). Every line goes through the core's secret scrubber
-- before it is written, and text that came from a server (names, ids,
-- messages) has its control characters (and bytes that are not UTF-8, line
-- separators and bidi controls) escaped.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.output

local getmetatable, ipairs, pairs, pcall, tonumber, tostring, type =
  getmetatable, ipairs, pairs, pcall, tonumber, tostring, type
local string, table = string, table
local format, concat = string.format, table.concat

local cjson = require "cjson"
local core = require "cachectl.core"

local M = {}

--- The exit statuses: 0 success, 1 a failure to fix, 2 usage, 75 a
-- temporary failure worth retrying later (sysexits' EX_TEMPFAIL), 130
-- interrupted.
M.SUCCESS, M.FAILURE, M.USAGE, M.TEMPFAIL, M.INTERRUPTED = 0, 1, 2, 75, 130

-- The one secret scrubber is the core's (every form of the secret, any 8
-- characters of it in a row).
local scrub = core.scrub

--- `text` with every secret of `secrets` (a set of strings) masked.
function M.scrub(text, secrets)
  for s in pairs(secrets) do
    -- A credential of a few characters would mask ordinary words.
    if #s >= 4 then text = scrub(text, s) end
  end
  return text
end

local ESCAPES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\27"] = "\\e" }

--- The byte length of the valid UTF-8 sequence at i of s, or nil.
function M.utf8_at(s, i)
  local c = s:byte(i)
  local n = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2 or (c >= 0xE0 and c <= 0xEF) and 3
    or (c >= 0xF0 and c <= 0xF4) and 4 or nil
  if not n then return nil end
  local lo = (c == 0xE0 and 0xA0) or (c == 0xF0 and 0x90) or 0x80
  local hi = (c == 0xED and 0x9F) or (c == 0xF4 and 0x8F) or 0xBF
  for k = 1, n - 1 do
    local b = s:byte(i + k)
    if not b or b < (k == 1 and lo or 0x80) or b > (k == 1 and hi or 0xBF) then return nil end
  end
  return n
end
local utf8_at = M.utf8_at

--- The code point of the UTF-8 character of `len` bytes at i of s when it
-- is one a terminal must not get raw: a C1 control (U+0080 to U+009F), the
-- line and paragraph separators (U+2028, U+2029) or a bidi control (U+061C,
-- U+200E, U+200F, U+202A to U+202E, U+2066 to U+2069), which would show
-- text reordered; else nil.
function M.unruly(s, i, len)
  local a, b, c = s:byte(i, i + 2)
  if len == 2 then
    if (a == 0xC2 and b <= 0x9F) or (a == 0xD8 and b == 0x9C) then return (a % 32) * 64 + b % 64 end
  elseif len == 3 and a == 0xE2 and ((b == 0x80 and (c == 0x8E or c == 0x8F or (c >= 0xA8 and c <= 0xAE)))
      or (b == 0x81 and c >= 0xA6 and c <= 0xA9)) then
    return (a % 16) * 4096 + (b % 64) * 64 + c % 64
  end
  return nil
end
local unruly = M.unruly

--- `s` (any value, as by tostring) with its control characters escaped, so
-- that text from a server can neither move the cursor, ring, recolour,
-- forge a line nor show reordered: C0 controls and DEL as `\n`, `\r`, `\t`,
-- `\e` or `\xHH`; a byte that is not UTF-8 (a raw C1 control such as 0x9B,
-- CSI to an 8-bit terminal) as `\xHH`; the C1 controls of UTF-8 (U+0080 to
-- U+009F), U+2028, U+2029 and the bidi controls (`M.unruly`) as `\u0080`...
function M.escape(s)
  s = tostring(s):gsub("[%c\127]", function(c) return ESCAPES[c] or format("\\x%02x", c:byte()) end)
  if not s:find("[\128-\255]") then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local len = utf8_at(s, i)
    local cp = len and unruly(s, i, len)
    if not len then
      out[#out + 1] = format("\\x%02x", s:byte(i))
      len = 1
    elseif cp then
      out[#out + 1] = format("\\u%04x", cp)
    else
      out[#out + 1] = s:sub(i, i + len - 1)
    end
    i = i + len
  end
  return concat(out)
end
local escape = M.escape

--- Whether a raised error is the interpreter's answer to Ctrl-C.
function M.interrupted(e)
  return type(e) == "string" and e:find("interrupted!$") ~= nil
end

-- One line for an error value: its own tostring when it has one.
local function err_line(err)
  local mt = getmetatable(err)
  if type(err) == "table" and mt and mt.__tostring then return escape(tostring(err)) end
  if type(err) == "table" then
    return format("cachectl: %s: %s", escape(err.kind), escape(err.message))
  end
  return "cachectl: " .. escape(err)
end
M.err_line = err_line

-- A policy or model name as printed: plain names as they are, others
-- quoted, their quotes, backslashes and control characters escaped.
local function show(name)
  if type(name) == "string" and name:match("^[%w%._%-:]+$") then return name end
  return '"' .. escape(tostring(name):gsub('[\\"]', "\\%0")) .. '"'
end
M.show = show

--- One line per model: id, kind, name (all escaped; a record without an
-- id says so).
function M.model_lines(models)
  local lines = {}
  for _, m in ipairs(models) do
    local id = m.id == nil and "(no id)" or escape(m.id)
    lines[#lines + 1] = format("  %-36s  %-16s %s", id, m.modelKind == nil and "" or escape(m.modelKind),
      show(m.name))
  end
  return concat(lines, "\n")
end

-- What a successful answer says, in words.
local function describe_answer(res)
  if type(res) == "table" and type(res.cache_reset) == "table" then
    local at = res.cache_reset.reset_at
    return at and at ~= cjson.null and ("reset, as of " .. escape(at)) or "reset"
  end
  local text = type(res) == "table" and (res.message or res.messege) or nil
  text = type(text) == "string" and escape(text) or "done"
  if type(res) == "table" and type(res.details) == "table" then
    local ok, encoded = pcall(cjson.encode, res.details)
    if ok then text = text .. ": " .. escape(encoded) end
  end
  return text
end

local function describe_success(item)
  local res = item.result
  if item.describe then return item.describe(res) end
  local shared = type(res) == "table" and res.coalesced and " (shared with an identical call)" or ""
  return describe_answer(res) .. shared
end

--- The human line of one result item (more lines for a listing, or for
-- the candidates of a model name).
function M.human_line(item)
  local ms = format("(%.0f ms)", item.ms)
  if item.ok then
    local text = describe_success(item)
    local head, rest = text:match("^([^\n]*)(.*)$")
    return format("%s: %s %s%s\n", item.label, head, ms, rest)
  end
  local e = item.err
  if type(e) == "table" and e.kind == "invalid" and e.field == "policy" and item.checked then
    return format("%s: refused: %s (--no-check resets without the check) %s\n", item.label,
      escape(e.message), ms)
  end
  local more = ""
  if type(e) == "table" and e.field == "model" and type(e.candidates) == "table" and #e.candidates > 0 then
    more = "\n" .. M.model_lines(e.candidates) .. "\n  give one of these ids with --model"
  end
  return format("%s: failed: %s %s%s\n", item.label, err_line(e), ms, more)
end

local REASONS = { backoff = "backoff", retry_after = "the service's Retry-After", rate_limit = "rate limit" }

--- The --verbose line of one event.
function M.event_line(ev)
  local who = format("cachectl: %s %s", escape(ev.service), escape(ev.call))
  if ev.type == "attempt" then
    local outcome = ev.status and escape(ev.status) or "no answer"
    if ev.kind then outcome = outcome .. " " .. escape(ev.kind) end
    return format("%s attempt %s: %s %s -> %s (%.0f ms)\n", who, escape(ev.attempt), escape(ev.method),
      escape(ev.url), outcome, tonumber(ev.ms) or 0)
  elseif ev.type == "wait" then
    return format("%s waits %.3f s (%s)\n", who, tonumber(ev.wait) or 0,
      REASONS[ev.reason] or escape(ev.reason))
  elseif ev.type == "coalesced" then
    return format("%s shares the outcome of an identical call (--coalesce)\n", who)
  elseif ev.type == "redis_fallback" then
    return format("%s: Redis unreachable, the rate limit falls back to this process's own: %s\n", who,
      escape(ev.message))
  end
  return format("%s %s\n", who, escape(ev.type))
end

--- Whether an error is worth retrying later as it is: a rate limit, a
-- timeout, no connection, or a 5xx that outlasted the retries.
function M.temporary(err)
  if type(err) ~= "table" then return false end
  local kind = err.kind
  return kind == "rate_limited" or kind == "timeout" or kind == "connect"
    or (kind == "http" and type(err.status) == "number" and err.status >= 500)
end

--- 0 when every call succeeded; 1 when any failed in a way that retrying
-- will not fix (a 4xx, invalid, api, decode, a refused policy, ...); else
-- 75 when some failed for a temporary reason (`M.temporary`).
function M.exit_status(items)
  local temporary = false
  for _, item in ipairs(items) do
    if not item.ok then
      if not M.temporary(item.err) then return M.FAILURE end
      temporary = true
    end
  end
  return temporary and M.TEMPFAIL or M.SUCCESS
end

return M
