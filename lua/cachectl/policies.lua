--- cachectl.policies: an Omni model file's cache policies, and the check of
-- a policy name against them.
--
-- The YAML is read by libyaml's parser in the C core, never by hand, within
-- limits (cachectl.yaml): a model file comes from a server, and a few
-- kilobytes of merge keys or aliases must not take all memory or time.
--
-- @module cachectl.policies

local require, type, ipairs, tostring = require, type, ipairs, tostring
local concat = table.concat
local min, max, huge = math.min, math.max, math.huge
local format = string.format

local yaml = require "cachectl.yaml"

local M = {}

--- How many declared names a refusal lists, how many bytes of a name a
-- message shows, and how many bytes of names the search for a suggestion
-- compares.
M.SHOWN_NAMES, M.SHOWN_BYTES, M.SUGGEST_BYTES = 10, 64, 256 * 1024

-- A name as a message shows it: cut after SHOWN_BYTES (at a character's
-- start), "..." marking the cut.
local function shown(name)
  if #name <= M.SHOWN_BYTES then return name end
  local cut = M.SHOWN_BYTES
  while cut > 1 and name:byte(cut + 1) and name:byte(cut + 1) >= 0x80 and name:byte(cut + 1) < 0xC0 do
    cut = cut - 1
  end
  return name:sub(1, cut) .. "..."
end

-- What a value is, for a message: never a string's text.
local function describe(v)
  if yaml.is_mapping(v) then return "a mapping" end
  if yaml.is_sequence(v) then return "a list" end
  if v == yaml.null then return "null" end
  if type(v) == "string" then return "a string" end
  return format("a %s (%s)", type(v), tostring(v))
end

local function plain(v)
  local t = type(v)
  return t == "string" or t == "number" or t == "boolean"
end

-- One policy: its name and its plain attributes (a collection is left out).
local function policy(name, attrs)
  local p = {}
  if attrs ~= yaml.null then
    for k, v in yaml.each(attrs) do
      if type(k) == "string" and plain(v) then p[k] = v end
    end
  end
  p.name = name
  return p
end

-- The policies of a `cache_policies` mapping, in the file's order.
local function read_policies(declared)
  local out, names = {}, {}
  if declared == nil or declared == yaml.null then return out, names end
  if not yaml.is_mapping(declared) then
    return nil, format("cache_policies is %s, not a mapping of names to policies", describe(declared))
  end
  for name, attrs in yaml.each(declared) do
    if type(name) ~= "string" then
      return nil, format("cache_policies holds a name that is %s, not a string", describe(name))
    end
    if attrs ~= yaml.null and not yaml.is_mapping(attrs) then
      return nil, format("cache policy '%s' is %s, not a mapping of attributes", shown(name), describe(attrs))
    end
    out[#out + 1], names[name] = policy(name, attrs), true
  end
  return out, names
end

--- The cache policies a model file declares.
-- @tparam string text the model file (YAML)
-- @tparam[opt] table opts for cachectl.yaml.load (`deadline`)
-- @treturn table `{ { name = "daily", max_cache_age = "24 hours",
-- filter_suggestions_must_obey_policy = true }, ..., default = "daily" }` in
-- the file's order, names brought in by a merge key after the file's own
-- (`default` from `default_cache_policy`, or nil); an empty list when the
-- file declares none. Attributes are plain values (strings, numbers,
-- booleans): null ones and collections are left out.
-- @treturn[2] nil
-- @treturn[2] string what is wrong (a limit passed, a shape refused, where
-- the text is not YAML; never the text itself)
-- @treturn[2] string why: "limit", "shape", "syntax", "memory" or "timeout"
function M.parse(text, opts)
  local doc, why, reason = yaml.load(text, opts)
  if not doc then return nil, why, reason end
  if doc == yaml.null then return {} end
  if not yaml.is_mapping(doc) then return nil, format("the model file is %s, not a mapping", describe(doc)), "shape" end
  local out, names = read_policies(yaml.get(doc, "cache_policies"))
  if not out then return nil, names, "shape" end
  local default = yaml.get(doc, "default_cache_policy")
  if default ~= nil and default ~= yaml.null then
    if type(default) ~= "string" then
      return nil, format("default_cache_policy is %s, not a name", describe(default)), "shape"
    end
    if not names[default] then
      return nil, format("default_cache_policy '%s' is not declared in cache_policies", shown(default)), "shape"
    end
    out.default = default
  end
  return out
end

--- The Levenshtein distance between two strings, or `limit + 1` when it
-- exceeds `limit`. Only the cells within `limit` of the diagonal are
-- computed: a few per byte, whatever the names a server sent.
-- @tparam string a
-- @tparam string b
-- @tparam number limit
-- @treturn number
function M.distance(a, b, limit)
  local la, lb, over = #a, #b, limit + 1
  if la - lb > limit or lb - la > limit then return over end
  local prev, cur = {}, {}
  for j = 0, lb do prev[j] = j <= limit and j or over end
  for i = 1, la do
    local lo, hi = max(1, i - limit), min(lb, i + limit)
    cur[lo - 1] = lo == 1 and min(i, over) or over    -- the band's edges
    if hi < lb then cur[hi + 1] = over end
    local best = cur[lo - 1]
    local ca = a:byte(i)
    for j = lo, hi do
      local d = min(prev[j - 1] + (ca == b:byte(j) and 0 or 1), prev[j] + 1, cur[j - 1] + 1, over)
      cur[j] = d
      if d < best then best = d end
    end
    if best > limit then return over end
    prev, cur = cur, prev
  end
  return prev[lb]
end

--- The declared name nearest to `name`, within two edits; the first in the
-- file's order on a tie. The search compares at most SUGGEST_BYTES bytes of
-- names (a server may declare thousands of long ones).
-- @tparam string name
-- @tparam table policies as `parse` returns them
-- @treturn string|nil
function M.nearest(name, policies)
  local best, best_d, spent = nil, huge, 0
  for _, p in ipairs(policies) do
    local n = #p.name
    if n >= #name - 2 and n <= #name + 2 then
      spent = spent + n
      if spent > M.SUGGEST_BYTES then break end
      local d = M.distance(name, p.name, 2)
      if d <= 2 and d < best_d then best, best_d = p.name, d end
    end
  end
  return best
end

--- Whether a model declares `name`; else the message that refuses it,
-- listing the first SHOWN_NAMES declared names and a count of the rest.
-- The caller scrubs the message of its secret (names come from a server).
-- @tparam string name the policy name asked for
-- @tparam table policies as `parse` returns them
-- @tparam string model_id the model, for the message
-- @treturn boolean|nil true when declared
-- @treturn[2] string "no cache policy 'dialy' in model <id>; did you mean 'daily'? (known: daily, hourly)"
function M.check(name, policies, model_id)
  for _, p in ipairs(policies) do
    if p.name == name then return true end
  end
  if #policies == 0 then
    return nil, format("no cache policy '%s' in model %s: its model file declares none", shown(name), model_id)
  end
  local known = {}
  for i = 1, min(#policies, M.SHOWN_NAMES) do known[i] = shown(policies[i].name) end
  local rest = #policies - #known
  local near = M.nearest(name, policies)
  return nil, format("no cache policy '%s' in model %s%s (known: %s%s)", shown(name), model_id,
    near and format("; did you mean '%s'?", shown(near)) or "", concat(known, ", "),
    rest > 0 and format(" and %d more", rest) or "")
end

return M
