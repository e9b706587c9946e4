-- reschedule: after a change of rules, recompute the deadlines of one chunk of a partition's
-- keys. A ZSCAN step, not a page by rank: rescheduling reorders the zset, and only a scan
-- visits every key present throughout at least once (twice is harmless).
-- No transition of redbatch.engine: a change of rules moves deadlines, not states.
-- KEYS[1] due zset, KEYS[2] rules hash
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] version being applied, ARGV[4] ZSCAN cursor,
-- ARGV[5] ZSCAN count, ARGV[6] wake channel
-- Returns the next cursor: '0' when the scan is done (the rules are then marked settled), or
-- '' when other rules were published meanwhile (their publisher reschedules instead).
local due, rules, base, now = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local r = redis.call('HMGET', rules, 'version', 'max_items', 'max_wait_ms', 'idle_ms', 'dedupe')
if r[1] ~= ARGV[3] then return '' end
local max_items, max_wait, idle = tonumber(r[2]), tonumber(r[3]), tonumber(r[4])
local dedupe = r[5] == '1'
local scan = redis.call('ZSCAN', due, ARGV[4], 'COUNT', tonumber(ARGV[5]))
local members, wake = scan[2], false
for i = 1, #members, 2 do
  local key, score = members[i], tonumber(members[i + 1])
  local kh = base .. 'k:' .. key
  -- Claims without dedupe leave digests behind: they would swallow new items if it came back.
  if not dedupe then redis.call('DEL', base .. 'd:' .. key) end
  -- A key with a current batch keeps its lease or retry time; a key already due stays due.
  if score > now and redis.call('HEXISTS', kh, 'st') == 0 then
    local pending = redis.call('LLEN', base .. 'i:' .. key)
    if pending > 0 then
      local times = redis.call('HMGET', kh, 'first', 'last')
      local first = tonumber(times[1])
      -- 'last' is kept only while idle > 0: a debounce turned on later counts from 'first'
      -- for keys already open, so they are handed over earlier, never later.
      local deadline = due_at(first, tonumber(times[2]) or first, pending, now, max_items, max_wait, idle)
      if deadline ~= score then
        local head = head_of(due)
        redis.call('ZADD', due, deadline, key)
        if wakes(deadline, head, now) then wake = true end
      end
    end
  end
end
if wake then redis.call('PUBLISH', ARGV[6], '1') end
if scan[1] == '0' then redis.call('HSET', rules, 'settled', ARGV[3]) end
return scan[1]
