-- Count and unique users of each minute bucket of ONE shard.
-- KEYS      two per minute: its count string, its users set
-- Returns {count_1, users_1, count_2, users_2, ...}. Read-only.
local out = {}
for i = 1, #KEYS, 2 do
  out[i] = tonumber(redis.call('GET', KEYS[i])) or 0
  out[i + 1] = redis.call('SCARD', KEYS[i + 1])
end
return out
