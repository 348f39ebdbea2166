-- Renew a lease, only if its owner asks (compare and act, atomically).
-- KEYS[1]   the lease
-- ARGV[1]   the owner   ARGV[2] the new time to live (ms)
-- Returns 1 if renewed, 0 if the lease is gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
