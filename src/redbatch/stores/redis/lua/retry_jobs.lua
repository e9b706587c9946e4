-- retry_jobs: put failed jobs back to pending, each with its record's payload as a new entry.
-- job transition: retry_jobs (its dead letter, if still held, purged as by the purge
-- transition; its entry goes in as by the append transition)
-- KEYS[1] due zset, KEYS[2] age zset, KEYS[3] stats hash, KEYS[4] dead zset
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] wake channel, ARGV[4] lane ('' to keep each job's),
-- ARGV[5] deadline score, ARGV[6..] job ids
-- Returns the ids retried; those of jobs that are not failed (or unknown) are skipped.
local base, now, score = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[5])
local retried, wake = {}, false
for i = 6, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HMGET', base .. 'j:' .. id, 'status', 'payload', 'dead')
  if rec[1] == 'failed' then
    if (rec[3] or '') ~= '' then
      redis.call('ZREM', KEYS[4], rec[3])
      redis.call('DEL', base .. 'x:' .. rec[3], base .. 'xi:' .. rec[3])
    end
    if job_enqueue(base, id, rec[2], score, now) then wake = true end
    local fields = {attempt = 0, started = '', finished = '', dead = '', cancel = '0'}
    if ARGV[4] ~= '' then fields.lane = ARGV[4] end
    job_moves(base, id, 'retry_jobs', now, fields)
    retried[#retried + 1] = id
  end
end
if wake then redis.call('PUBLISH', ARGV[3], '1') end
return retried
