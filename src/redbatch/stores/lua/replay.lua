-- replay: put dead letters' entries back in front of their keys' pending entries, due now.
-- KEYS[1] due zset, KEYS[2] age zset, KEYS[3] stats hash, KEYS[4] dead zset
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] wake channel, ARGV[4] dedupe '1'|'0', ARGV[5..] ids
-- Returns the number of items replayed.
local due, age, stats, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, now, dedupe = ARGV[1], tonumber(ARGV[2]), ARGV[4] == '1'
local replayed = 0
for i = 5, #ARGV do
  local bid = ARGV[i]
  local key = redis.call('HGET', base .. 'x:' .. bid, 'key')
  if key then
    local entries = redis.call('LRANGE', base .. 'xi:' .. bid, 0, -1)
    local kh, items = base .. 'k:' .. key, base .. 'i:' .. key
    if #entries > 0 then
      local reversed = {}
      for j = #entries, 1, -1 do reversed[#reversed + 1] = entries[j] end
      push_all(items, reversed, true)
      if dedupe then
        for _, entry in ipairs(entries) do redis.call('SADD', base .. 'd:' .. key, digest_of(entry)) end
      end
      local first = arrival(entries[1])
      redis.call('HSET', kh, 'first', first)
      if redis.call('HEXISTS', kh, 'last') == 0 then redis.call('HSET', kh, 'last', now) end
      redis.call('ZADD', age, first, key)
      redis.call('HINCRBY', stats, 'buffered', #entries)
      if redis.call('HEXISTS', kh, 'st') == 0 then redis.call('ZADD', due, now, key) end
      replayed = replayed + #entries
    end
    redis.call('DEL', base .. 'x:' .. bid, base .. 'xi:' .. bid)
    redis.call('ZREM', dead, bid)
  end
end
if replayed > 0 then redis.call('PUBLISH', ARGV[3], '1') end
return replayed
