-- Ingest a batch of events of ONE shard atomically (every key shares the shard's hash tag).
-- KEYS[1]            the shard's event stream
-- per event i (0-based), KEYS[2+14i .. 15+14i] (keys.py `event_keys` builds them in this order):
--   +0  seen set (event ids of the timestamp's hour)
--   +1  minute count   +2  minute users set   +3  minute pages zset   +4  minute page_users zset
--   +5  hour count     +6  hour HLL           +7  hour users set      +8  hour pages zset
--   +9  hour page_users zset
--   +10 day count      +11 day HLL            +12 day users set
--   +13 hour HLL of the event's page (without a page: a repeated key, left alone)
-- ARGV[1]            number of events
-- ARGV[2]            "1": append new events to the stream; "0": replay from the archive
--                    (rebuild), which must not archive them again
-- per event i, ARGV[3+9i .. 11+9i]:
--   +0 event id   +1 user id   +2 page url ("" = none)
--   +3 "1" = EA_UNIQUES=exact: exact user sets for hour and day, and exact page users per
--        hour too; "0" = hour and day users in HLLs only
--   +4 seen expire-at   +5 minute expire-at   +6 hour expire-at   +7 day expire-at
--   +8 the archived record (JSON)
-- Returns one integer per event: 1 = new (counted and streamed), 0 = duplicate (nothing changed).
local KEYS_PER_EVENT = 14
local ARGS_PER_EVENT = 9
local n = tonumber(ARGV[1])
local stream = KEYS[1]
local to_stream = ARGV[2] == '1'

-- Each key gets its bucket's expiry once, when this call created it. A key's birth is
-- read from a reply we get anyway wherever one key is always written with another: the
-- minute's users set is born with its count (every event has a user), the page-user
-- pairs with the pages zset, a page's HLL with the page's first count in the hour. Keys
-- that can appear later in a bucket (exact sets, once EA_UNIQUES switches to exact) ask
-- their own size. One EXPIREAT per key and bucket, not a check per event: this script
-- is the engine's cost per event.
local function add_user(key, user, at)
  if redis.call('SADD', key, user) == 1 and redis.call('SCARD', key) == 1 then
    redis.call('EXPIREAT', key, at)
  end
end

-- Counts ``page`` in ``pages`` and adds (page, user) to ``page_users`` (if given).
-- Returns true when this was the page's first count in the bucket.
local function count_page(pages, page_users, page, user, at)
  local first = tonumber(redis.call('ZINCRBY', pages, 1, page)) == 1
  if page_users then
    -- "<url> NUL <user>": one page's users form one lexicographic range (see keys.py).
    redis.call('ZADD', page_users, 0, page .. '\0' .. user)
  end
  if first and redis.call('ZCARD', pages) == 1 then
    redis.call('EXPIREAT', pages, at)
    if page_users then
      redis.call('EXPIREAT', page_users, at)
    end
  end
  return first
end

-- An hour or a day: KEYS[c] its count, KEYS[c + 1] its HLL, KEYS[c + 2] its exact users.
local function count_span(c, user, exact, at)
  local first = redis.call('INCR', KEYS[c]) == 1
  redis.call('PFADD', KEYS[c + 1], user)
  if first then
    redis.call('EXPIREAT', KEYS[c], at)
    redis.call('EXPIREAT', KEYS[c + 1], at)
  end
  if exact then
    add_user(KEYS[c + 2], user, at)
  end
end

local function add_page_user(page_users, page, user, at)
  if redis.call('ZADD', page_users, 0, page .. '\0' .. user) == 1
      and redis.call('ZCARD', page_users) == 1 then
    redis.call('EXPIREAT', page_users, at)
  end
end

local out = {}
for i = 0, n - 1 do
  local k = 1 + KEYS_PER_EVENT * i
  local a = 2 + ARGS_PER_EVENT * i
  local seen = KEYS[k + 1]
  if redis.call('SADD', seen, ARGV[a + 1]) == 0 then
    out[i + 1] = 0
  else
    if redis.call('SCARD', seen) == 1 then
      redis.call('EXPIREAT', seen, ARGV[a + 5])
    end
    local user, page, exact = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4] == '1'
    local m_at, h_at, d_at = ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
    -- minute: exact count, exact users, pages with exact users per page.
    local m_count, m_users = KEYS[k + 2], KEYS[k + 3]
    local m_first = redis.call('INCR', m_count) == 1
    redis.call('SADD', m_users, user)
    if m_first then
      redis.call('EXPIREAT', m_count, m_at)
      redis.call('EXPIREAT', m_users, m_at)
    end
    if page ~= '' then
      count_page(KEYS[k + 4], KEYS[k + 5], page, user, m_at)
    end
    -- hour and day: exact count and a HyperLogLog (born with the count, as it is written
    -- by every event); exact user sets only when configured, as they cost the most.
    count_span(k + 6, user, exact, h_at)
    count_span(k + 11, user, exact, d_at)
    -- hour pages: counts, a HyperLogLog per page (a key per page, at most 12 KiB) and,
    -- when exact, the page-user pairs (about 135 bytes each: see README "Memory").
    if page ~= '' then
      local page_hll = KEYS[k + 14]
      local first = count_page(KEYS[k + 9], false, page, user, h_at)
      redis.call('PFADD', page_hll, user)
      if first then
        redis.call('EXPIREAT', page_hll, h_at)
      end
      if exact then
        add_page_user(KEYS[k + 10], page, user, h_at)
      end
    end
    if to_stream then
      redis.call('XADD', stream, '*', 'e', ARGV[a + 9])
    end
    out[i + 1] = 1
  end
end
return out
