-- ack: finish running batches and schedule each key's next one.
-- transition: ack
-- KEYS[1] due zset, KEYS[2] stats hash
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] max_items, ARGV[4] max_wait_ms, ARGV[5] idle_ms,
-- ARGV[6] wake channel, then triples (key, batch id, fencing token)
-- Returns 1 per batch finished, 0 per lease no longer held (nothing changed for it).
local due, stats, base, now = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local max_items, max_wait, idle = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local held, batches, items, wake = {}, 0, 0, false
for i = 7, #ARGV, 3 do
  local key = ARGV[i]
  local b = redis.call('HMGET', base .. 'k:' .. key, 'bid', 'tok', 'st', 'n') -- holds(), and n
  if b[1] == ARGV[i + 1] and b[2] == ARGV[i + 2] and b[3] == 'run' then
    items = items + tonumber(b[4])
    batches = batches + 1
    if end_batch(base, due, key, now, max_items, max_wait, idle) then wake = true end
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
count_acked(stats, batches, items, now)
if wake then redis.call('PUBLISH', ARGV[6], '1') end
return held
