--- Model files a hostile server may send: each a small YAML text that costs
-- a naive loader a lot (memory, time, recursion), built here so that the
-- specs and the measurements of the issue use the same texts.
local string, table = string, table

local M = {}

--- Merge keys over a wide mapping: an anchored mapping of `width` keys,
-- merged (`<<: *b`) into `count` policies (6,000 x 6,000: about 130 KB).
function M.merge_bomb(width, count)
  local keys = {}
  for i = 1, width do keys[i] = "k" .. i .. ": 1" end
  local out = { "base: &b {" .. table.concat(keys, ", ") .. "}", "cache_policies:" }
  for i = 1, count do out[#out + 1] = "  p" .. i .. ": {<<: *b}" end
  return table.concat(out, "\n") .. "\n"
end

--- A billion laughs: `levels` anchored sequences, each of `width` aliases
-- to the one before, the last one a policy's attribute (about 1 KB).
function M.laughs(levels, width)
  local out = { "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]" }
  for i = 1, levels do
    local refs = {}
    for j = 1, width do refs[j] = "*l" .. (i - 1) end
    out[#out + 1] = "l" .. i .. ": &l" .. i .. " [" .. table.concat(refs, ", ") .. "]"
  end
  out[#out + 1] = "cache_policies:"
  out[#out + 1] = "  daily:"
  out[#out + 1] = "    max_cache_age: *l" .. levels
  return table.concat(out, "\n") .. "\n"
end

--- `n` levels of flow sequences as a policy's attribute: [[[...]]].
function M.deep(n)
  return "cache_policies:\n  daily:\n    max_cache_age: " .. string.rep("[", n) .. string.rep("]", n) .. "\n"
end

--- A flow sequence of `n` scalars beside one policy: about 2n bytes and n events.
function M.wide(n)
  return "cache_policies: {daily: {}}\nfiller: [" .. string.rep("0,", n - 1) .. "0]\n"
end

--- A mapping of `n` keys under cache_policies.
function M.many_policies(n)
  local out = { "cache_policies:" }
  for i = 1, n do out[#out + 1] = "  p" .. i .. ": {}" end
  return table.concat(out, "\n") .. "\n"
end

return M
