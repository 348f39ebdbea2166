-- Counts and unique users of groups of buckets of ONE shard, and the union of all groups.
-- KEYS      two per bucket, group after group: a count and a users structure, by mode:
--             "set"       count string, users set            (exact)
--             "hll"       count string, users HyperLogLog    (0.81%)
--             "page"      pages zset, page_users zset        (one page, exact)
--             "page_hll"  pages zset, the page's HyperLogLog (one page, 0.81%)
-- ARGV[1]   the mode
-- ARGV[2]   the page URL in the page modes, "" otherwise
-- ARGV[3..] how many buckets each group has (a timeseries point is one group)
-- Returns {count_1, users_1, ..., count_G, users_G, distinct users over every group}.
-- Read-only on purpose: unions are made by SUNION and multi-key PFCOUNT, which reply
-- without storing, and by Lua tables, so a query never writes to the AOF or replicas.
local mode, page = ARGV[1], ARGV[2]
local by_page = mode == 'page' or mode == 'page_hll'
local hll = mode == 'hll' or mode == 'page_hll'
-- One page's members "<url> NUL <user>" are exactly the bytewise range [url NUL, url \1).
local lo, hi = '[' .. page .. '\0', '(' .. page .. '\1'
local out = {}
local every = {}
local every_seen, every_n = {}, 0
local pos = 1

local function union_size(keys)
  if #keys == 0 then
    return 0
  elseif hll then
    return redis.call('PFCOUNT', unpack(keys))
  elseif #keys == 1 then
    return redis.call('SCARD', keys[1])
  end
  return #redis.call('SUNION', unpack(keys))
end

for g = 3, #ARGV do
  local size = tonumber(ARGV[g])
  local total = 0
  local users = {}
  local seen, n = {}, 0
  for _ = 1, size do
    local count_key, users_key = KEYS[pos], KEYS[pos + 1]
    pos = pos + 2
    if by_page then
      total = total + (tonumber(redis.call('ZSCORE', count_key, page)) or 0)
    else
      total = total + (tonumber(redis.call('GET', count_key)) or 0)
    end
    if mode == 'page' then
      for _, member in ipairs(redis.call('ZRANGEBYLEX', users_key, lo, hi)) do
        if not seen[member] then
          seen[member], n = true, n + 1
        end
        if not every_seen[member] then
          every_seen[member], every_n = true, every_n + 1
        end
      end
    else
      users[#users + 1] = users_key
      every[#every + 1] = users_key
    end
  end
  if mode ~= 'page' then
    n = union_size(users)
  end
  out[#out + 1] = total
  out[#out + 1] = n
end
if mode == 'page' then
  out[#out + 1] = every_n
elseif #ARGV == 3 then
  out[#out + 1] = out[2]  -- one group: its union is the total
else
  out[#out + 1] = union_size(every)
end
return out
