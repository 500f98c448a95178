--- Requests checked against the vendors' own OpenAPI documents, shipped
-- beside this module (`openapi/omni.json`, `openapi/modelslab/*.json`,
-- copied byte for byte from the vendors' repositories; each names its
-- origin in `x-source`). A request's operation is found by its method and
-- the end of its path (server URL path + document path, without the
-- leading `/api`, as the mock routes any prefix); its path and query
-- parameters and its JSON body are checked against the schemas.
--
-- The schema keywords the documents use are supported: `$ref` (local),
-- `type` (one or a list), `enum`, `format: uuid`, `required`,
-- `properties`, `additionalProperties`, `items`, `allOf`, `anyOf`,
-- `oneOf`, the numeric bounds (OpenAPI 3.0 and 3.1 styles), `minLength`,
-- `maxLength`, `minItems`, `maxItems`. A property given as JSON null counts
-- as absent (a required one is then missing).
-- @module cachectl.mock.openapi

local debug, io, math, string, table = debug, io, math, string, table
local error, ipairs, next, pairs, tonumber, tostring, type =
  error, ipairs, next, pairs, tonumber, tostring, type

local json = require "cachectl.mock.json"
local util = require "cachectl.mock.util"

local openapi = {}

--- The documents, relative to the `openapi/` folder beside this file.
openapi.DOCUMENTS = {
  "omni.json", "modelslab/3d-api.json", "modelslab/face-gen.json", "modelslab/flux-2-dev.json",
  "modelslab/flux-klein.json", "modelslab/image-editing.json", "modelslab/image-to-video-ultra.json",
  "modelslab/text-to-image.json",
}

local METHODS = { get = "GET", put = "PUT", post = "POST", delete = "DELETE", patch = "PATCH" }
local MAX_DEPTH = 64

--- The folder of the documents: `openapi/` beside this file.
function openapi.folder()
  local source = debug.getinfo(1, "S").source
  return (source:sub(2):match("^(.*[/\\])") or "./") .. "openapi/"
end

-- The value a local `$ref` ("#/components/schemas/X") points at.
local function resolve(doc, node)
  for _ = 1, MAX_DEPTH do
    if type(node) ~= "table" or type(node["$ref"]) ~= "string" then return node end
    local at = doc
    for part in node["$ref"]:gsub("^#/?", ""):gmatch("[^/]+") do
      at = type(at) == "table" and at[(part:gsub("~1", "/"):gsub("~0", "~"))] or nil
    end
    if at == nil then error("cachectl.mock: unresolved $ref " .. node["$ref"]) end
    node = at
  end
  error("cachectl.mock: $ref chain too long")
end

-- An operation: its method, the pattern of the end of its path and the names of its captures.
local function operation(doc, file, suffix, item, verb, op)
  local names, parts = {}, {}
  for literal, name in (suffix .. "{}"):gmatch("([^{]*){([^}]*)}") do
    parts[#parts + 1] = literal:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
    if name ~= "" then
      names[#names + 1] = name
      parts[#parts + 1] = "([^/]+)"
    end
  end
  local parameters = {}
  for _, list in ipairs({ item.parameters or {}, op.parameters or {} }) do
    for _, p in ipairs(list) do
      p = resolve(doc, p)
      parameters[p["in"] .. ":" .. p.name] = p   -- the operation's own win
    end
  end
  return { method = verb, pattern = table.concat(parts) .. "$", names = names, doc = doc, file = file,
           parameters = parameters, body = resolve(doc, op.requestBody), literal = #suffix, path = suffix }
end

local function read_document(path)
  local f, err = io.open(path, "rb")
  if not f then error("cachectl.mock: the vendors' OpenAPI documents are missing (" .. tostring(err) .. ")") end
  local text = f:read("*a")
  f:close()
  local doc, derr = json.decode(text)
  if type(doc) ~= "table" then error("cachectl.mock: " .. path .. " is not valid JSON: " .. tostring(derr)) end
  return doc
end

local OPERATIONS

--- Loads the documents once (raises when one is missing or broken).
-- @return the operations, most specific path first
function openapi.load()
  if OPERATIONS then return OPERATIONS end
  local ops, folder = {}, openapi.folder()
  for _, file in ipairs(openapi.DOCUMENTS) do
    local doc = read_document(folder .. file)
    local server = doc.servers and doc.servers[1] and doc.servers[1].url or ""
    local prefix = (server:match("^%a+://[^/]*(/.*)$") or ""):gsub("/$", "")
    for path, item in pairs(doc.paths or {}) do
      local suffix = (prefix .. path):gsub("^/api/", "/")
      for verb, op in pairs(item) do
        if METHODS[verb] then ops[#ops + 1] = operation(doc, file, suffix, item, METHODS[verb], op) end
      end
    end
  end
  table.sort(ops, function(a, b)
    if a.literal ~= b.literal then return a.literal > b.literal end
    return a.path < b.path
  end)
  OPERATIONS = ops
  return ops
end

--- The operation of a request.
-- @param method "GET", "POST", ...
-- @param path the request's path, without the query
-- @return `{ op = operation, path = { name = raw value } }`, or nil
function openapi.find(method, path)
  for _, op in ipairs(openapi.load()) do
    if op.method == method then
      local found = { path:match(op.pattern) }   -- without captures: the match itself
      if found[1] then
        local values = {}
        for i, name in ipairs(op.names) do values[name] = found[i] end
        return { op = op, path = values }
      end
    end
  end
end

local ARTICLE = { integer = "an integer", number = "a number", string = "a string", boolean = "a boolean",
                  object = "an object", array = "an array", null = "null" }

local function types_of(schema)
  local t = schema.type
  if type(t) == "string" then return { t } end
  return type(t) == "table" and t or nil
end

-- True for `type: integer` with a lower bound of 1: "a positive integer".
local function positive_integer(schema)
  local t = types_of(schema)
  return t and #t == 1 and t[1] == "integer"
    and (schema.exclusiveMinimum == 0 or (schema.minimum == 0 and schema.exclusiveMinimum == true)
         or schema.minimum == 1)
end

-- What a schema expects, in words ("a string", "a boolean or null").
local function expected(doc, schema, depth)
  schema = resolve(doc, schema)
  if positive_integer(schema) then return "a positive integer" end
  local alternatives = schema.anyOf or schema.oneOf
  local words = {}
  if alternatives and depth < 4 then
    for i, alt in ipairs(alternatives) do words[i] = expected(doc, alt, depth + 1) end
  else
    for i, t in ipairs(types_of(schema) or {}) do words[i] = ARTICLE[t] or t end
  end
  return #words > 0 and table.concat(words, " or ") or "a valid value"
end

local function is_array(v)
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  return n == #v
end

local function has_type(v, t)
  if v == json.null then return t == "null" end
  local lt = type(v)
  if t == "integer" then return lt == "number" and v == math.floor(v) and v - v == 0 end
  if t == "number" then return lt == "number" and v == v end
  -- an empty JSON array decodes marked (json.array); an unmarked empty table may be either
  if t == "object" then return lt == "table" and not json.is_array(v) and (next(v) == nil or not is_array(v)) end
  if t == "array" then return lt == "table" and is_array(v) end
  return lt == t
end

local function join(field, name)
  if field == "" then return name end
  return field .. "." .. name
end

local check

-- A number as text: whole numbers without a fraction (lua-cjson may decode 4 as 4.0).
local function num(n)
  if n == math.floor(n) and n - n == 0 then return string.format("%d", n) end
  return tostring(n)
end

local function check_bounds(schema, v, field)
  if type(v) == "number" then
    local low, strict = schema.minimum, schema.exclusiveMinimum == true
    if type(schema.exclusiveMinimum) == "number" then low, strict = schema.exclusiveMinimum, true end
    local high, hstrict = schema.maximum, schema.exclusiveMaximum == true
    if type(schema.exclusiveMaximum) == "number" then high, hstrict = schema.exclusiveMaximum, true end
    if low and (v < low or (strict and v == low)) then
      return field, positive_integer(schema) and "must be a positive integer" or
        ("must be " .. (strict and "> " or ">= ") .. num(low))
    end
    if high and (v > high or (hstrict and v == high)) then
      return field, "must be " .. (hstrict and "< " or "<= ") .. num(high)
    end
  elseif type(v) == "string" then
    if schema.minLength and #v < schema.minLength then
      return field, "must be at least " .. num(schema.minLength) .. " characters long"
    end
    if schema.maxLength and #v > schema.maxLength then
      return field, "must be at most " .. num(schema.maxLength) .. " characters long"
    end
    if schema.format == "uuid" and not util.is_uuid(v) then return field, "must be a UUID" end
  end
end

local function check_object(doc, schema, v, field, depth)
  for _, name in ipairs(schema.required or {}) do   -- null is no value either (as the vendors' pages say)
    if v[name] == nil or v[name] == json.null then return join(field, name), "is required" end
  end
  local props, extra = schema.properties or {}, schema.additionalProperties
  for name, x in pairs(v) do
    local sub = props[name]
    if sub then
      if x ~= json.null then
        local f, rule = check(doc, sub, x, join(field, tostring(name)), depth + 1)
        if f then return f, rule end
      end
    elseif extra == false then
      return join(field, tostring(name)), "is not allowed"
    elseif type(extra) == "table" then
      local f, rule = check(doc, extra, x, join(field, tostring(name)), depth + 1)
      if f then return f, rule end
    end
  end
end

local function check_array(doc, schema, v, field, depth)
  if schema.minItems and #v < schema.minItems then
    return field, "must hold at least " .. num(schema.minItems) .. " items"
  end
  if schema.maxItems and #v > schema.maxItems then
    return field, "must hold at most " .. num(schema.maxItems) .. " items"
  end
  if schema.items then
    for i, x in ipairs(v) do
      local f, rule = check(doc, schema.items, x, field .. "[" .. i .. "]", depth + 1)
      if f then return f, rule end
    end
  end
end

local function enum_words(list)
  local words = {}
  for i, x in ipairs(list) do words[i] = type(x) == "number" and num(x) or tostring(x) end
  return table.concat(words, ", ")
end

--- The first violation of a value against a schema: field, rule; or nil.
check = function(doc, schema, v, field, depth)
  schema = resolve(doc, schema)
  if type(schema) ~= "table" or depth > MAX_DEPTH then return nil end
  for _, sub in ipairs(schema.allOf or {}) do
    local f, rule = check(doc, sub, v, field, depth + 1)
    if f then return f, rule end
  end
  local alternatives = schema.anyOf or schema.oneOf
  if alternatives then
    local passed = false
    for _, alt in ipairs(alternatives) do
      if not check(doc, alt, v, field, depth + 1) then passed = true break end
    end
    if not passed then return field, "must be " .. expected(doc, schema, 0) end
  end
  local types = types_of(schema)
  if types then
    local ok = false
    for _, t in ipairs(types) do ok = ok or has_type(v, t) end
    if not ok then return field, "must be " .. expected(doc, schema, 0) end
  end
  if schema.enum then
    local ok = false
    for _, x in ipairs(schema.enum) do ok = ok or x == v end
    if not ok then return field, "must be one of " .. enum_words(schema.enum) end
  end
  local f, rule = check_bounds(schema, v, field)
  if f then return f, rule end
  if type(v) == "table" and has_type(v, "object") and (schema.properties or schema.required) then
    return check_object(doc, schema, v, field, depth)
  end
  if type(v) == "table" and has_type(v, "array") then return check_array(doc, schema, v, field, depth) end
end

-- A parameter's text as the value its schema asks for (a number, a boolean), when it reads as one.
local function from_text(doc, schema, s, depth)
  schema = resolve(doc, schema) or {}
  local alternatives = schema.anyOf or schema.oneOf
  if alternatives and depth < 4 then
    for _, alt in ipairs(alternatives) do
      local v = from_text(doc, alt, s, depth + 1)
      if not check(doc, alt, v, "", 0) then return v end
    end
    return s
  end
  for _, t in ipairs(types_of(schema) or { "string" }) do
    if t == "string" then return s end
    if t == "integer" and s:match("^%-?%d+$") then return tonumber(s) end
    if t == "number" and s:match("^%-?%d+%.?%d*$") then return tonumber(s) end
    if t == "boolean" and (s == "true" or s == "false") then return s == "true" end
  end
  return s
end

--- Checks a request against its operation.
-- @param found what `find` returned
-- @param query table of query parameter names to (decoded, non-empty) values
-- @param body the decoded JSON body, or nil when the request has none
-- @return nil, or `{ where = "path"|"query"|"body", field = "pageSize", rule = "must be a positive integer" }`
function openapi.check(found, query, body)
  local op, doc = found.op, found.op.doc
  for _, where in ipairs({ "path", "query" }) do
    local values = where == "path" and found.path or query
    local names = {}
    for key in pairs(op.parameters) do names[#names + 1] = key end
    table.sort(names)
    for _, key in ipairs(names) do
      local p = op.parameters[key]
      if p["in"] == where then
        local raw = values[p.name]
        if where == "path" and raw then raw = util.percent_decode(raw) or raw end
        if raw == nil then
          if p.required then return { where = where, field = p.name, rule = "is required" } end
        else
          local f, rule = check(doc, p.schema, from_text(doc, p.schema, raw, 0), p.name, 0)
          if f then return { where = where, field = f, rule = rule } end
        end
      end
    end
  end
  local rb = op.body
  if not rb then return nil end
  if body == nil then
    if rb.required then return { where = "body", field = "body", rule = "is required" } end
    return nil
  end
  local media = rb.content and rb.content["application/json"]
  if media and media.schema then
    local f, rule = check(doc, media.schema, body, "", 0)
    if f then return { where = "body", field = f == "" and "body" or f, rule = rule } end
  end
end

return openapi
