--- The request log of the mock server, bounded: it keeps the last
-- `MAX_REQUESTS` requests, and at most `MAX_BODY_BYTES` of their bodies (the
-- oldest bodies go first); what it dropped is counted. Each entry is kept as
-- it is listed, valid UTF-8 (bytes that are not are replaced by U+FFFD), and
-- encoded to JSON once, the first time it is listed.
-- @module cachectl.mock.log

local setmetatable, pairs = setmetatable, pairs
local table = table

local json = require "cachectl.mock.json"
local util = require "cachectl.mock.util"

local log = {}

log.MAX_REQUESTS = 10000
log.MAX_BODY_BYTES = 64 * 1024 * 1024
local PAUSE_EVERY = 1024 * 1024   -- bytes of JSON built between two turns of the other connections

local Log = {}
Log.__index = Log

--- An empty log.
-- @param max_requests entries kept (default `log.MAX_REQUESTS`)
-- @param max_body_bytes bytes of bodies kept (default `log.MAX_BODY_BYTES`)
function log.new(max_requests, max_body_bytes)
  return setmetatable({
    entries = {}, first = 1, last = 0, body_cursor = 1, body_bytes = 0,
    total = 0, dropped = 0, bodies_dropped = 0,
    max_requests = max_requests or log.MAX_REQUESTS, max_body_bytes = max_body_bytes or log.MAX_BODY_BYTES,
  }, Log)
end

local function repair(s)
  return (util.utf8_repair(s))
end

-- Forgets the oldest entry.
function Log:_drop_oldest()
  local e = self.entries[self.first]
  self.entries[self.first] = nil
  self.first = self.first + 1
  if self.body_cursor < self.first then self.body_cursor = self.first end
  self.body_bytes = self.body_bytes - e.kept
  self.dropped = self.dropped + 1
end

-- Forgets the body of the oldest entry that still has one.
function Log:_drop_body()
  while self.body_cursor <= self.last do
    local e = self.entries[self.body_cursor]
    self.body_cursor = self.body_cursor + 1
    if e and e.kept > 0 then
      self.body_bytes = self.body_bytes - e.kept
      e.kept, e.view.body, e.view.body_dropped, e.json = 0, "", true, nil
      self.bodies_dropped = self.bodies_dropped + 1
      return
    end
  end
end

--- Records a request.
-- @param req the request (`method`, `target`, `headers`, `body`, `at`)
-- @param connection the number of its connection
function Log:add(req, connection)
  local headers = {}
  for name, value in pairs(req.headers) do headers[repair(name)] = repair(value) end
  local view = { method = req.method, path = repair(req.target), headers = headers,
                 body = repair(req.body or ""), connection = connection, at = req.at }
  self.last = self.last + 1
  self.entries[self.last] = { method = req.method, target = req.target, at = req.at, view = view, kept = #view.body }
  self.total = self.total + 1
  self.body_bytes = self.body_bytes + #view.body
  while self.last - self.first + 1 > self.max_requests do self:_drop_oldest() end
  while self.body_bytes > self.max_body_bytes do self:_drop_body() end
end

--- The entries that pass a filter, oldest first.
-- @param f function(entry) -> boolean, on `{method, target, at}`
-- @return an iterator of entries
function Log:select(f)
  local i = self.first - 1
  return function()
    while i < self.last do
      i = i + 1
      local e = self.entries[i]
      if e and f(e) then return e end
    end
  end
end

--- How many entries pass a filter.
function Log:count(f)
  local n = 0
  for _ in self:select(f) do n = n + 1 end
  return n
end

--- The JSON array of the entries that pass a filter.
-- @param f the filter (as in `select`)
-- @param pause function called between entries every MiB or so (lets the others have a turn)
-- @return the JSON text
function Log:json(f, pause)
  local parts, since_pause = { "[" }, 0
  for e in self:select(f) do
    e.json = e.json or json.encode(e.view)
    if #parts > 1 then parts[#parts + 1] = "," end
    parts[#parts + 1] = e.json
    since_pause = since_pause + #e.json
    if pause and since_pause >= PAUSE_EVERY then
      pause()
      since_pause = 0
    end
  end
  parts[#parts + 1] = "]"
  return table.concat(parts)
end

return log
