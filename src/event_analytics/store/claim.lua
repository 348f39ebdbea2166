-- Claim event ids on THEIR OWN shard (the id's hash tag), for events whose user lives on
-- another shard: step 1 of 3 of the cross-shard protocol (docs/dedup.md). A fresh id is
-- stored in the id shard's dedup hashes (the same ones ingest.lua uses) and its event in
-- the shard's outbox, in one atomic call: from here on the event is durable, and counted
-- exactly once whatever crashes (step 2 applies it on the user's shard, idempotently;
-- step 3 deletes the outbox entry; a resend or the sweeper redoes 2 and 3).
--
-- KEYS[1] the id shard's dedup stem (keys.seen_stem)   KEYS[2] its outbox (keys.outbox)
-- ARGV[1] seconds per dedup generation   ARGV[2] older generations still checked
-- ARGV[3] this call's token   ARGV[4] events
-- per event i, ARGV[5+2i], ARGV[6+2i]: the event id, the event (outbox payload)
-- Returns per event: 1 = claimed now (apply it), 0 = a duplicate (applied or being so),
-- or the outbox payload of an earlier claim not yet confirmed applied (apply that one,
-- idempotently, then answer duplicate).
local gen_s, older, token, n = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local now = tonumber(redis.call('TIME')[1])
local g = math.floor(now / gen_s)
local ids = {}
for i = 0, n - 1 do ids[i + 1] = ARGV[5 + 2 * i] end
local known = {}
for back = 0, older do
  local reply = redis.call('HMGET', KEYS[1] .. (g - back), unpack(ids))
  for j, v in ipairs(reply) do
    if v and not known[j] then known[j] = v end
  end
end
local current = KEYS[1] .. g
local out, taken, fresh, outbox = {}, {}, {}, {}
for j, id in ipairs(ids) do
  if taken[id] then
    out[j] = 0
  else
    taken[id] = true
    if not known[j] then
      fresh[#fresh + 1] = id
      fresh[#fresh + 1] = token
      outbox[#outbox + 1] = id
      outbox[#outbox + 1] = ARGV[6 + 2 * (j - 1)]
      out[j] = 1
    elseif known[j] == token then
      out[j] = 1  -- this very call sent again by the client library: apply, as it was told
    else
      local pending = redis.call('HGET', KEYS[2], id)
      out[j] = pending or 0
    end
  end
end
if #fresh > 0 then
  local added = redis.call('HSET', current, unpack(fresh))
  if redis.call('HLEN', current) == added then
    redis.call('EXPIREAT', current, (g + older + 1) * gen_s + 60)
  end
  redis.call('HSET', KEYS[2], unpack(outbox))
end
return out
