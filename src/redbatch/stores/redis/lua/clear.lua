-- clear: drop a key's pending items and any batch waiting to retry; a running batch stays.
-- transition: clear
-- KEYS[1] due zset, KEYS[2] age zset, KEYS[3] stats hash
-- ARGV[1] base, ARGV[2] key
-- Returns the number of items dropped.
local due, age, stats, base, key = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local kh = base .. 'k:' .. key
local dropped = redis.call('LLEN', base .. 'i:' .. key)
redis.call('DEL', base .. 'i:' .. key, base .. 'd:' .. key)
redis.call('ZREM', age, key)
redis.call('HDEL', kh, 'first', 'last')
if dropped > 0 then redis.call('HINCRBY', stats, 'buffered_items', -dropped) end
local st = redis.call('HGET', kh, 'st')
if st == 'wait' then
  dropped = dropped + tonumber(redis.call('HGET', kh, 'n'))
  redis.call('DEL', base .. 'b:' .. key)
  redis.call('HDEL', kh, unpack(BATCH_FIELDS))
  redis.call('HINCRBY', stats, 'retrying', -1)
  st = false
end
if not st then
  redis.call('ZREM', due, key)
  redis.call('DEL', kh)
end
return dropped
