-- rules: record a batcher's rules in one partition (every partition holds a copy).
-- No transition of redbatch.engine: the rules are the batcher's, not a key's.
-- KEYS[1] rules hash: max_items, max_wait_ms, idle_ms, dedupe, max_attempts, lease_ms,
--         version, updated_at, settled (the version whose rescheduling finished)
-- ARGV[1] 'publish' (record these rules) or 'record' (only when none are recorded),
-- ARGV[2] now_ms, ARGV[3] version, ARGV[4] max_items, ARGV[5] max_wait_ms, ARGV[6] idle_ms,
-- ARGV[7] dedupe '1'|'0', ARGV[8] max_attempts, ARGV[9] lease_ms
-- Returns {the hash before (a flat field, value list; empty when none), 1 when the
-- partition's keys must be rescheduled under the recorded rules (reschedule.lua), else 0}.
local rules, publish, version = KEYS[1], ARGV[1] == 'publish', ARGV[3]
local previous = redis.call('HGETALL', rules)
local recorded = redis.call('HGET', rules, 'version')

local function record(settled)
  redis.call('HSET', rules, 'max_items', ARGV[4], 'max_wait_ms', ARGV[5], 'idle_ms', ARGV[6],
    'dedupe', ARGV[7], 'max_attempts', ARGV[8], 'lease_ms', ARGV[9], 'version', version,
    'updated_at', ARGV[2], 'settled', settled)
end

if not publish then
  if not recorded then record(version) end
  return {previous, 0}
end
if recorded ~= version then
  record('')
  return {previous, 1}
end
-- The same rules: written again all the same, which repairs a record edited by hand; and
-- if their publisher stopped before it rescheduled every key, the caller finishes it.
local settled = redis.call('HGET', rules, 'settled') or ''
record(settled)
if settled ~= version then return {previous, 1} end
return {previous, 0}
