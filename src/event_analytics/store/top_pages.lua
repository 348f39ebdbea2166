-- The pages of ONE shard's buckets with their summed event counts, most counted first.
-- KEYS      the buckets' pages sorted sets (URL -> events)
-- ARGV[1]   how many pages to return; 0 = all of them (the caller merges shards)
-- ARGV[2]   the member pages past EA_MAX_PAGES_PER_BUCKET count into (keys.OTHER_PAGE)
-- Returns {other, url, count, url, count, ...}: the events counted into ARGV[2] (0 when
-- no bucket was capped), then the pages, count descending, then URL ascending (bytewise,
-- which for UTF-8 is code point order, as Python sorts str); ARGV[2] is not ranked.
-- Read-only: ZUNION replies without storing.
local limit, other_page = tonumber(ARGV[1]), ARGV[2]
if #KEYS == 0 then
  return {0}
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
local out = {0}
local taken = 0
local last = #flat - 1
while last >= 1 and (limit == 0 or taken < limit) do
  local score = flat[last + 1]
  local first = last
  while first > 1 and flat[first - 1] == score do
    first = first - 2
  end
  for i = first, last, 2 do
    if flat[i] == other_page then
      out[1] = tonumber(flat[i + 1])
    elseif limit == 0 or taken < limit then
      out[#out + 1] = flat[i]
      out[#out + 1] = tonumber(flat[i + 1])
      taken = taken + 1
    end
  end
  last = first - 2
end
if out[1] == 0 then  -- the ranking stopped above it: look in the rest
  for i = 1, last, 2 do
    if flat[i] == other_page then
      out[1] = tonumber(flat[i + 1])
      break
    end
  end
end
return out
