-- append: add items under their keys (all in one partition) and reschedule each key.
-- KEYS[1] due zset, KEYS[2] age zset (first pending arrival per key), KEYS[3] stats hash
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] max_items, ARGV[4] max_wait_ms, ARGV[5] idle_ms,
-- ARGV[6] dedupe '1'|'0', ARGV[7] wake channel,
-- then per key: key, n, and n pairs of (digest, payload)
-- Returns the number of items added (deduplicated ones are not).
local due, age, stats = KEYS[1], KEYS[2], KEYS[3]
local base, now = ARGV[1], tonumber(ARGV[2])
local max_items, max_wait, idle = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local dedupe, channel = ARGV[6] == '1', ARGV[7]
local total, wake, i = 0, false, 8
while i <= #ARGV do
  local key, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local items, kh = base .. 'i:' .. key, base .. 'k:' .. key
  local entries = {}
  for _ = 1, n do
    local digest, payload = ARGV[i], ARGV[i + 1]
    i = i + 2
    if not dedupe or redis.call('SADD', base .. 'd:' .. key, digest) == 1 then
      entries[#entries + 1] = now .. ':' .. digest .. ':' .. payload
    end
  end
  if #entries > 0 then
    local before = push_all(items, entries, false) - #entries
    total = total + #entries
    local state = redis.call('HMGET', kh, 'first', 'st')
    local first = now
    if before == 0 then
      redis.call('HSET', kh, 'first', now, 'last', now)
      redis.call('ZADD', age, now, key)
    else
      redis.call('HSET', kh, 'last', now)
      first = tonumber(state[1])
    end
    if not state[2] then
      local deadline = due_at(first, now, before + #entries, now, max_items, max_wait, idle)
      local old = redis.call('ZSCORE', due, key)
      if old == false or tonumber(old) ~= deadline then
        local head = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
        redis.call('ZADD', due, deadline, key)
        if deadline <= now or head[2] == nil or deadline < tonumber(head[2]) then wake = true end
      end
    end
  end
end
if total > 0 then redis.call('HINCRBY', stats, 'buffered', total) end
if wake then redis.call('PUBLISH', channel, '1') end
return total
