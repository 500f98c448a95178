--- The models file of `cachectl-mock --models FILE` (`mock.start{ models = FILE }`):
-- YAML (read with lyaml) or JSON (lua-cjson), told apart by the file's
-- extension, in the shape of `POST /_mock/models`:
-- `{"models": [...], "replace": false}`.
-- @module cachectl.mock.modelsfile

local io = io
local pairs, pcall, require, tostring, type = pairs, pcall, require, tostring, type

local json = require "cachectl.mock.json"
local models = require "cachectl.mock.models"

local modelsfile = {}

local MAX_BYTES = 16 * 1024 * 1024
local MAX_DEPTH = 32
local MAX_NODES = 100000   -- YAML aliases share tables: copies are counted, so none explodes

-- A copy of what lyaml read, its nulls as JSON nulls; nil and a message past a bound.
local function from_yaml(v, null, depth, count)
  if v == null then return json.null end
  if type(v) ~= "table" then return v end
  count.n = count.n + 1
  if depth > MAX_DEPTH then return nil, "nested deeper than " .. MAX_DEPTH .. " levels" end
  if count.n > MAX_NODES then return nil, "more than " .. MAX_NODES .. " mappings and sequences" end
  local out = {}
  for k, x in pairs(v) do
    local copy, err = from_yaml(x, null, depth + 1, count)
    if copy == nil then return nil, err end
    out[k] = copy
  end
  return out
end

local function decode_yaml(text)
  local ok, lyaml = pcall(require, "lyaml")
  if not ok then return nil, "a YAML models file needs lyaml (Debian: lua-yaml); or give a .json file" end
  local loaded, value = pcall(lyaml.load, text)
  if not loaded then return nil, "not valid YAML: " .. tostring(value) end
  return from_yaml(value, lyaml.null, 0, { n = 0 })
end

local function decode_json(text)
  local value, err = json.decode(text)
  if value == nil then return nil, "not valid JSON: " .. tostring(err) end
  return value
end

-- The text of a file, or nil and a message.
local function read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot be read: " .. tostring(err):gsub("^.*: ", "") end   -- the message names the path
  local text, rerr = f:read(MAX_BYTES + 1)
  f:close()
  if rerr then return nil, "cannot be read: " .. tostring(rerr):gsub("^.*: ", "") end
  if not text or text:find("^%s*$") then return nil, "the file is empty" end
  if #text > MAX_BYTES then return nil, "larger than " .. MAX_BYTES .. " bytes" end
  return text
end

--- Reads and checks a models file.
-- @param path the file: `.json`, or `.yaml`/`.yml`
-- @return `{ models = list, replace = boolean }`, or nil and a message that names the file and what is wrong
function modelsfile.load(path)
  local function fail(message) return nil, tostring(path) .. ": " .. message end
  if type(path) ~= "string" then return nil, "the models file must be given as a path" end
  local ext = path:lower():match("%.(%w+)$")
  local decode = (ext == "json" and decode_json) or ((ext == "yaml" or ext == "yml") and decode_yaml)
  if not decode then return fail("the name must end in .json, .yaml or .yml") end
  local text, err = read(path)
  if not text then return fail(err) end
  local data
  data, err = decode(text)
  if data == nil then return fail(err) end
  if type(data) ~= "table" or data[1] ~= nil then
    return fail('must hold an object {"models": [...], "replace": false}')
  end
  for k in pairs(data) do
    if k ~= "models" and k ~= "replace" then
      return fail("unknown key '" .. tostring(k) .. "' (known: models, replace)")
    end
  end
  local replace = data.replace
  if replace == json.null then replace = nil end
  if replace ~= nil and type(replace) ~= "boolean" then return fail("replace must be true or false") end
  if data.models == nil or data.models == json.null then return fail("models is missing") end
  local ok, message = models.new():define(data.models, replace)
  if not ok then return fail(message) end
  return { models = data.models, replace = replace == true }
end

return modelsfile
