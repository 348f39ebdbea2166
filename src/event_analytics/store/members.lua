-- The members of each key of ONE shard: a users set's, or one page's range of a
-- page_users zset ("<url> NUL <user>" members, the bytewise range [url NUL, url \1)).
-- KEYS      the structures; the caller keeps a call's entries within its bound
-- ARGV[1]   "set" or "page"
-- ARGV[2]   the page URL in "page" mode
-- Returns one array of members per key. One call instead of one command per key: the
-- client's cost per command (packing, routing, parsing) was most of a union's time.
-- Read-only.
local out = {}
if ARGV[1] == 'set' then
  for i, key in ipairs(KEYS) do
    out[i] = redis.call('SMEMBERS', key)
  end
else
  local lo, hi = '[' .. ARGV[2] .. '\0', '(' .. ARGV[2] .. '\1'
  for i, key in ipairs(KEYS) do
    out[i] = redis.call('ZRANGEBYLEX', key, lo, hi)
  end
end
return out
