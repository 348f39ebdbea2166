-- Ingest a batch of events of ONE shard atomically (every key shares the shard's hash tag).
-- KEYS[1]            the shard's event stream
-- per event i (0-based), KEYS[2+7i .. 8+7i]:
--   seen set (event ids of the timestamp's hour), minute count, minute users set,
--   hour count, hour HLL, day count, day HLL
-- ARGV[1]            number of events
-- ARGV[2]            "1": append new events to the stream; "0": replay from the archive
--                    (rebuild), which must not archive them again
-- per event i, ARGV[3+7i .. 9+7i]:
--   event id, user id, seen expire-at, minute expire-at, hour expire-at, day expire-at,
--   the archived record (JSON)
-- Returns one integer per event: 1 = new (counted and streamed), 0 = duplicate (nothing changed).
local n = tonumber(ARGV[1])
local stream = KEYS[1]
local to_stream = ARGV[2] == '1'
local out = {}
for i = 0, n - 1 do
  local k = 1 + 7 * i
  local a = 2 + 7 * i
  local seen = KEYS[k + 1]
  if redis.call('SADD', seen, ARGV[a + 1]) == 0 then
    out[i + 1] = 0
  else
    if redis.call('SCARD', seen) == 1 then
      redis.call('EXPIREAT', seen, ARGV[a + 3])
    end
    local user = ARGV[a + 2]
    -- minute: exact count and exact user set; hour and day: exact count and a HyperLogLog.
    -- A bucket's keys are born together, so their expiry is set once, when the count is 1.
    for b = 0, 2 do
      local count_key, users_key = KEYS[k + 2 + 2 * b], KEYS[k + 3 + 2 * b]
      local first = redis.call('INCR', count_key) == 1
      if b == 0 then
        redis.call('SADD', users_key, user)
      else
        redis.call('PFADD', users_key, user)
      end
      if first then
        redis.call('EXPIREAT', count_key, ARGV[a + 4 + b])
        redis.call('EXPIREAT', users_key, ARGV[a + 4 + b])
      end
    end
    if to_stream then
      redis.call('XADD', stream, '*', 'e', ARGV[a + 7])
    end
    out[i + 1] = 1
  end
end
return out
