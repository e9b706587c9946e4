-- flush: make one key, or every key without a current batch, due now.
-- transition: flush
-- KEYS[1] due zset
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] wake channel, ARGV[4] key, or '' for every key
-- Returns the number of keys made due. Flushing every key is O(open keys): an operator's act.
local due, base, now = KEYS[1], ARGV[1], tonumber(ARGV[2])
local keys = {ARGV[4]}
if ARGV[4] == '' then keys = redis.call('ZRANGEBYSCORE', due, '-inf', '+inf') end
local made = 0
for _, key in ipairs(keys) do
  local kh = base .. 'k:' .. key
  if redis.call('HEXISTS', kh, 'st') == 0 and redis.call('EXISTS', base .. 'i:' .. key) == 1 then
    local score = redis.call('ZSCORE', due, key)
    if score == false or tonumber(score) > now then redis.call('ZADD', due, now, key) end
    made = made + 1
  end
end
-- Every key counted is due now, and a key due now wakes workers whatever the index head was
-- (wakes in lib.lua), so the head is not read.
if made > 0 then redis.call('PUBLISH', ARGV[3], '1') end
return made
