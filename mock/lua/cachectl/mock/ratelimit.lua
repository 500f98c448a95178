--- The sliding window of the mock's `omni_rate_limit`: at most `limit`
-- arrivals per key in any window of `per` seconds (windows are half-open: an
-- arrival exactly `per` after another is in the next window), the same
-- semantics as the clients' own limit.
--
-- `grace` (seconds, default 0.05) shortens the window the server checks, so
-- that a client that starts a request exactly `per` after an earlier one is
-- not refused because the earlier one took longer to arrive over loopback.
-- The server therefore holds at most `limit` arrivals in any `per - grace`.
-- @module cachectl.mock.ratelimit

local math, table = math, table
local setmetatable, tostring = setmetatable, tostring

local ratelimit = {}

ratelimit.GRACE = 0.05

local Window = {}
Window.__index = Window

--- A new set of windows, one per key.
-- @param limit arrivals allowed per window
-- @param per window length in seconds (default 60)
-- @param grace seconds of arrival jitter forgiven (default `ratelimit.GRACE`)
function ratelimit.new(limit, per, grace)
  return setmetatable({ limit = limit, per = per or 60, grace = grace or ratelimit.GRACE, logs = {} }, Window)
end

--- Counts an arrival of `key` at `now`, if the window has room.
-- @return true, or false, seconds until a slot frees
function Window:take(key, now)
  local log = self.logs[key] or {}
  self.logs[key] = log
  local span = self.per - self.grace
  while log[1] and log[1] <= now - span do table.remove(log, 1) end
  if #log < self.limit then
    log[#log + 1] = now
    return true
  end
  return false, log[1] + span - now
end

--- Forgets every arrival.
function Window:clear()
  self.logs = {}
end

--- A `Retry-After` value (whole seconds, at least 1) for a wait.
function ratelimit.retry_after(wait)
  return tostring(math.max(1, math.ceil(wait)))
end

return ratelimit
