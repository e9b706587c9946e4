-- heartbeat: extend the leases still held.
-- transition: heartbeat
-- job transition: heartbeat (a job queue's record does not change)
-- KEYS[1] due zset
-- ARGV[1] base, ARGV[2] lease_until_ms, then triples (key, batch id, fencing token)
-- Returns 1 per lease still held (and extended), 0 per lease lost.
local due, base, lease_until = KEYS[1], ARGV[1], ARGV[2]
local held = {}
for i = 3, #ARGV, 3 do
  local key = ARGV[i]
  if holds(base .. 'k:' .. key, ARGV[i + 1], ARGV[i + 2]) then
    redis.call('ZADD', due, lease_until, key)
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
