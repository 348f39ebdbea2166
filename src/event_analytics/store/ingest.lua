-- Ingest a group of events of ONE shard atomically (every name shares the shard's hash tag).
--
-- Names once per call, not per event (an event carries 5 values, not its key names): the
-- call carries each distinct bucket's key stems once and this script appends the
-- suffixes; keys.py is the one definition of the names, and tests/test_store.py checks
-- that both agree.
--
-- The header (KEYS[1..5], ARGV[1..13]) is store/ingest_call.py's IngestCall, field for
-- field in order, read below one value per line under the field's own name; a test
-- (tests/test_store.py) holds the two together.
--
-- KEYS[1]            the shard's event stream: ONE entry per call, its new events' records
--                    in field "e", one JSON per line (the archiver writes N lines from it)
-- KEYS[2]            live: the stem of the shard's dedup hashes (keys.seen_stem); replay:
--                    the stem of its replayed-call markers (keys.replayed_stem)
-- KEYS[3]            the stream's extra records: sum over its entries of (records - 1)
-- KEYS[4]            the shard's set of event types (keys.event_types)
-- KEYS[5]            the shard's erased users (keys.erased): live events of theirs are refused
-- per bucket b (0-based; a bucket = one event type and minute), KEYS[6+3b .. 8+3b]:
--   the minute, hour and day stems (like ea:{3}:page_view:m:2026-11-27T22:14, keys.bucket)
-- ARGV[1] events   ARGV[2] buckets   ARGV[3] distinct pages
-- ARGV[4] "1": dedup, count and stream the events; "0": replay from the archive (rebuild):
--         count only (the archive holds each event once; live dedup memory is left alone)
-- ARGV[5] "1" = EA_UNIQUES=exact: exact user sets for hour and day, and exact page users
--         per hour too; "0" = hour and day users in HLLs only
-- ARGV[6] "1": aggregate the writes per distinct key (big calls); "0": per event
-- ARGV[7] seconds per dedup generation   ARGV[8] older generations still checked
-- ARGV[9] this call's token (random, made once per call by the caller)
-- ARGV[10] the most event types the shard takes (Caps.event_types)
-- ARGV[11] the most pages per minute and hour bucket (Caps.pages_per_bucket)
-- ARGV[12], ARGV[13] the page the others count into past it (keys.OTHER_PAGE), its digest
-- per bucket b, ARGV[14+4b .. 17+4b]: its event type; minute, hour, day expire-at (unix s)
-- per page p, the next 2 ARGV: its URL and its digest (the page HLL's name, keys.py)
-- per event i, the next 5 ARGV: id, user, page number (1-based; 0 = none),
--   bucket number (1-based), the archived record (JSON; "" on replay)
-- Returns one integer per event (store.Outcome): 1 = new (counted and streamed),
-- 0 = duplicate (nothing changed), 2 = refused: a new event type on a shard that holds
-- the most it takes, 3 = refused: its user was erased (nothing of the event was
-- written, its id is not remembered).
local S_COUNT, S_USERS, S_HLL = ':count', ':users', ':hll'
local S_PAGES, S_PAGE_USERS, S_PAGE_HLL = ':pages', ':page_users', ':page_hll:'

-- The header: IngestCall's fields, in order.
local stream = KEYS[1]
local dedup_stem = KEYS[2]
local stream_extra = KEYS[3]
local event_types = KEYS[4]
local erased = KEYS[5]
local KEY_HEADER = 5
local events = tonumber(ARGV[1])
local buckets = tonumber(ARGV[2])
local pages = tonumber(ARGV[3])
local live = ARGV[4] == '1'
local exact = ARGV[5] == '1'
local aggregate = ARGV[6] == '1'
local generation_s = tonumber(ARGV[7])
local generations = tonumber(ARGV[8])
local token = ARGV[9]
local max_event_types = tonumber(ARGV[10])
local max_pages = tonumber(ARGV[11])
local other_page = ARGV[12]
local other_page_digest = ARGV[13]
local ARG_HEADER = 13

local n, nb, np = events, buckets, pages
local gen_s, older = generation_s, generations
local max_types = max_event_types
local OTHER = {url = other_page, digest = other_page_digest}
local to_stream = live

local B = {}
for b = 0, nb - 1 do
  local k, a = KEY_HEADER + 1 + 3 * b, ARG_HEADER + 1 + 4 * b
  local m, h, d = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  B[b + 1] = {
    type = ARGV[a], m_at = ARGV[a + 1], h_at = ARGV[a + 2], d_at = ARGV[a + 3],
    m = m, h = h, d = d,
    m_count = m .. S_COUNT, m_users = m .. S_USERS, m_pages = m .. S_PAGES,
    m_page_users = m .. S_PAGE_USERS,
    h_count = h .. S_COUNT, h_hll = h .. S_HLL, h_users = h .. S_USERS, h_pages = h .. S_PAGES,
    h_page_users = h .. S_PAGE_USERS,
    d_count = d .. S_COUNT, d_hll = d .. S_HLL, d_users = d .. S_USERS,
  }
end
local P = {}
local pa = ARG_HEADER + 1 + 4 * nb
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

-- out[i]: the reply (1 new, 0 duplicate, 2 refused); write[i]: whether this call counts
-- event i.
local out, write = {}, {}
local records = {}  -- of the new events, for the stream

local function bucket_of(i)  -- 1-based event number -> its bucket
  return B[tonumber(ARGV[ea + 5 * (i - 1) + 3])]
end

-- Event types: a shard takes at most ``max_types`` distinct ones, for good (the set has
-- no expiry: a type it holds keeps working whatever else is sent; a new one past the cap
-- is refused). Asked only for the types of the call's new events, before anything is
-- written, so a refused event leaves nothing behind. Returns the set of allowed types.
local function admit_types(events)
  local names, listed = {}, {}
  for _, i in ipairs(events) do
    local t = bucket_of(i).type
    if not listed[t] then
      listed[t] = true
      names[#names + 1] = t
    end
  end
  local allowed, missing = {}, {}
  local member = redis.call('SMISMEMBER', event_types, unpack(names))
  for j, t in ipairs(names) do
    if member[j] == 1 then allowed[t] = true else missing[#missing + 1] = t end
  end
  if #missing > 0 then
    local take = math.min(#missing, max_types - redis.call('SCARD', event_types))
    if take > 0 then
      for j = 1, take do allowed[missing[j]] = true end
      redis.call('SADD', event_types, unpack(missing, 1, take))
    end
  end
  return allowed
end

-- Dedup by event id alone, whatever the event's timestamp or user: hashes id -> token of
-- the call that stored it, one per generation of ``gen_s`` seconds of the engine's own
-- clock (one clock per shard, whichever API process calls). An id is looked up in the
-- current and the ``older`` previous generations and stored in the current one, so it is
-- remembered at least older * gen_s seconds (the window) and at most one generation
-- more. An id found with THIS call's token was stored by this very call, sent again by
-- the client library after a lost reply: it is reported new again (what the first
-- attempt answered), and not counted twice.
-- Erased users (``forget``): their events are refused before anything else, a retry of
-- an id stored before the erasure too. One SCARD per call while nobody was erased on the
-- shard; then one SMISMEMBER of the call's users.
local function erased_users()
  local blocked = {}
  if redis.call('SCARD', erased) == 0 then return blocked end
  local users = {}
  for i = 0, n - 1 do users[i + 1] = ARGV[ea + 5 * i + 1] end
  for s = 1, n, CHUNK do
    local reply = redis.call('SMISMEMBER', erased, unpack(users, s, math.min(s + CHUNK - 1, n)))
    for j, v in ipairs(reply) do
      if v == 1 then blocked[s + j - 1] = true end
    end
  end
  return blocked
end

local function dedup()
  local now = tonumber(redis.call('TIME')[1])
  local g = math.floor(now / gen_s)
  local blocked = erased_users()
  local ids = {}
  for i = 0, n - 1 do ids[i + 1] = ARGV[ea + 5 * i] end
  local known = {}
  for back = 0, older do
    local key = dedup_stem .. (g - back)
    for s = 1, n, CHUNK do
      local reply = redis.call('HMGET', key, unpack(ids, s, math.min(s + CHUNK - 1, n)))
      for j, v in ipairs(reply) do
        if v and not known[s + j - 1] then known[s + j - 1] = v end
      end
    end
  end
  local first, candidates = {}, {}
  for j, id in ipairs(ids) do
    if first[id] then
      out[j] = first[id]  -- twice in this call: the first one counts (resolved below)
    else
      first[id] = j
      if blocked[j] then
        out[j] = 3
      elseif known[j] then
        out[j] = known[j] == token and 1 or 0
      else
        candidates[#candidates + 1] = j
      end
    end
  end
  local fresh = {}
  if #candidates > 0 then
    local allowed = admit_types(candidates)
    for _, j in ipairs(candidates) do
      if allowed[bucket_of(j).type] then
        out[j], write[j] = 1, true
        fresh[#fresh + 1] = ids[j]
        fresh[#fresh + 1] = token
      else
        out[j] = 2
      end
    end
  end
  for j, id in ipairs(ids) do
    if first[id] ~= j then
      -- a repeat within the call: a duplicate of its first, or refused with it
      local o = out[first[id]]
      out[j] = (o == 2 or o == 3) and o or 0
    end
  end
  -- The hash's birth from HSET's own reply: each call that stores ids also sets the field
  -- "" (no id is empty), which is new only in a hash this call created (or one claim.lua
  -- created: then the same expiry is set again). One command fewer than asking HLEN.
  if #fresh > 0 then
    local current = dedup_stem .. g
    fresh[#fresh + 1] = ''
    fresh[#fresh + 1] = ''
    if variadic('HSET', current, fresh) > (#fresh - 2) / 2 then
      redis.call('EXPIREAT', current, (g + older + 1) * gen_s + 60)
    end
  end
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

-- Pages: at most ``max_pages`` distinct ones per bucket; a page new to a full bucket
-- counts into OTHER instead (so the bucket's page counts still sum to its events).
-- Counts ``page`` (P[pn]) ``by`` times in ``pages``; returns the page it counted into
-- (``page`` or OTHER), whether that was its first count in the bucket, and whether the
-- zset was born in this call. Asks ZCARD only when a page is new to the bucket.
local function place(pages, page, by, at)
  if tonumber(redis.call('ZINCRBY', pages, by, page.url)) ~= by then
    return page, false, false
  end
  local card = redis.call('ZCARD', pages)
  if card == 1 then
    redis.call('EXPIREAT', pages, at)
    return page, true, true
  end
  if card <= max_pages then
    return page, true, false
  end
  redis.call('ZREM', pages, page.url)
  return OTHER, tonumber(redis.call('ZINCRBY', pages, by, OTHER.url)) == by, false
end

-- Counts ``page`` in ``pages`` and adds (page, user) to ``page_users`` (if given).
-- Returns the page counted into and whether this was its first count in the bucket.
local function count_page(pages, page_users, page, user, at)
  local counted, first, born = place(pages, page, 1, at)
  if page_users then
    -- "<url> NUL <user>": one page's users form one lexicographic range (see keys.py).
    redis.call('ZADD', page_users, 0, counted.url .. '\0' .. user)
    if born then
      redis.call('EXPIREAT', page_users, at)
    end
  end
  return counted, first
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
      local page = pn > 0 and P[pn] or nil
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
        local counted, first = count_page(b.h_pages, false, page, user, b.h_at)
        local page_hll = b.h .. S_PAGE_HLL .. counted.digest
        redis.call('PFADD', page_hll, user)
        if first then
          redis.call('EXPIREAT', page_hll, b.h_at)
        end
        if exact then
          add_page_user(b.h_page_users, counted.url, user, b.h_at)
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

local function add_page(s, pn, user)
  local list = s.page_users[pn]
  if not list then
    list = {}
    s.pages[pn], s.page_users[pn] = 0, list
    s.page_order[#s.page_order + 1] = pn
  end
  s.pages[pn] = s.pages[pn] + 1
  list[#list + 1] = user
end

-- ZINCRBY once per distinct page; a page new to a bucket at ``max_pages`` counts into
-- OTHER instead (place() for one page; here one ZCARD per bucket, as nothing else writes
-- the zset meanwhile). Returns whether the zset was born in this call, the page each page
-- number counted into, and, by URL, whether that was its first count in the bucket.
local function write_pages(s, key)
  local born, counted, firsts, card, other_by = false, {}, {}, nil, 0
  for idx, pn in ipairs(s.page_order) do
    local by, page = s.pages[pn], P[pn]
    counted[pn] = page
    if tonumber(redis.call('ZINCRBY', key, by, page.url)) == by then
      if card then card = card + 1 else card = redis.call('ZCARD', key) end
      if idx == 1 and card == 1 then born = true end
      if card > max_pages then
        redis.call('ZREM', key, page.url)
        card = card - 1
        counted[pn], other_by = OTHER, other_by + by
      else
        firsts[page.url] = true
      end
    end
  end
  if other_by > 0 then
    firsts[OTHER.url] = tonumber(redis.call('ZINCRBY', key, other_by, OTHER.url)) == other_by
  end
  if born then
    redis.call('EXPIREAT', key, s.at)
  end
  return born, counted, firsts
end

-- The (score 0, "<url> NUL <user>") pairs of a span's pages (if ``with_pairs``), each
-- under the page it counted into; and the users of each page counted into, by URL, and
-- those pages in first-seen order.
local function page_pairs(s, counted, with_pairs)
  local pairs_, users, order, k = {}, {}, {}, 0
  for _, pn in ipairs(s.page_order) do
    local page, list = counted[pn], s.page_users[pn]
    if with_pairs then
      local head = page.url .. '\0'
      for j = 1, #list do
        pairs_[k + 1], pairs_[k + 2] = 0, head .. list[j]
        k = k + 2
      end
    end
    local have = users[page.url]
    if not have then
      users[page.url] = list  -- the page's own list (read once, after this)
      order[#order + 1] = page
    else
      for j = 1, #list do have[#have + 1] = list[j] end  -- pages counted into OTHER
    end
  end
  return pairs_, users, order
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
      -- A bucket's spans, looked up once per call (buckets of one hour share its span).
      local m, h, d = b.ms, b.hs, b.ds
      if not m then
        m = span(minutes, m_order, b.m, b.m_at)
        h = span(hours, h_order, b.h, b.h_at)
        d = span(days, d_order, b.d, b.d_at)
        b.ms, b.hs, b.ds = m, h, d
      end
      m.n, h.n, d.n = m.n + 1, h.n + 1, d.n + 1
      m.users[#m.users + 1] = user
      h.users[#h.users + 1] = user
      d.users[#d.users + 1] = user
      if pn > 0 then
        add_page(m, pn, user)
        add_page(h, pn, user)
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
      local pages_born, counted = write_pages(m, m.stem .. S_PAGES)
      variadic('ZADD', page_users, (page_pairs(m, counted, true)))
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
      local _, counted, firsts = write_pages(h, h.stem .. S_PAGES)
      local pairs_, users, order = page_pairs(h, counted, exact)
      for _, page in ipairs(order) do
        local page_hll = h.stem .. S_PAGE_HLL .. page.digest
        variadic('PFADD', page_hll, users[page.url])
        if firsts[page.url] then
          redis.call('EXPIREAT', page_hll, h.at)
        end
      end
      if exact then
        local page_users = h.stem .. S_PAGE_USERS
        expire_if_born(page_users, variadic('ZADD', page_users, pairs_), 'ZCARD', h.at)
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
  if not redis.call('SET', dedup_stem .. token, 1, 'NX', 'EX', 3600) then
    return out
  end
  -- The archive's events were taken: their types join the set whatever the cap (counters
  -- rebuilt from it are the live ones).
  local names, listed = {}, {}
  for b = 1, nb do
    if not listed[B[b].type] then
      listed[B[b].type] = true
      names[#names + 1] = B[b].type
    end
  end
  if #names > 0 then redis.call('SADD', event_types, unpack(names)) end
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
    redis.call('INCRBY', stream_extra, #records - 1)
  end
end
return out
