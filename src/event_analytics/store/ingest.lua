-- Ingest a group of events of ONE shard atomically (every name shares the shard's hash tag).
--
-- Names once per call, not per event (DESIGN.md "Engine work per event"): the call carries
-- each distinct bucket's key stems once and this script appends the suffixes; keys.py is
-- the one definition of the names, and tests/test_store.py checks that both agree.
--
-- KEYS[1]            the shard's event stream: ONE entry per call, its new events' records
--                    in field "e", one JSON per line (the archiver writes N lines from it)
-- KEYS[2]            live: the stem of the shard's dedup hashes (keys.seen_stem); replay:
--                    the stem of its replayed-call markers (keys.replayed_stem)
-- KEYS[3]            the stream's extra records: sum over its entries of (records - 1)
-- per bucket b (0-based; a bucket = one event type and minute), KEYS[4+3b .. 6+3b]:
--   the minute, hour and day stems (like ea:{3}:page_view:m:2026-11-27T22:14, keys.bucket)
-- ARGV[1] events   ARGV[2] buckets   ARGV[3] distinct pages
-- ARGV[4] "1": dedup, count and stream the events; "0": replay from the archive (rebuild):
--         count only (the archive holds each event once; live dedup memory is left alone)
-- ARGV[5] "1" = EA_UNIQUES=exact: exact user sets for hour and day, and exact page users
--         per hour too; "0" = hour and day users in HLLs only
-- ARGV[6] "1": aggregate the writes per distinct key (big calls); "0": per event
-- ARGV[7] seconds per dedup generation   ARGV[8] older generations still checked
-- ARGV[9] this call's token (random, made once per call by the caller)
-- per bucket b, ARGV[10+3b .. 12+3b]: minute, hour, day expire-at (unix seconds)
-- per page p, the next 2 ARGV: its URL and its digest (the page HLL's name, keys.py)
-- per event i, the next 5 ARGV: id, user, page number (1-based; 0 = none),
--   bucket number (1-based), the archived record (JSON; "" on replay)
-- Returns one integer per event: 1 = new (counted and streamed), 0 = duplicate (nothing changed).
local S_COUNT, S_USERS, S_HLL = ':count', ':users', ':hll'
local S_PAGES, S_PAGE_USERS, S_PAGE_HLL = ':pages', ':page_users', ':page_hll:'

local n, nb, np = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local stream, live = KEYS[1], ARGV[4] == '1'
local exact, aggregate = ARGV[5] == '1', ARGV[6] == '1'
local gen_s, older, token = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local to_stream = live

local B = {}
for b = 0, nb - 1 do
  local k, a = 4 + 3 * b, 10 + 3 * b
  local m, h, d = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  B[b + 1] = {
    m_at = ARGV[a], h_at = ARGV[a + 1], d_at = ARGV[a + 2],
    m = m, h = h, d = d,
    m_count = m .. S_COUNT, m_users = m .. S_USERS, m_pages = m .. S_PAGES,
    m_page_users = m .. S_PAGE_USERS,
    h_count = h .. S_COUNT, h_hll = h .. S_HLL, h_users = h .. S_USERS, h_pages = h .. S_PAGES,
    h_page_users = h .. S_PAGE_USERS,
    d_count = d .. S_COUNT, d_hll = d .. S_HLL, d_users = d .. S_USERS,
  }
end
local P = {}
local pa = 10 + 3 * nb
for p = 0, np - 1 do
  P[p + 1] = {url = ARGV[pa + 2 * p], digest = ARGV[pa + 2 * p + 1]}
end
local ea = pa + 2 * np  -- ARGV index of the first event's id

-- Variadic commands in bounded chunks (Lua's unpack() has a stack limit); the replies
-- are summed (SADD, ZADD, HSET: members added).
local CHUNK = 1000
local function variadic(cmd, key, items)
  local added = 0
  for s = 1, #items, CHUNK do
    added = added + redis.call(cmd, key, unpack(items, s, math.min(s + CHUNK - 1, #items)))
  end
  return added
end

-- A set (hash, zset) born in this call has exactly the members this call added.
local function expire_if_born(key, added, size_cmd, at)
  if added > 0 and redis.call(size_cmd, key) == added then
    redis.call('EXPIREAT', key, at)
  end
end

-- out[i]: the reply (1 new, 0 duplicate); write[i]: whether this call counts event i.
local out, write = {}, {}
local records = {}  -- of the new events, for the stream

-- Dedup by event id alone, whatever the event's timestamp or user: hashes id -> token of
-- the call that stored it, one per generation of ``gen_s`` seconds of the engine's own
-- clock (one clock per shard, whichever API process calls). An id is looked up in the
-- current and the ``older`` previous generations and stored in the current one, so it is
-- remembered at least older * gen_s seconds (the window) and at most one generation
-- more. An id found with THIS call's token was stored by this very call, sent again by
-- the client library after a lost reply: it is reported new again (what the first
-- attempt answered), and not counted twice.
local function dedup()
  local now = tonumber(redis.call('TIME')[1])
  local g = math.floor(now / gen_s)
  local ids = {}
  for i = 0, n - 1 do ids[i + 1] = ARGV[ea + 5 * i] end
  local known = {}
  for back = 0, older do
    local key = KEYS[2] .. (g - back)
    for s = 1, n, CHUNK do
      local reply = redis.call('HMGET', key, unpack(ids, s, math.min(s + CHUNK - 1, n)))
      for j, v in ipairs(reply) do
        if v and not known[s + j - 1] then known[s + j - 1] = v end
      end
    end
  end
  local taken, fresh = {}, {}
  for j, id in ipairs(ids) do
    if taken[id] then
      out[j] = 0  -- twice in this call: the first one counts
    else
      taken[id] = true
      if known[j] then
        out[j] = known[j] == token and 1 or 0
      else
        out[j], write[j] = 1, true
        fresh[#fresh + 1] = id
        fresh[#fresh + 1] = token
      end
    end
  end
  local current = KEYS[2] .. g
  expire_if_born(current, variadic('HSET', current, fresh), 'HLEN', (g + older + 1) * gen_s + 60)
end


-- Each key gets its bucket's expiry once, when this call created it. A key's birth is
-- read from a reply we get anyway wherever one key is always written with another: the
-- minute's users set is born with its count (every event has a user), the page-user
-- pairs with the pages zset, a page's HLL with the page's first count in the hour. Keys
-- that can appear later in a bucket (exact sets, once EA_UNIQUES switches to exact) ask
-- their own size. One EXPIREAT per key and bucket, not a check per event: this script
-- is the engine's cost per event.

-- == Small calls: one command per event and structure ==================================

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

-- An hour or a day: its count, its HLL, its exact users.
local function count_span(count, hll, users, user, at)
  local first = redis.call('INCR', count) == 1
  redis.call('PFADD', hll, user)
  if first then
    redis.call('EXPIREAT', count, at)
    redis.call('EXPIREAT', hll, at)
  end
  if exact then
    add_user(users, user, at)
  end
end

local function add_page_user(page_users, page, user, at)
  if redis.call('ZADD', page_users, 0, page .. '\0' .. user) == 1
      and redis.call('ZCARD', page_users) == 1 then
    redis.call('EXPIREAT', page_users, at)
  end
end

local function per_event()
  for i = 0, n - 1 do
    local a = ea + 5 * i
    local b = B[tonumber(ARGV[a + 3])]
    if write[i + 1] then
      local user, pn = ARGV[a + 1], tonumber(ARGV[a + 2])
      local page = pn > 0 and P[pn].url or nil
      -- minute: exact count, exact users, pages with exact users per page.
      local m_first = redis.call('INCR', b.m_count) == 1
      redis.call('SADD', b.m_users, user)
      if m_first then
        redis.call('EXPIREAT', b.m_count, b.m_at)
        redis.call('EXPIREAT', b.m_users, b.m_at)
      end
      if page then
        count_page(b.m_pages, b.m_page_users, page, user, b.m_at)
      end
      -- hour and day: exact count and a HyperLogLog (born with the count, as it is
      -- written by every event); exact user sets only when configured, as they cost most.
      count_span(b.h_count, b.h_hll, b.h_users, user, b.h_at)
      count_span(b.d_count, b.d_hll, b.d_users, user, b.d_at)
      -- hour pages: counts, a HyperLogLog per page (a key per page, at most 12 KiB) and,
      -- when exact, the page-user pairs (about 135 bytes each: see README "Memory").
      if page then
        local page_hll = b.h .. S_PAGE_HLL .. P[pn].digest
        local first = count_page(b.h_pages, false, page, user, b.h_at)
        redis.call('PFADD', page_hll, user)
        if first then
          redis.call('EXPIREAT', page_hll, b.h_at)
        end
        if exact then
          add_page_user(b.h_page_users, page, user, b.h_at)
        end
      end
      if to_stream then records[#records + 1] = ARGV[a + 4] end
    end
  end
end

-- == Big calls: one command per distinct key ===========================================

-- One span (minute, hour or day) of one stem: what the call's new events add to it.
local function span(spans, order, stem, at)
  local s = spans[stem]
  if not s then
    s = {stem = stem, at = at, n = 0, users = {}, pages = {}, page_order = {},
         page_users = {}, pairs = {}}
    spans[stem] = s
    order[#order + 1] = s
  end
  return s
end

local function add_page(s, pn, user, keep_users)
  if not s.pages[pn] then
    s.pages[pn] = 0
    s.page_order[#s.page_order + 1] = pn
    if keep_users then s.page_users[pn] = {} end
  end
  s.pages[pn] = s.pages[pn] + 1
  if keep_users then
    local list = s.page_users[pn]
    list[#list + 1] = user
  end
end

-- ZINCRBY once per distinct page; returns whether the zset was born in this call.
local function write_pages(s, key)
  local all_first = true
  local firsts = {}
  for _, pn in ipairs(s.page_order) do
    local by = s.pages[pn]
    local first = tonumber(redis.call('ZINCRBY', key, by, P[pn].url)) == by
    firsts[pn] = first
    all_first = all_first and first
  end
  local born = all_first and redis.call('ZCARD', key) == #s.page_order
  if born then
    redis.call('EXPIREAT', key, s.at)
  end
  return born, firsts
end

local function aggregated()
  -- Gather what the new events add to each distinct minute, hour and day.
  local minutes, hours, days = {}, {}, {}
  local m_order, h_order, d_order = {}, {}, {}
  for i = 0, n - 1 do
    if write[i + 1] then
      local a = ea + 5 * i
      local b = B[tonumber(ARGV[a + 3])]
      local user, pn = ARGV[a + 1], tonumber(ARGV[a + 2])
      local m = span(minutes, m_order, b.m, b.m_at)
      local h = span(hours, h_order, b.h, b.h_at)
      local d = span(days, d_order, b.d, b.d_at)
      m.n, h.n, d.n = m.n + 1, h.n + 1, d.n + 1
      m.users[#m.users + 1] = user
      h.users[#h.users + 1] = user
      d.users[#d.users + 1] = user
      if pn > 0 then
        add_page(m, pn, user, false)
        add_page(h, pn, user, true)
        local pair = P[pn].url .. '\0' .. user
        m.pairs[#m.pairs + 1] = 0
        m.pairs[#m.pairs + 1] = pair
        if exact then
          h.pairs[#h.pairs + 1] = 0
          h.pairs[#h.pairs + 1] = pair
        end
      end
      if to_stream then records[#records + 1] = ARGV[a + 4] end
    end
  end

  for _, m in ipairs(m_order) do
    local count, users = m.stem .. S_COUNT, m.stem .. S_USERS
    local born = redis.call('INCRBY', count, m.n) == m.n
    variadic('SADD', users, m.users)
    if born then
      redis.call('EXPIREAT', count, m.at)
      redis.call('EXPIREAT', users, m.at)
    end
    if #m.page_order > 0 then
      local page_users = m.stem .. S_PAGE_USERS
      local pages_born = write_pages(m, m.stem .. S_PAGES)
      variadic('ZADD', page_users, m.pairs)
      if pages_born then
        redis.call('EXPIREAT', page_users, m.at)
      end
    end
  end
  for _, spans in ipairs({h_order, d_order}) do
    for _, s in ipairs(spans) do
      local count, hll = s.stem .. S_COUNT, s.stem .. S_HLL
      local born = redis.call('INCRBY', count, s.n) == s.n
      variadic('PFADD', hll, s.users)
      if born then
        redis.call('EXPIREAT', count, s.at)
        redis.call('EXPIREAT', hll, s.at)
      end
      if exact then
        local users = s.stem .. S_USERS
        expire_if_born(users, variadic('SADD', users, s.users), 'SCARD', s.at)
      end
    end
  end
  for _, h in ipairs(h_order) do
    if #h.page_order > 0 then
      local _, firsts = write_pages(h, h.stem .. S_PAGES)
      for _, pn in ipairs(h.page_order) do
        local page_hll = h.stem .. S_PAGE_HLL .. P[pn].digest
        variadic('PFADD', page_hll, h.page_users[pn])
        if firsts[pn] then
          redis.call('EXPIREAT', page_hll, h.at)
        end
      end
      if exact then
        local page_users = h.stem .. S_PAGE_USERS
        expire_if_born(page_users, variadic('ZADD', page_users, h.pairs), 'ZCARD', h.at)
      end
    end
  end
end

if live then
  dedup()
else
  for i = 1, n do out[i], write[i] = 1, true end
  -- Replay has no dedup: a call the client library sends again after a lost reply must
  -- not count twice. Its token marks it done (for an hour: a rebuild's retry is at once).
  if not redis.call('SET', KEYS[2] .. token, 1, 'NX', 'EX', 3600) then
    return out
  end
end
if aggregate then
  aggregated()
else
  per_event()
end
-- One entry per call: an entry costs the engine about as much as its records' bytes
-- together, however many there are; the stream's length in events stays exact (XLEN
-- plus the extra records, which the archiver's ack subtracts).
if #records > 0 then
  redis.call('XADD', stream, '*', 'e', table.concat(records, '\n'))
  if #records > 1 then
    redis.call('INCRBY', KEYS[3], #records - 1)
  end
end
return out
