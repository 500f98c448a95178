--- One client connection of the mock server: buffered reads and writes that
-- yield to the event loop (`cachectl.mock.loop`) instead of blocking.
--
-- The receive buffer is a queue of the chunks as read, so a body of any size
-- is read in linear time and joined once. A read that filled a whole chunk
-- yields a turn to the other connections before reading on, so one client
-- streaming a large upload never starves the others.
--
-- Yields (read by the loop): ("read", sock), ("write", sock), ("ready"),
-- ("sleep", seconds, sock_or_nil) which resumes with "timeout" or "readable".
-- @module cachectl.mock.conn

local coroutine, table = coroutine, table
local pcall, setmetatable = pcall, setmetatable

local socket = require "socket"

local READ_SIZE = 256 * 1024
local SLEEP_BUFFER = 4 * 1024 * 1024   -- bytes kept from a client while it is held
local LINGER = 2                       -- seconds to drain a client after an error answer

local Conn = {}
Conn.__index = Conn

local conn = {}

--- A connection over a non-blocking socket.
-- @param sock LuaSocket (or LuaSec) client socket, timeout 0
-- @param id number of the connection
function conn.new(sock, id)
  return setmetatable({ sock = sock, id = id, chunks = {}, head = 1, tail = 0, pos = 1, size = 0 }, Conn)
end

local function transient(err)
  return err == "timeout" or err == "wantread" or err == "wantwrite"
end

function Conn:_push(data)
  self.tail = self.tail + 1
  self.chunks[self.tail] = data
  self.size = self.size + #data
end

--- Reads once into the buffer, waiting for the socket when nothing is there.
-- @return true, or false once the peer is gone
function Conn:fill()
  while true do
    local data, err, partial = self.sock:receive(READ_SIZE)
    local got = data or partial
    if got and #got > 0 then
      self:_push(got)
      -- a full chunk means more may be waiting: let the others have a turn first
      if data then coroutine.yield("ready") end
      return true
    end
    if err == "wantwrite" then
      coroutine.yield("write", self.sock)
    elseif transient(err) then
      coroutine.yield("read", self.sock)
    else
      return false
    end
  end
end

-- Drops the first chunk of the queue.
function Conn:_shift()
  self.chunks[self.head] = nil
  self.head = self.head + 1
  self.pos = 1
end

--- Reads one line (without its CR LF). Each byte is searched once, and the
-- line is joined once, however many reads it took to arrive.
-- @param max longest line accepted, in bytes
-- @return the line, or nil, "eof" | "too long"
function Conn:read_line(max)
  local k, from = self.head, self.pos
  while true do
    local chunk = self.chunks[k]
    if chunk then
      local i = chunk:find("\n", from, true)
      if i then
        local n = i - (self.pos - 1)          -- bytes up to the newline, with it
        for j = self.head, k - 1 do n = n + #self.chunks[j] end
        if n - 1 > max then return nil, "too long" end
        return (self:read_exact(n):sub(1, -2):gsub("\r$", ""))
      end
      k, from = k + 1, 1
    elseif self.size > max then
      return nil, "too long"
    elseif not self:fill() then
      return nil, "eof"
    end
  end
end

--- Reads exactly n bytes.
-- @return the bytes, or nil once the peer is gone before they all came
function Conn:read_exact(n)
  while self.size < n do
    if not self:fill() then return nil end
  end
  local parts, need = {}, n
  while need > 0 do
    local first = self.chunks[self.head]
    local avail = #first - self.pos + 1
    if avail <= need then
      parts[#parts + 1] = self.pos == 1 and first or first:sub(self.pos)
      need = need - avail
      self:_shift()
    else
      parts[#parts + 1] = first:sub(self.pos, self.pos + need - 1)
      self.pos = self.pos + need
      need = 0
    end
  end
  self.size = self.size - n
  return table.concat(parts)
end

--- Forgets whatever is buffered.
function Conn:discard()
  self.chunks, self.head, self.tail, self.pos, self.size = {}, 1, 0, 1, 0
end

--- Sends all of `data`.
-- @return true, or false once the peer is gone
function Conn:send_all(data)
  local i = 1
  while i <= #data do
    local last, err, partial = self.sock:send(data, i)
    if last then return true end
    i = (partial or i - 1) + 1
    if err == "wantread" then
      coroutine.yield("read", self.sock)
    elseif transient(err) then
      coroutine.yield("write", self.sock)
    else
      return false
    end
  end
  return true
end

--- Sleeps without blocking the other connections, still reading what the
-- client sends (up to a bound) so that its leaving is seen.
-- @return true, or false if the client left
function Conn:sleep(seconds)
  local deadline = socket.gettime() + seconds
  while true do
    local left = deadline - socket.gettime()
    if left <= 0 then return true end
    local watch = self.size < SLEEP_BUFFER and self.sock or nil
    if coroutine.yield("sleep", left, watch) == "timeout" then return true end
    local data, err, partial = self.sock:receive(READ_SIZE)
    local got = data or partial
    if got and #got > 0 then
      self:_push(got)
    elseif not transient(err) then
      return false
    end
  end
end

--- Reads and discards everything until the client goes away.
function Conn:wait_until_closed()
  repeat self:discard() until not self:fill()
end

--- After an error answer: stops sending and reads what the client still
-- sends for a while, so that its pending bytes do not turn the close into a
-- reset that would destroy the answer before the client reads it.
function Conn:linger()
  if self.sock.shutdown then pcall(self.sock.shutdown, self.sock, "send") end
  self:discard()
  self:sleep(LINGER)
end

--- Closes the connection with a TCP reset (SO_LINGER 0) when it is closed.
function Conn:set_reset()
  local sock = self.sock
  if sock.setoption then
    pcall(sock.setoption, sock, "linger", { on = true, timeout = 0 })
    return
  end
  -- LuaSec connection: set the option through a borrowed LuaSocket object.
  local raw = socket.tcp()
  raw:close()
  raw:setfd(sock:getfd())
  pcall(raw.setoption, raw, "linger", { on = true, timeout = 0 })
  raw:setfd(-1)
end

--- Closes the socket.
function Conn:close()
  pcall(self.sock.close, self.sock)
end

return conn
