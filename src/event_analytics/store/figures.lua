-- Per bucket of ONE shard: its event count and how many users it holds.
-- KEYS      two per bucket: a count and a users structure, by mode:
--             "set"       count string, users set            (exact)
--             "hll"       count string, users HyperLogLog    (0.81%)
--             "page"      pages zset, page_users zset        (one page, exact)
--             "page_hll"  pages zset, the page's HyperLogLog (one page, 0.81%)
--             "pages"     pages zset, page_users zset        (several pages, exact)
-- ARGV[1]   the mode
-- ARGV[2]   the page URL in the page modes, "" otherwise; in "pages" ARGV[2..] the pages
-- Returns {count_1, users_1, count_2, users_2, ...}, per bucket (in "pages": per bucket,
-- per page in the order given). Every command is O(1) or O(log n)
-- per bucket (a single-key PFCOUNT reads the HLL's cached cardinality), so a call's
-- work is its number of buckets: the caller bounds that. Unions of several buckets are
-- not made here (store/rounds.py fetches their members in bounded calls). Read-only.
local mode, page = ARGV[1], ARGV[2]
if mode == 'pages' then
  -- {count, users} of each page in turn, per bucket: one ZMSCORE for all the pages, and
  -- a page's users only where it has events (as below).
  local pages = {unpack(ARGV, 2)}
  local out = {}
  for i = 1, #KEYS, 2 do
    local counts = redis.call('ZMSCORE', KEYS[i], unpack(pages))
    for j, url in ipairs(pages) do
      local count = tonumber(counts[j]) or 0
      out[#out + 1] = count
      if count == 0 then
        out[#out + 1] = 0
      else
        out[#out + 1] = redis.call('ZLEXCOUNT', KEYS[i + 1], '[' .. url .. '\0',
                                   '(' .. url .. '\1')
      end
    end
  end
  return out
end
local by_page = mode == 'page' or mode == 'page_hll'
-- One page's members "<url> NUL <user>" are exactly the bytewise range [url NUL, url \1).
local lo, hi = '[' .. page .. '\0', '(' .. page .. '\1'
local out = {}
for i = 1, #KEYS, 2 do
  local count_key, users_key = KEYS[i], KEYS[i + 1]
  if by_page then
    out[i] = tonumber(redis.call('ZSCORE', count_key, page)) or 0
  else
    out[i] = tonumber(redis.call('GET', count_key)) or 0
  end
  if mode == 'set' then
    out[i + 1] = redis.call('SCARD', users_key)
  elseif by_page and out[i] == 0 then
    -- The page has no event in the bucket, so no user either: ingest.lua writes a page's
    -- users (its pairs, its HLL) only with its count, in the same call, to the same
    -- expiry. Most buckets of a long range lack most pages: their second command is
    -- saved (top pages over a day of minutes asks 1440 buckets per page).
    out[i + 1] = 0
  elseif mode == 'page' then
    out[i + 1] = redis.call('ZLEXCOUNT', users_key, lo, hi)
  else
    out[i + 1] = redis.call('PFCOUNT', users_key)
  end
end
return out
