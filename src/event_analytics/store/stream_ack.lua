-- Acknowledge, delete and count archived entries of ONE shard's stream, atomically.
-- A script, not MULTI: atomic on one slot alike on a node and a cluster, one round trip.
-- An entry holds one ingest call's records, one per line: the stream's extra-records
-- counter (keys.stream_extra) drops by (records - 1) for each entry deleted here, so
-- XLEN + extra stays the events in the stream.
-- KEYS[1]   the shard's stream   KEYS[2] its archived counter   KEYS[3] its extra records
-- ARGV[1]   the consumer group   ARGV[2] how many to add to the archived counter
-- ARGV[3]   k, the number of entries (at least one; at most a chunk, for unpack's limit)
-- ARGV[4 .. 3+k] the entry ids   ARGV[4+k .. 3+2k] the records each holds (same order)
local k = tonumber(ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 4, 3 + k))
local extra = 0
for i = 4, 3 + k do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    extra = extra + tonumber(ARGV[i + k]) - 1
  end
end
if extra > 0 then redis.call('DECRBY', KEYS[3], extra) end
if tonumber(ARGV[2]) > 0 then redis.call('INCRBY', KEYS[2], ARGV[2]) end
return 1
