-- Delete a goal (store/goals.py) and its index entry, if the entry is still this goal's.
-- KEYS[1]   hash goal id -> goal JSON      (Keys.goals)
-- KEYS[2]   hash identity -> goal id       (Keys.goal_index)
-- ARGV[1]   the goal's id
-- ARGV[2]   its identity (read with the goal: an id's goal never changes)
-- Returns 1 if deleted, 0 if it was already gone.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
