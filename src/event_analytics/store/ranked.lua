-- The next entries of each ``:pages`` zset of ONE shard in ranking order: count
-- descending, then URL ascending (bytewise), the order of top pages. The engine keeps a
-- zset in (score, member) ascending order; this walks it one score level at a time, from
-- the highest, reading each level's members in their own ascending order by rank.
-- KEYS       the zsets
-- ARGV[1]    n: at most this many entries of each key
-- per key i, ARGV[2i], ARGV[2i + 1]: its cursor: the score level to read ("+inf" = start
--            at the highest) and how many of that level's members were read already
-- Returns per key {level, read, member_1, score_1, ..., member_k, score_k} (k <= n): the
-- entries, then the cursor after them in its first two fields; level "" = none left.
-- A call's work is O(log N) per key and level plus its entries: the caller bounds them.
-- Read-only.
local n = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local level, read = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
  local got = {'', 0}
  local taken = 0
  if level == '+inf' then
    local top = redis.call('ZRANGE', key, '+inf', '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 1,
                           'WITHSCORES')
    level, read = top[2] or '', 0
  end
  while level ~= '' and taken < n do
    -- The level's members hold ranks [below, below + size) in ascending order.
    local below = redis.call('ZCOUNT', key, '-inf', '(' .. level)
    local size = redis.call('ZCOUNT', key, level, level)
    local take = math.min(n - taken, size - read)
    if take > 0 then
      local entries = redis.call('ZRANGE', key, below + read, below + read + take - 1,
                                 'WITHSCORES')
      for _, v in ipairs(entries) do got[#got + 1] = v end
      taken = taken + #entries / 2
      read = read + #entries / 2
    end
    if read >= size or take <= 0 then
      local lower = redis.call('ZRANGE', key, '(' .. level, '-inf', 'BYSCORE', 'REV',
                               'LIMIT', 0, 1, 'WITHSCORES')
      level, read = lower[2] or '', 0
    end
  end
  got[1], got[2] = level, read
  out[i] = got
end
return out
