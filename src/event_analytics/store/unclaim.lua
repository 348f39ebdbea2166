-- Undo claims (claim.lua) of events their user's shard refused (a new event type past
-- EA_MAX_EVENT_TYPES): the event was never counted, so its id must not stay remembered
-- (a resend would be answered "duplicate" for an event that is in no counter).
--
-- KEYS[1] the id shard's dedup stem (keys.seen_stem)   KEYS[2] its outbox (keys.outbox)
-- ARGV[1] seconds per dedup generation   ARGV[2] older generations still checked
-- ARGV[3..] the event ids
-- Only an id whose outbox entry is still there is forgotten: that entry is the proof that
-- the claim was never applied (step 3 deletes it once it was). Returns the ids forgotten.
local gen_s, older = tonumber(ARGV[1]), tonumber(ARGV[2])
local g = math.floor(tonumber(redis.call('TIME')[1]) / gen_s)
local forgotten = 0
for i = 3, #ARGV do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then
    for back = 0, older do
      redis.call('HDEL', KEYS[1] .. (g - back), ARGV[i])
    end
    forgotten = forgotten + 1
  end
end
return forgotten
