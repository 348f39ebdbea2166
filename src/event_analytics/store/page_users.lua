-- Distinct users of each given page over ONE shard's buckets.
-- KEYS      the buckets' page_users sorted sets ("<url> NUL <user>" members, all scored 0)
-- ARGV      page URLs
-- Returns one count per URL. Read-only (ZLEXCOUNT, ZRANGEBYLEX and Lua tables).
local out = {}
for i, page in ipairs(ARGV) do
  local lo, hi = '[' .. page .. '\0', '(' .. page .. '\1'
  if #KEYS == 1 then
    out[i] = redis.call('ZLEXCOUNT', KEYS[1], lo, hi)
  else
    local seen, n = {}, 0
    for _, key in ipairs(KEYS) do
      for _, member in ipairs(redis.call('ZRANGEBYLEX', key, lo, hi)) do
        if not seen[member] then
          seen[member], n = true, n + 1
        end
      end
    end
    out[i] = n
  end
end
return out
