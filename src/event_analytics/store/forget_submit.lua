-- Queue an erasure job (store/forget_jobs.py), unless MAX jobs wait already.
-- KEYS[1]   list of job ids, oldest first          (Keys.forget_queue)
-- KEYS[2]   the new job's hash                     (Keys.forget_job)
-- ARGV[1]   the most jobs the queue may hold
-- ARGV[2]   the job's id    ARGV[3..] the job's hash, field then value
-- Returns the job's place in the queue (1: it runs next), or 0 if the queue is full.
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
return redis.call('RPUSH', KEYS[1], ARGV[2])
