--- The event loop of the mock server: one `socket.select` loop, one coroutine
-- per connection (see `cachectl.mock.conn` for what a coroutine may yield).
--
-- `select` can only watch descriptors below FD_SETSIZE (1024), so the loop
-- keeps well below it: it holds at most `max_connections` (default 900)
-- connections and closes at once any accepted socket whose descriptor is 1000
-- or more; when the process runs out of descriptors first (`ulimit -n`), it
-- lowers that number to what it holds. When it is full, a new connection takes
-- the place of the one that has waited longest for its client to send
-- anything; when none waits so, of the one held longest (by a hold, or
-- waiting for its client to read); so a client that opens thousands of idle
-- connections, or has hundreds of requests held, never locks the others (the
-- control API included) out. An error in the loop itself is logged (at most
-- once a second) and never spins.
-- @module cachectl.mock.loop

local coroutine, debug, os = coroutine, debug, os
local ipairs, pairs, pcall, setmetatable, tostring = ipairs, pairs, pcall, setmetatable, tostring

local socket = require "socket"
local conn = require "cachectl.mock.conn"
local util = require "cachectl.mock.util"

local loop = {}

loop.MAX_CONNECTIONS = 900
loop.FD_LIMIT = 1000          -- descriptors from here on are never watched
local ACCEPT_PAUSE = 0.1      -- seconds without accepting after accept() failed

local Loop = {}
Loop.__index = Loop

--- A loop serving the connections of a listening socket.
-- @param server listening LuaSocket socket (timeout 0)
-- @param handler function(c) run in each connection's coroutine, `c` a `cachectl.mock.conn`
-- @param opts table: `max_connections`, `watch` (an object with `getfd`: exit when it turns readable)
function loop.new(server, handler, opts)
  return setmetatable({
    server = server, handler = handler, watch = opts.watch,
    max_open = opts.max_connections or loop.MAX_CONNECTIONS,
    reading = {}, writing = {}, sleepers = {}, ready = {}, conns = {},
    open = 0, next_id = 0, refused = 0, evicted = 0, accept_after = 0,
    last_log = 0, quiet = 0,
  }, Loop)
end

-- Logs a problem of the loop, at most once a second.
function Loop:_complain(message)
  local now = socket.gettime()
  if now - self.last_log < 1 then
    self.quiet = self.quiet + 1
    return
  end
  if self.quiet > 0 then message = message .. " (and " .. self.quiet .. " more since the last)" end
  util.log(message)
  self.last_log, self.quiet = now, 0
end

-- Stops watching what `c` waits for.
local function unwatch(c)
  if c.waits and c.waits[c.sock] == c then c.waits[c.sock] = nil end
  c.waits, c.sock = nil, nil
  if c.sleep then
    c.sleep.cancelled = true
    c.sleep = nil
  end
end

function Loop:_close(c)
  if c.closed then return end
  c.closed = true
  unwatch(c)
  self.conns[c] = nil
  c.conn:close()
  self.open = self.open - 1
end

-- Runs a connection's coroutine until it yields, and files it by what it waits for.
function Loop:_resume(c, why)
  local ok, what, arg, sock = coroutine.resume(c.co, why)
  if not ok then util.log("connection ", c.conn.id, ": ", debug.traceback(c.co, tostring(what))) end
  if coroutine.status(c.co) == "dead" then return self:_close(c) end
  c.since = socket.gettime()
  if what == "sleep" then
    c.sleep = { at = c.since + arg, c = c, sock = sock }
    self.sleepers[#self.sleepers + 1] = c.sleep
    if sock then c.waits, c.sock = self.reading, sock end
  elseif what == "ready" then
    self.ready[#self.ready + 1] = c
  elseif what == "write" then
    c.waits, c.sock = self.writing, arg
  else
    c.waits, c.sock, c.idle = self.reading, arg, true
  end
  if c.waits then c.waits[c.sock] = c end
end

function Loop:_wake(c, why)
  if c.closed then return end
  unwatch(c)
  c.idle = nil
  self:_resume(c, why)
end

-- Closes a connection to make room: the one that has waited longest for its
-- client to send anything; else the one held longest (a hold, a client that
-- does not read); false when there is none.
function Loop:_evict()
  local victim, rank
  for c in pairs(self.conns) do
    local r = c.idle and 1 or 2
    if not victim or r < rank or (r == rank and c.since < victim.since) then victim, rank = c, r end
  end
  if not victim then return false end
  self:_close(victim)
  self.evicted = self.evicted + 1
  return true
end

-- Takes an accepted socket on, or closes it when it cannot be watched.
function Loop:_admit(client)
  if client:getfd() >= loop.FD_LIMIT or (self.open >= self.max_open and not self:_evict()) then
    client:close()
    self.refused = self.refused + 1
    return
  end
  client:settimeout(0)
  client:setoption("tcp-nodelay", true)
  self.next_id = self.next_id + 1
  self.open = self.open + 1
  local c = { conn = conn.new(client, self.next_id) }
  self.conns[c] = true
  c.co = coroutine.create(function() self.handler(c.conn) end)
  self:_resume(c)
end

function Loop:_accept()
  while true do
    local client, err = self.server:accept()
    if not client then
      if err == "timeout" then return end
      self:_complain("accept: " .. tostring(err))
      -- Out of descriptors (ulimit -n): hold one connection fewer from now on.
      if not (tostring(err):find("open files", 1, true) and self:_evict()) then
        self.accept_after = socket.gettime() + ACCEPT_PAUSE
        return
      end
      self.max_open = self.open
    else
      self:_admit(client)
    end
  end
end

-- Seconds select may block: 0 with work ready, else until the next sleeper
-- or the end of an accept pause; nil for "until something happens".
function Loop:_timeout(ready, now)
  if #ready > 0 then return 0 end
  local timeout
  for _, sl in ipairs(self.sleepers) do
    if not sl.cancelled and (not timeout or sl.at - now < timeout) then timeout = sl.at - now end
  end
  if self.accept_after > now and (not timeout or self.accept_after - now < timeout) then
    timeout = self.accept_after - now
  end
  if timeout and timeout < 0 then timeout = 0 end
  return timeout
end

function Loop:_wake_sleepers()
  local now, due, later = socket.gettime(), {}, {}
  for _, sl in ipairs(self.sleepers) do
    if not sl.cancelled then
      if sl.at <= now then due[#due + 1] = sl.c else later[#later + 1] = sl end
    end
  end
  self.sleepers = later
  for _, c in ipairs(due) do self:_wake(c, "timeout") end
end

--- One turn of the loop: wait for sockets, then resume who can go on.
function Loop:step()
  local ready = self.ready
  self.ready = {}
  local now = socket.gettime()
  local recvt, sendt = {}, {}
  if now >= self.accept_after then recvt[1] = self.server end
  if self.watch then recvt[#recvt + 1] = self.watch end
  for s in pairs(self.reading) do recvt[#recvt + 1] = s end
  for s in pairs(self.writing) do sendt[#sendt + 1] = s end
  local readable, writable = socket.select(recvt, sendt, self:_timeout(ready, now))
  if self.watch and readable[self.watch] then os.exit(0) end
  -- Existing connections first, so a client's close is seen before its next connection.
  for _, s in ipairs(readable) do
    local c = self.reading[s]
    if c then self.reading[s] = nil; self:_wake(c, "readable") end
  end
  for _, s in ipairs(writable) do
    local c = self.writing[s]
    if c then self.writing[s] = nil; self:_wake(c) end
  end
  for _, c in ipairs(ready) do self:_wake(c) end
  self:_wake_sleepers()
  if readable[self.server] then self:_accept() end
end

--- Runs the loop forever.
function Loop:run()
  while true do
    local ok, err = pcall(self.step, self)
    if not ok then
      self:_complain("event loop: " .. tostring(err))
      socket.sleep(0.05)
    end
  end
end

return loop
