-- Delete one shard's keys of a day and name the last entry of its stream, atomically
-- (store/clear.py, for a rebuild beside live traffic: the stream entries up to that id
-- were counted in what this deleted, and those after it were not).
-- KEYS[1]        the shard's event stream
-- KEYS[2 ..]     the keys to delete (all under the shard's hash tag)
-- Returns the id of the stream's last entry, or '' if it has none.
for i = 2, #KEYS, 500 do
  redis.call('UNLINK', unpack(KEYS, i, math.min(i + 499, #KEYS)))
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return '' end
return last[1][1]
