-- submit: create jobs (and their group) in one step; a job whose id exists is left as it is.
-- job transition: submit (its entry goes in as by the append transition)
-- KEYS[1] due zset, KEYS[2] age zset, KEYS[3] stats hash, KEYS[4] the group's hash (or, with
-- no group, the jobs' index B..'jx:all': a key of the partition for the call's routing)
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] wake channel, ARGV[4] group id ('' none),
-- ARGV[5] the group's callback payload ('' none), ARGV[6] its function, ARGV[7] its
-- max_attempts, then 7 values per job: id, function, payload, deadline score, lane,
-- max_attempts, steps
-- Returns 1 per job created, 0 per job left as it was (every one 0 when the group exists).
-- A group is created with the jobs created as its members; one with none is finished at once.
local base, now, group = ARGV[1], tonumber(ARGV[2]), ARGV[4]
local created, wake = {}, false
if group ~= '' then
  local gh = base .. 'jg:' .. group
  if redis.call('EXISTS', gh) == 1 then
    for i = 8, #ARGV, 7 do created[#created + 1] = 0 end
    return created
  end
  redis.call('HSET', gh, 'total', 0, 'pending', 0, 'running', 0, 'succeeded', 0, 'failed', 0,
    'cancelled', 0, 'created', ms(now), 'finished', '', 'round', 1, 'callback_job', '',
    'callback', ARGV[5], 'callback_function', ARGV[6], 'callback_max_attempts', ARGV[7])
end
for i = 8, #ARGV, 7 do
  local made, woken = job_create(base, ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]),
    ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], group, now)
  created[#created + 1] = made and 1 or 0
  if woken then wake = true end
end
if group ~= '' and group_finish_if_done(base, group, now) then wake = true end
if wake then redis.call('PUBLISH', ARGV[3], '1') end
return created
