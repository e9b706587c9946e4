-- cancel: cancel a job: a pending one at once, a running one by asking it to stop.
-- transition: clear (a pending job's entry, or its batch waiting to retry, is dropped)
-- job transition: cancel_pending
-- job transition: cancel_running
-- KEYS[1] due zset, KEYS[2] age zset, KEYS[3] stats hash, KEYS[4] the job's record hash
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] wake channel, ARGV[4] job id
-- Returns the job's status after the call ('' when there is no job of that id); a finished
-- job is left as it is.
local base, now, id = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local status = redis.call('HGET', KEYS[4], 'status')
if not status then return '' end
if status == 'running' then
  job_moves(base, id, 'cancel_running', now, {cancel = '1'})
elseif status == 'pending' then
  clear_key(base, KEYS[1], KEYS[2], KEYS[3], id)
  local _, wake = job_moves(base, id, 'cancel_pending', now, {cancel = '1', finished = ms(now)})
  if wake then redis.call('PUBLISH', ARGV[3], '1') end
  status = 'cancelled'
end
return status
