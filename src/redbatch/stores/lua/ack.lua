-- ack: finish a running batch and schedule the key's next one.
-- KEYS[1] due zset, KEYS[2] stats hash
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] max_items, ARGV[4] max_wait_ms, ARGV[5] idle_ms,
-- ARGV[6] wake channel, ARGV[7] key, ARGV[8] batch id, ARGV[9] fencing token
-- Returns 1, or 0 (nothing changed) when the lease is no longer held.
local due, stats, base, now = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local key = ARGV[7]
local kh = base .. 'k:' .. key
if not holds(kh, ARGV[8], ARGV[9]) then return 0 end
local n = tonumber(redis.call('HGET', kh, 'n'))
redis.call('DEL', base .. 'b:' .. key)
redis.call('HDEL', kh, unpack(BATCH_FIELDS))
redis.call('HINCRBY', stats, 'in_flight', -1)
redis.call('HINCRBY', stats, 'flushed_batches', 1)
redis.call('HINCRBY', stats, 'flushed_items', n)
redis.call('HSET', stats, 'last_flush', now)
if reschedule(base, due, key, now, tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])) then
  redis.call('PUBLISH', ARGV[6], '1')
end
return 1
