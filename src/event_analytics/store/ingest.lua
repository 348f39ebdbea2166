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

-- Each key gets its bucket's expiry once, when this call created it. "Created" is read
-- from the key itself (not from the bucket's count), so a structure that appears later in
-- a bucket (the first page URL, a switch to exact sets) still expires with the bucket.
local function add_user(key, user, at)
  if redis.call('SADD', key, user) == 1 and redis.call('SCARD', key) == 1 then
    redis.call('EXPIREAT', key, at)
  end
end

local function count_page(pages, page, at)
  if tonumber(redis.call('ZINCRBY', pages, 1, page)) == 1 and redis.call('ZCARD', pages) == 1 then
    redis.call('EXPIREAT', pages, at)
  end
end

local function add_page_user(page_users, page, user, at)
  -- "<url> NUL <user>": one page's users form one lexicographic range (see keys.py).
  if redis.call('ZADD', page_users, 0, page .. '\0' .. user) == 1
      and redis.call('ZCARD', page_users) == 1 then
    redis.call('EXPIREAT', page_users, at)
  end
end

local function add_hll(key, user, at)
  local new = redis.call('EXISTS', key) == 0
  redis.call('PFADD', key, user)
  if new then
    redis.call('EXPIREAT', key, at)
  end
end

local function count(key, at)
  if redis.call('INCR', key) == 1 then
    redis.call('EXPIREAT', key, at)
    return true
  end
  return false
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
    count(KEYS[k + 2], m_at)
    add_user(KEYS[k + 3], user, m_at)
    if page ~= '' then
      count_page(KEYS[k + 4], page, m_at)
      add_page_user(KEYS[k + 5], page, user, m_at)
    end
    -- hour and day: exact count and a HyperLogLog (born with the count, as it is written
    -- by every event); exact user sets only when configured, as they cost the most.
    for _, b in ipairs({{k + 6, h_at}, {k + 11, d_at}}) do
      local c, at = b[1], b[2]
      local hll = KEYS[c + 1]
      local first = count(KEYS[c], at)
      redis.call('PFADD', hll, user)
      if first then
        redis.call('EXPIREAT', hll, at)
      end
      if exact then
        add_user(KEYS[c + 2], user, at)
      end
    end
    -- hour pages: counts, a HyperLogLog per page (a key per page, at most 12 KiB) and,
    -- when exact, the page-user pairs (about 135 bytes each: see README "Memory").
    if page ~= '' then
      count_page(KEYS[k + 9], page, h_at)
      add_hll(KEYS[k + 14], user, h_at)
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
