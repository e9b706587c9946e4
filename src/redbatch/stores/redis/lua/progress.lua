-- progress: record a running job's progress, fenced: a stale worker's report changes nothing.
-- job transition: progress
-- KEYS[1] the job's record hash
-- ARGV[1] base, ARGV[2] job id (its key), ARGV[3] batch id, ARGV[4] fencing token,
-- ARGV[5] fraction ('' none), ARGV[6] message
-- Returns 1, or 0 when the lease is no longer held.
local base, id = ARGV[1], ARGV[2]
if not holds(base .. 'k:' .. id, ARGV[3], ARGV[4]) then return 0 end
job_moves(base, id, 'progress', 0, {progress = ARGV[5], message = ARGV[6]})
return 1
