-- Find or create a goal (store/goals.py), atomically: one goal per identity.
-- KEYS[1]   hash goal id -> goal JSON      (Keys.goals)
-- KEYS[2]   hash identity -> goal id       (Keys.goal_index)
-- KEYS[3]   the id counter                 (Keys.goal_ids)
-- ARGV[1]   the goal's identity (site NUL kind NUL name or pattern)
-- ARGV[2]   the goal's JSON, without its id
-- ARGV[3]   the most goals there may be (all sites)
-- Returns {created (1 or 0), id, the stored JSON}: the existing goal when there is one;
-- {-1} when a new one would be past ARGV[3].
local id = redis.call('HGET', KEYS[2], ARGV[1])
if id then
  local stored = redis.call('HGET', KEYS[1], id)
  if stored then return {0, id, stored} end
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {-1} end
id = tostring(redis.call('INCR', KEYS[3]))
redis.call('HSET', KEYS[1], id, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], id)
return {1, id, ARGV[2]}
