--- The Omni models of the mock server: the default set (documented in
-- docs/mock.md), models defined by tests through `POST /_mock/models`, the
-- filters and paging of `GET /v1/models`.
-- @module cachectl.mock.models

local assert, ipairs, pairs, setmetatable, type, tostring, next =
  assert, ipairs, pairs, setmetatable, type, tostring, next
local math = math

local json = require "cachectl.mock.json"
local util = require "cachectl.mock.util"

local models = {}

--- The model kinds of Omni's OpenAPI document.
models.KINDS = { SCHEMA = true, SHARED = true, SHARED_EXTENSION = true, BRANCH = true, WORKBOOK = true, QUERY = true }

local CONNECTION = "a1b2c3d4-0000-4000-8000-00000000c0de"
local CREATED = "2024-05-01T09:00:00.000Z"
local UPDATED = "2025-01-15T16:30:00.000Z"

-- A real model file: comments, a quoted policy name with a space, a shared
-- set of attributes through an anchor and merge keys, a multi-line value.
local SALES_YAML = [[
# Sales: the shared model behind the revenue dashboards.
# Owned by the data team; edit in the IDE, not by hand.

ai_context: |
  Orders and revenue by region and product line.
  Amounts are in EUR, net of refunds.

cache_policies:
  # "daily" carries the attributes the other policies share (&standard).
  daily: &standard
    max_cache_age: 24 hours
    filter_suggestions_must_obey_policy: true
  hourly:
    max_cache_age: 1 hour   # for the live sales board
  "weekly report":
    <<: *standard
    max_cache_age: 7 days

default_cache_policy: daily
]]

local MARKETING_YAML = [[
# Marketing: campaigns and attribution.
cache_policies:
  nightly:
    max_cache_age: 12 hours
default_cache_policy: nightly
]]

local FINANCE_YAML = [[
# Finance: ledgers and budgets.
cache_policies:
  daily:
    max_cache_age: 24 hours
default_cache_policy: daily
]]

local FINANCE_BRANCH_YAML = [[
# Finance, branch "q3-close": same policies as the shared model.
cache_policies:
  daily:
    max_cache_age: 24 hours
default_cache_policy: daily
]]

local EMPTY_YAML = [[
# Schema model of the warehouse connection: no cache policies here.
ai_context: Raw warehouse tables, as loaded.
]]

local function default_set()
  local function model(id, name, kind, yaml, extra)
    local m = { id = id, name = name, modelKind = kind, connectionId = CONNECTION,
                createdAt = CREATED, updatedAt = UPDATED, version = 1,
                files = yaml and { ["model.yaml"] = yaml } or {} }
    for k, v in pairs(extra or {}) do m[k] = v end
    return m
  end
  return {
    model("3f2504e0-4f89-41d3-9a0c-0305e82c3301", "Sales", "SHARED", SALES_YAML, { version = 7 }),
    model("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "Marketing", "SHARED", MARKETING_YAML),
    model("6ba7b811-9dad-11d1-80b4-00c04fd430c8", "Finance", "SHARED", FINANCE_YAML),
    model("6ba7b813-9dad-11d1-80b4-00c04fd430c8", "Finance", "BRANCH", FINANCE_BRANCH_YAML,
      { baseModelId = "6ba7b811-9dad-11d1-80b4-00c04fd430c8" }),
    model("6ba7b812-9dad-11d1-80b4-00c04fd430c8", "Empty", "SCHEMA", EMPTY_YAML),
    model("6ba7b814-9dad-11d1-80b4-00c04fd430c8", "Forbidden", "SHARED", FINANCE_YAML, { forbidden = true }),
  }
end

local Store = {}
Store.__index = Store

--- A store holding the default set, and then the models of `initial`.
-- @param initial table (optional) `{ models = list, replace = boolean }`, checked
--   beforehand (`cachectl.mock.modelsfile`): what every reset restores
function models.new(initial)
  local store = setmetatable({ initial = initial }, Store)
  store:reset()
  return store
end

-- Holds exactly `list` (ids lower-case and distinct), indexed by id.
function Store:_hold(list)
  self.list, self.index = list, {}
  for i, m in ipairs(list) do self.index[m.id] = i end
end

--- Restores the models of the start: the default set, then `initial`.
function Store:reset()
  self:_hold(default_set())
  if self.initial then assert(self:define(self.initial.models, self.initial.replace)) end
end

--- The model of an id (either case), or nil.
function Store:get(id)
  local at = self.index[id:lower()]
  return at and self.list[at]
end

--- How many models the store holds.
function Store:size()
  return #self.list
end

local FIELD_TYPES = {
  id = "string", name = "string", modelKind = "string", yaml = "string", files = "table",
  forbidden = "boolean", deleted = "boolean", version = "number",
  connectionId = "string", baseModelId = "string",
}

-- Checks the fields' types and values; returns nil or a message.
local function invalid(d, where)
  if type(d) ~= "table" then return where .. " must be an object" end
  for k, v in pairs(d) do
    if not FIELD_TYPES[k] then return where .. " has an unknown field '" .. tostring(k) .. "'" end
    if type(v) ~= FIELD_TYPES[k] then return where .. "." .. k .. " must be a " .. FIELD_TYPES[k] end
  end
  if not util.is_uuid(d.id) then return where .. ".id must be a UUID" end
  if not d.name or d.name == "" then return where .. ".name must be a non-empty string" end
  if d.modelKind and not models.KINDS[d.modelKind] then return where .. ".modelKind is not a model kind" end
  for _, k in ipairs({ "connectionId", "baseModelId" }) do
    if d[k] and not util.is_uuid(d[k]) then return where .. "." .. k .. " must be a UUID" end
  end
  for name, text in pairs(d.files or {}) do
    if type(name) ~= "string" or type(text) ~= "string" then
      return where .. ".files must map file names to YAML text"
    end
  end
  if d.version and not (d.version >= 0 and d.version < 2 ^ 53 and d.version == math.floor(d.version)) then
    return where .. ".version must be a whole number from 0 to 2^53"   -- not NaN, not an infinity
  end
end

-- A stored model from a checked definition.
local function from_definition(d)
  local files = {}
  for name, text in pairs(d.files or {}) do files[name] = text end
  if d.yaml then files["model.yaml"] = d.yaml end
  return { id = d.id:lower(), name = d.name, modelKind = d.modelKind or "SHARED",
           connectionId = d.connectionId or CONNECTION, baseModelId = d.baseModelId,
           createdAt = CREATED, updatedAt = UPDATED, deletedAt = d.deleted and UPDATED or nil,
           version = d.version or 1, files = files, forbidden = d.forbidden or nil }
end

-- The definition without its JSON nulls (a null field counts as absent).
local function without_nulls(d)
  if type(d) ~= "table" then return d end
  local out = {}
  for k, v in pairs(d) do
    if v ~= json.null then out[k] = v end
  end
  return out
end

--- Defines models: replaces the model of the same id, or adds it at the end.
-- @param list array of definitions `{id, name, modelKind, yaml | files, forbidden, deleted, version, ...}`
-- @param replace true to drop every model first
-- @return true, or nil, message naming the bad field (nothing changed)
function Store:define(list, replace)
  if type(list) ~= "table" or (next(list) ~= nil and not list[1]) then return nil, "models must be an array" end
  local defined = {}
  for i, d in ipairs(list) do
    d = without_nulls(d)
    local message = invalid(d, "models[" .. i .. "]")
    if message then return nil, message end
    defined[i] = from_definition(d)
  end
  if replace then self:_hold({}) end
  for _, m in ipairs(defined) do
    local at = self.index[m.id] or #self.list + 1
    self.list[at] = m
    self.index[m.id] = at
  end
  return true
end

-- The record of a model as the list answers it.
local function record(m)
  local n = json.null
  return { id = m.id, name = m.name, modelKind = m.modelKind, connectionId = m.connectionId or n,
           baseModelId = m.baseModelId or n, createdAt = m.createdAt, updatedAt = m.updatedAt,
           deletedAt = m.deletedAt or n }
end

-- The models that pass the filters, in order.
local function matching(list, q)
  local out = {}
  for _, m in ipairs(list) do
    if (q.name == nil or m.name == q.name) and (q.kind == nil or m.modelKind == q.kind)
      and (q.model_id == nil or m.id == q.model_id:lower())
      and (q.include_deleted or not m.deletedAt) then
      out[#out + 1] = m
    end
  end
  return out
end

--- One page of the list.
-- @param q table: `name`, `kind`, `model_id`, `include_deleted`, `cursor`, `page_size`
-- @return the answer `{pageInfo = {...}, records = [...]}`, or nil when the cursor is unknown
function Store:page(q)
  local found = matching(self.list, q)
  local first = 1
  if q.cursor then
    first = nil
    for i, m in ipairs(found) do
      if m.id == q.cursor then first = i end
    end
    if not first then return nil end
  end
  local records = json.array()
  for i = first, math.min(#found, first + q.page_size - 1) do records[#records + 1] = record(found[i]) end
  local next_model = found[first + q.page_size]
  return {
    pageInfo = { hasNextPage = next_model ~= nil, nextCursor = next_model and next_model.id or json.null,
                 pageSize = q.page_size, totalRecords = #found },
    records = records,
  }
end

return models
