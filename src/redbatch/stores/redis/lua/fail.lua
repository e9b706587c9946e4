-- fail: schedule a running batch's retry, or move it to dead letters.
-- transition: fail_retry
-- transition: fail_dead
-- On a job queue only (ARGV[13]), the record moves too:
-- job transition: fail_retry
-- job transition: fail_dead
-- KEYS[1] due zset, KEYS[2] stats hash, KEYS[3] dead zset
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] max_items, ARGV[4] max_wait_ms, ARGV[5] idle_ms,
-- ARGV[6] wake channel, ARGV[7] key, ARGV[8] batch id, ARGV[9] fencing token,
-- ARGV[10] error, ARGV[11] retry_at_ms, or '' to dead-letter now,
-- ARGV[12] '' (every item failed) or the comma-separated 0-based indexes of the items that
-- failed: the batch shrinks to them and the others count as flushed, ARGV[13] '1' on a job
-- queue (the job's record moves too), else '0' or absent
-- Returns 1, or 0 (nothing changed) when the lease is no longer held.
local due, stats, dead, base, now = KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2])
local key, error = ARGV[7], ARGV[10]
local kh = base .. 'k:' .. key
if not holds(kh, ARGV[8], ARGV[9]) then return 0 end
redis.call('HINCRBY', stats, 'in_flight', -1)
if ARGV[12] ~= '' then
  local batch = base .. 'b:' .. key
  local all, kept = redis.call('LRANGE', batch, 0, -1), {}
  for index in string.gmatch(ARGV[12], '%d+') do kept[#kept + 1] = all[tonumber(index) + 1] end
  redis.call('DEL', batch)
  push_all(batch, kept, false)
  redis.call('HSET', kh, 'n', #kept)
  redis.call('HINCRBY', stats, 'flushed_items', #all - #kept)
end
if ARGV[11] ~= '' then -- fail_retry
  redis.call('HSET', kh, 'st', 'wait', 'err', error)
  redis.call('ZADD', due, ARGV[11], key)
  redis.call('HINCRBY', stats, 'retrying', 1)
  if ARGV[13] == '1' then job_moves(base, key, 'fail_retry', now, {error = error}) end
  return 1
end
local bid = bury(base, dead, key, error, now) -- fail_dead
local wake = reschedule(base, due, key, now, tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
if ARGV[13] == '1' then
  local _, callback = job_moves(base, key, 'fail_dead', now, {error = error, finished = ms(now), dead = bid})
  if callback then wake = true end
end
if wake then redis.call('PUBLISH', ARGV[6], '1') end
return 1
