-- append: add entries under their keys (all in one partition) and reschedule each key.
-- KEYS[1] due zset, KEYS[2] age zset (first pending arrival per key), KEYS[3] stats hash,
-- KEYS[4] rules hash (the batcher's recorded rules, see rules.lua)
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] max_items, ARGV[4] max_wait_ms, ARGV[5] idle_ms,
-- ARGV[6] dedupe '1'|'0', ARGV[7] wake channel, ARGV[8] version of the rules in ARGV,
-- then per key: key, n, and n entries "now_ms:digest:json" (built by the client, so that
-- without dedupe this script only pushes a slice of ARGV)
-- Returns the number of entries added (deduplicated ones are not), or, storing nothing,
-- -1 when the partition holds other rules and -2 when it holds none yet.
local recorded = redis.call('HGET', KEYS[4], 'version')
if recorded ~= ARGV[8] then return recorded and -1 or -2 end
local due, age, stats = KEYS[1], KEYS[2], KEYS[3]
local base, now = ARGV[1], tonumber(ARGV[2])
local max_items, max_wait, idle = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local dedupe, channel = ARGV[6] == '1', ARGV[7]
local total, wake, i = 0, false, 9

while i <= #ARGV do
  local key, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local items, kh = base .. 'i:' .. key, base .. 'k:' .. key
  local count, length = n, 0
  if dedupe then
    local fresh = {}
    for j = i, i + n - 1 do
      if redis.call('SADD', base .. 'd:' .. key, digest_of(ARGV[j])) == 1 then fresh[#fresh + 1] = ARGV[j] end
    end
    count = #fresh
    if count > 0 then length = push_all(items, fresh, false) end
  else
    length = push_all(items, ARGV, false, i, i + n - 1)
  end
  i = i + n
  if count > 0 then
    total = total + count
    local before = length - count
    local state = redis.call('HMGET', kh, 'first', 'st')
    local first = tonumber(state[1])
    if before == 0 then
      first = now
      redis.call('HSET', kh, 'first', now, 'last', now)
      redis.call('ZADD', age, now, key)
    elseif idle > 0 then
      redis.call('HSET', kh, 'last', now)
    end
    -- Without a debounce, a key that already had items keeps its deadline unless it is full.
    if not state[2] and (before == 0 or idle > 0 or length >= max_items) then
      local deadline = due_at(first, now, length, now, max_items, max_wait, idle)
      local old = redis.call('ZSCORE', due, key)
      -- A key already due (flushed, or overdue) stays due: more items never delay it.
      if old == false or (tonumber(old) ~= deadline and tonumber(old) > now) then
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
