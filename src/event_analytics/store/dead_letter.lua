-- Move one entry of ONE shard's stream to its dead-letter stream, atomically with its ack.
-- KEYS[1]   the shard's stream   KEYS[2] its dead-letter stream   KEYS[3] its extra records
-- ARGV[1]   the consumer group   ARGV[2] the entry id   ARGV[3] the records it holds
-- ARGV[4..] the dead letter: field, value, field, value...
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if redis.call('XDEL', KEYS[1], ARGV[2]) == 1 and tonumber(ARGV[3]) > 1 then
  redis.call('DECRBY', KEYS[3], tonumber(ARGV[3]) - 1)
end
return 1
