--- What the `cachectl` command prints: one line per call (or one JSON
-- document), one line per event with --verbose, and the exit status. Every
-- line goes through the core's secret scrubber before it is written.
--
-- Portable Lua (5.1 to 5.4, LuaJIT).
-- @module cachectl.cli.output

local getmetatable, ipairs, next, pairs, pcall, tonumber, tostring, type =
  getmetatable, ipairs, next, pairs, pcall, tonumber, tostring, type
local math, string = math, string
local format = string.format

local cjson = require "cjson"
local core = require "cachectl.core"

local M = {}

M.SUCCESS, M.FAILURE, M.USAGE, M.INTERRUPTED = 0, 1, 2, 130

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

-- A copy of `v` with every string (keys too) scrubbed: masking the encoded
-- JSON instead could cut an escape sequence in two.
local function scrub_value(v, secrets)
  if type(v) == "string" then return M.scrub(v, secrets) end
  if type(v) ~= "table" then return v end
  local copy = {}
  for k, x in pairs(v) do copy[scrub_value(k, secrets)] = scrub_value(x, secrets) end
  return copy
end

--- Whether a raised error is the interpreter's answer to Ctrl-C.
function M.interrupted(e)
  return type(e) == "string" and e:find("interrupted!$") ~= nil
end

-- One line for an error value: its own tostring when it has one.
local function err_line(err)
  local mt = getmetatable(err)
  if type(err) == "table" and mt and mt.__tostring then return tostring(err) end
  if type(err) == "table" then
    return format("cachectl: %s: %s", tostring(err.kind), tostring(err.message))
  end
  return "cachectl: " .. tostring(err)
end

-- A policy or model name as printed: plain names as they are, others quoted.
local function show(name)
  if type(name) == "string" and name:match("^[%w%._%-:]+$") then return name end
  return format("%q", tostring(name))
end
M.show = show

-- What a successful answer says, in words.
local function describe_answer(res)
  if type(res) == "table" and type(res.cache_reset) == "table" then
    local at = res.cache_reset.reset_at
    return at and at ~= cjson.null and ("reset, as of " .. tostring(at)) or "reset"
  end
  local text = type(res) == "table" and (res.message or res.messege) or nil
  text = type(text) == "string" and text or "done"
  if type(res) == "table" and type(res.details) == "table" then
    local ok, encoded = pcall(cjson.encode, res.details)
    if ok then text = text .. ": " .. encoded end
  end
  return text
end

local function describe_success(item)
  local res = item.result
  if item.describe then return item.describe(res) end
  local shared = type(res) == "table" and res.coalesced and " (shared with an identical call)" or ""
  return describe_answer(res) .. shared
end

--- The human line of one result item.
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
      tostring(e.message), ms)
  end
  return format("%s: failed: %s %s\n", item.label, err_line(e), ms)
end

local REASONS = { backoff = "backoff", retry_after = "the service's Retry-After", rate_limit = "rate limit" }

--- The --verbose line of one event.
function M.event_line(ev)
  local who = format("cachectl: %s %s", tostring(ev.service), tostring(ev.call))
  if ev.type == "attempt" then
    local outcome = ev.status and tostring(ev.status) or "no answer"
    if ev.kind then outcome = outcome .. " " .. tostring(ev.kind) end
    return format("%s attempt %s: %s %s -> %s (%.0f ms)\n", who, tostring(ev.attempt), tostring(ev.method),
      tostring(ev.url), outcome, tonumber(ev.ms) or 0)
  elseif ev.type == "wait" then
    return format("%s waits %.3f s (%s)\n", who, tonumber(ev.wait) or 0, REASONS[ev.reason] or tostring(ev.reason))
  elseif ev.type == "coalesced" then
    return format("%s shares the outcome of an identical call (--coalesce)\n", who)
  elseif ev.type == "redis_fallback" then
    return format("%s: Redis unreachable, the rate limit falls back to this process's own: %s\n", who,
      tostring(ev.message))
  end
  return format("%s %s\n", who, tostring(ev.type))
end

local function json_error(err)
  if type(err) ~= "table" then err = { kind = "internal", message = tostring(err) } end
  local out = {}
  for _, k in ipairs{ "kind", "message", "status", "code", "retry_after", "attempts", "field" } do
    local v = err[k]
    if v == nil then v = cjson.null end
    out[k] = v
  end
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

--- The --json document, every string in it scrubbed of `secrets`.
function M.json_doc(items, command, secrets)
  local doc_items, all_ok = {}, true
  for i, item in ipairs(items) do
    local d = { call = item.call, ok = item.ok, ms = math.floor(item.ms * 10 + 0.5) / 10 }
    for k, v in pairs(item.fields or {}) do d[k] = v end
    if item.ok then d.result = item.json and item.json(item.result) or item.result
    else d.error = json_error(item.err); all_ok = false end
    doc_items[i] = d
  end
  local doc = scrub_value({ ok = all_ok, command = command, results = doc_items }, secrets)
  local encoded, text = pcall(cjson.encode, doc)
  if not encoded then
    -- An answer cjson cannot write back (it decoded it, so this is rare):
    -- keep the document valid and say why the results are missing.
    text = cjson.encode({ ok = all_ok, command = command, results = cjson.null,
      error = { kind = "internal", message = "cannot encode the results: " .. tostring(text) } })
  end
  local quoted = cjson.encode(EMPTY)
  local plain = quoted:gsub("%p", "%%%0")
  return (text:gsub(plain, "[]")) .. "\n"
end

--- 0 when every call succeeded; 1 when any failed at the service or the
-- network; 2 when the others succeeded but some were refused before
-- sending (`invalid`: a bad value, an unknown policy).
function M.exit_status(items)
  local invalid = false
  for _, item in ipairs(items) do
    if not item.ok then
      if type(item.err) == "table" and item.err.kind == "invalid" then
        invalid = true
      else
        return M.FAILURE
      end
    end
  end
  return invalid and M.USAGE or M.SUCCESS
end

return M
