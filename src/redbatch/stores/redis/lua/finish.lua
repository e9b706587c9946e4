-- finish: the ack of jobs: end running jobs as their outcomes say, in one step.
-- transition: ack
-- job transition: finish_succeeded
-- job transition: finish_cancelled
-- job transition: finish_advance (the next step's entry goes in as by the append transition,
-- at its own deadline score)
-- KEYS[1] due zset, KEYS[2] stats hash, KEYS[3] age zset
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] max_items, ARGV[4] max_wait_ms, ARGV[5] idle_ms,
-- ARGV[6] wake channel, then 8 values per outcome: key (the job id), batch id, fencing token,
-- kind ('succeeded'|'cancelled'|'advance'), result ('' none), and for 'advance' the next
-- step's payload, deadline score and function ('' otherwise)
-- Returns 1 per job finished, 0 per lease no longer held (nothing changed for it).
local due, stats, base, now = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local max_items, max_wait, idle = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local held, batches, items, wake = {}, 0, 0, false

for i = 7, #ARGV, 8 do
  local key, kind, result = ARGV[i], ARGV[i + 3], ARGV[i + 4]
  local kh = base .. 'k:' .. key
  local b = redis.call('HMGET', kh, 'bid', 'tok', 'st', 'n') -- holds(), and n
  if b[1] == ARGV[i + 1] and b[2] == ARGV[i + 2] and b[3] == 'run' then
    items = items + tonumber(b[4])
    batches = batches + 1
    local row, fields = 'finish_cancelled', {finished = ms(now)}
    if kind == 'advance' then
      redis.call('DEL', base .. 'b:' .. key)
      redis.call('HDEL', kh, unpack(BATCH_FIELDS))
      if job_enqueue(base, key, ARGV[i + 5], tonumber(ARGV[i + 6]), now) then wake = true end
      local step = tonumber(redis.call('HGET', base .. 'j:' .. key, 'step')) or 0
      row = 'finish_advance'
      fields = {step = step + 1, attempt = 0, ['function'] = ARGV[i + 7], payload = ARGV[i + 5],
        progress = '', message = '', started = ''}
    else
      if end_batch(base, due, key, now, max_items, max_wait, idle) then wake = true end
      if kind == 'succeeded' then
        row, fields.progress = 'finish_succeeded', '1'
      end
    end
    if result ~= '' then fields.result = result end
    local _, woken = job_moves(base, key, row, now, fields)
    if woken then wake = true end
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
count_acked(stats, batches, items, now)
if wake then redis.call('PUBLISH', ARGV[6], '1') end
return held
