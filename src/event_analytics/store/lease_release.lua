-- Drop a lease, only if its owner asks (compare and act, atomically).
-- KEYS[1]   the lease
-- ARGV[1]   the owner
-- Returns 1 if dropped, 0 if the lease is gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
