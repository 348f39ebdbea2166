-- The pages of ONE shard's buckets with their summed event counts, most counted first.
-- KEYS      the buckets' pages sorted sets (URL -> events)
-- ARGV[1]   how many pages to return; 0 = all of them (the caller merges shards)
-- Returns {url, count, url, count, ...}: count descending, then URL ascending (bytewise,
-- which for UTF-8 is code point order, as Python sorts str).
-- Read-only: ZUNION replies without storing.
local limit = tonumber(ARGV[1])
if #KEYS == 0 then
  return {}
end
local args = {#KEYS}
for i = 1, #KEYS do
  args[#args + 1] = KEYS[i]
end
args[#args + 1] = 'WITHSCORES'
-- Ascending by score, equal scores ascending by member: walk the runs of equal scores from
-- the top, each run in its own (URL ascending) order. No Lua string comparison is used:
-- it follows the C locale's collation, not bytes.
local flat = redis.call('ZUNION', unpack(args))
local out = {}
local taken = 0
local last = #flat - 1
while last >= 1 and (limit == 0 or taken < limit) do
  local score = flat[last + 1]
  local first = last
  while first > 1 and flat[first - 1] == score do
    first = first - 2
  end
  for i = first, last, 2 do
    if limit > 0 and taken >= limit then
      break
    end
    out[#out + 1] = flat[i]
    out[#out + 1] = tonumber(flat[i + 1])
    taken = taken + 1
  end
  last = first - 2
end
return out
