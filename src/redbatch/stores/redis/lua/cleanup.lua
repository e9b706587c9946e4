-- cleanup: delete finished jobs and whole finished groups, oldest first.
-- Not a row of engine.JOB_TRANSITIONS: the 'cleanup' line of the comment above it (finished
-- -> none); a failed job's dead letter goes with it, as by the purge transition.
-- KEYS[1] finished jobs zset (jf), KEYS[2] finished groups zset (jgf), KEYS[3] dead zset
-- ARGV[1] base, ARGV[2] cutoff: those that finished before it go, ARGV[3] limit: how many
-- job records the caller may still delete, ARGV[4] '1' when it deleted none yet, ARGV[5]
-- chunk: stop after about this many, so that Redis serves other clients between calls
-- Job records go oldest first, jobs outside any group one by one and finished groups whole
-- (the group's record, every member and its finished callback jobs at once). A group larger
-- than what is left of the limit stops the cleanup, unless it is the first thing the caller
-- deletes: so a group always goes whole, and every cleanup makes progress.
-- Returns {job records deleted, 1 when it stopped with more due, else 0}.
local jf, jgf, base = KEYS[1], KEYS[2], ARGV[1]
local cutoff, limit, first, chunk = '(' .. ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1', tonumber(ARGV[5])

local function oldest(index)
  local row = redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'WITHSCORES', 'LIMIT', 0, 1)
  if #row == 0 then return nil, nil end
  return row[1], tonumber(row[2])
end

-- Delete group g whole; returns the job records deleted, or nil when it is not finished.
local function delete_group(group, room)
  local gh = base .. 'jg:' .. group
  local g = redis.call('HMGET', gh, 'pending', 'running', 'round')
  if (tonumber(g[1]) or 0) + (tonumber(g[2]) or 0) > 0 then -- reopened meanwhile: not finished
    redis.call('ZREM', jgf, group)
    return 0
  end
  local members = redis.call('ZRANGE', base .. 'jgm:' .. group, 0, -1)
  if #members > room then return nil end
  local deleted = 0
  for _, member in ipairs(members) do
    deleted = deleted + job_delete(base, string.sub(member, 17))
  end
  for round = 1, tonumber(g[3]) or 0 do
    local id = group .. ':callback:' .. round
    local status = redis.call('HGET', base .. 'j:' .. id, 'status')
    if status and not OPEN_STATUS[status] then deleted = deleted + job_delete(base, id) end
  end
  local doomed = {gh, base .. 'jgm:' .. group}
  for _, status in ipairs(JOB_STATUSES) do doomed[#doomed + 1] = base .. 'jgx:' .. status .. ':' .. group end
  redis.call('DEL', unpack(doomed))
  redis.call('ZREM', jgf, group)
  return deleted
end

local deleted = 0
while deleted < limit and deleted < chunk do
  local job, job_at = oldest(jf)
  local group, group_at = oldest(jgf)
  if not job and not group then return {deleted, 0} end
  if job and (not group or job_at <= group_at) then
    deleted = deleted + job_delete(base, job)
    redis.call('ZREM', jf, job) -- a record lost by hand leaves its index entry: dropped too
  else
    local room = limit - deleted
    if first and deleted == 0 then room = math.huge end
    local gone = delete_group(group, room)
    if not gone then return {deleted, 1} end
    deleted = deleted + gone
  end
end
return {deleted, 1}
