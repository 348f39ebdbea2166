-- Move one entry of ONE shard's stream to its dead-letter stream, atomically with its ack.
-- KEYS[1]   the shard's stream   KEYS[2] its dead-letter stream
-- ARGV[1]   the consumer group   ARGV[2] the entry id
-- ARGV[3..] the dead letter: field, value, field, value...
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
