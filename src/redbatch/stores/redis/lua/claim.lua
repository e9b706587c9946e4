-- claim: lease up to `limit` due batches: retries, lapsed leases, or new batches.
-- transition: claim
-- transition: claim_retry
-- transition: reclaim
-- transition: bury_lapsed
-- On a job queue only (ARGV[12]), the records move too; a batch buried as corrupt moves its
-- job to failed (by claim, for a pending one, then fail_dead):
-- job transition: claim
-- job transition: claim_retry
-- job transition: reclaim
-- job transition: bury_lapsed
-- job transition: fail_dead
-- KEYS[1] due zset, KEYS[2] age zset, KEYS[3] stats hash, KEYS[4] dead zset, KEYS[5] token seq
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] limit, ARGV[4] lease_ms, ARGV[5] max_items,
-- ARGV[6] max_wait_ms, ARGV[7] idle_ms, ARGV[8] max_attempts, ARGV[9] dedupe '1'|'0',
-- ARGV[10] error recorded for a lost worker's last attempt, ARGV[11] wake channel (a buried
-- batch's key may be due sooner than other workers expect), ARGV[12] '1' on a job queue (its
-- records move too; a lapsed job is buried by its own max_attempts, not ARGV[8]) else '0',
-- ARGV[13..] new batch ids (a few more than limit: a batch buried as corrupt uses one up)
-- Returns {key, batch id, attempt, fencing token, created_ms, entries} per leased batch.
-- A batch holding an entry not framed "arrived_ms:digest:json" (pushed by hand) is not leased:
-- it goes to dead letters as "corrupt data: ..." with the attempts it had, and the claim goes on.
local due, age, stats, dead, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local base, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_ms, max_items = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_wait, idle, max_attempts = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local dedupe, lost_error, channel = ARGV[9] == '1', ARGV[10], ARGV[11]
local jobs = ARGV[12] == '1'
local result, next_id, wake = {}, 13, false
-- Counter changes, written once at the end rather than per key.
local moved = {buffered_items = 0, in_flight = 0, retrying = 0}

local function unframed(i, n)
  return 'corrupt data: entry ' .. i .. ' of ' .. n .. ' is not framed "arrived_ms:digest:json"'
end

-- Why a batch's entries cannot be handed out, or nil when they can.
local function corruption(entries)
  for i, entry in ipairs(entries) do
    if not digest_of(entry) then return unframed(i, #entries) end
  end
  return nil
end

-- Move a key's oldest pending entries into a new batch; returns them ({} when there were
-- none) and, when one of them is not framed, why the batch cannot be handed out. The
-- batch's fields are the caller's to write (one HSET with its lease).
local function take_pending(key, kh)
  local items = base .. 'i:' .. key
  -- One entry more than a batch holds: it says whether any stay behind, and its arrival is
  -- the key's new oldest. None left: the list becomes the batch's (an idle key has none).
  local taken = redis.call('LRANGE', items, 0, max_items)
  local rest = taken[max_items + 1]
  if rest then
    taken[max_items + 1] = nil
    redis.call('LTRIM', items, max_items, -1)
    push_all(base .. 'b:' .. key, taken, false)
  elseif #taken > 0 then
    redis.call('RENAME', items, base .. 'b:' .. key)
  else
    return taken, nil
  end
  local counted, corrupt = 0, nil -- entries append.lua wrote (and counted), not pushed by hand
  for i, entry in ipairs(taken) do
    local digest = digest_of(entry)
    if digest then
      counted = counted + 1
      if dedupe then redis.call('SREM', base .. 'd:' .. key, digest) end
    elseif not corrupt then
      corrupt = unframed(i, #taken)
    end
  end
  if rest then
    local first = arrival(rest) or now -- unframed: dead-lettered when its batch is claimed
    redis.call('HSET', kh, 'first', first)
    redis.call('ZADD', age, first, key)
  else
    redis.call('HDEL', kh, 'first', 'last')
    redis.call('ZREM', age, key)
  end
  moved.buffered_items = moved.buffered_items - counted
  return taken, corrupt
end

-- A job's batch buried by this claim, as dead letter `bid` with error `why`: the job moves
-- to failed (a pending one, whose batch this claim took or retried, by way of running).
-- Returns whether workers should be woken (its group's callback job).
local function job_buried(key, bid, why)
  if redis.call('HGET', base .. 'j:' .. key, 'status') == 'pending' then
    job_moves(base, key, 'claim', now, {started = ms(now)})
  end
  local _, wake_callback = job_moves(base, key, 'fail_dead', now, {error = why, finished = ms(now), dead = bid})
  return wake_callback
end

-- Stop when the batch ids run out (corrupt batches buried here used them up).
while #result < limit and next_id <= #ARGV do
  local keys = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit - #result)
  if #keys == 0 then break end
  for _, key in ipairs(keys) do
    if next_id > #ARGV then break end
    local kh = base .. 'k:' .. key
    local b = redis.call('HMGET', kh, 'st', 'attempt', 'bid', 'created')
    local st = b[1]
    local leased, entries, corrupt, row = true, nil, nil, 'reclaim'
    local allowed = max_attempts
    if jobs and st == 'run' then -- a job's own max_attempts decides
      allowed = tonumber(redis.call('HGET', base .. 'j:' .. key, 'max_attempts')) or max_attempts
    end
    if st == 'run' and tonumber(b[2]) >= allowed then -- bury_lapsed
      local bid = bury(base, dead, key, lost_error, now)
      moved.in_flight = moved.in_flight - 1
      if reschedule(base, due, key, now, max_items, max_wait, idle) then wake = true end
      leased = false
      if jobs then
        local _, callback = job_moves(base, key, 'bury_lapsed', now,
          {error = lost_error, finished = ms(now), dead = bid})
        if callback then wake = true end
      end
    elseif st == 'wait' then -- claim_retry
      row = 'claim_retry'
      moved.retrying = moved.retrying - 1
      moved.in_flight = moved.in_flight + 1
    elseif not st then -- claim: the entries just taken, checked as they were taken
      row = 'claim'
      entries, corrupt = take_pending(key, kh)
      if #entries == 0 then
        redis.call('ZREM', due, key)
        redis.call('DEL', kh)
        leased = false
      else
        moved.in_flight = moved.in_flight + 1
        b[2], b[3], b[4] = 0, ARGV[next_id], now -- the new batch: attempt, id, created
        next_id = next_id + 1
        if corrupt then -- bury reads its fields from the key
          redis.call('HSET', kh, 'bid', b[3], 'attempt', 0, 'created', now, 'n', #entries)
        end
      end
    end -- else 'run' with attempts left: reclaim, a lost worker's batch leased again
    if leased and not entries then -- a retry or a reclaim: its batch as it was left
      entries = redis.call('LRANGE', base .. 'b:' .. key, 0, -1)
      corrupt = corruption(entries)
    end
    if corrupt then -- buried as by fail_dead, never leased
      local bid = bury(base, dead, key, corrupt, now)
      moved.in_flight = moved.in_flight - 1
      if reschedule(base, due, key, now, max_items, max_wait, idle) then wake = true end
      if jobs and job_buried(key, bid, corrupt) then wake = true end
    elseif leased then
      local token = redis.call('INCR', seq)
      local attempt = tonumber(b[2]) + 1
      if row == 'claim' then
        redis.call('HSET', kh, 'bid', b[3], 'created', now, 'n', #entries, 'attempt', attempt,
          'st', 'run', 'tok', token)
      else
        redis.call('HSET', kh, 'attempt', attempt, 'st', 'run', 'tok', token)
      end
      redis.call('ZADD', due, now + lease_ms, key)
      result[#result + 1] = {key, b[3], attempt, token, tonumber(b[4]), entries}
      if jobs then job_moves(base, key, row, now, {attempt = attempt, started = ms(now)}) end
    end
  end
end
for counter, change in pairs(moved) do
  if change ~= 0 then redis.call('HINCRBY', stats, counter, change) end -- Lua's -0 is '-0'
end
if wake then redis.call('PUBLISH', channel, '1') end
return result
