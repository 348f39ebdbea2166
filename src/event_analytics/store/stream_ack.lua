-- Acknowledge, delete and count archived entries of ONE shard's stream, atomically.
-- A script, not MULTI: atomic on one slot alike on a node and a cluster, one round trip.
-- KEYS[1]   the shard's stream   KEYS[2] its archived counter
-- ARGV[1]   the consumer group   ARGV[2] how many to add to the counter
-- ARGV[3..] the entry ids (at least one; at most a chunk, for unpack's stack limit)
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3))
redis.call('XDEL', KEYS[1], unpack(ARGV, 3))
if tonumber(ARGV[2]) > 0 then redis.call('INCRBY', KEYS[2], ARGV[2]) end
return 1
