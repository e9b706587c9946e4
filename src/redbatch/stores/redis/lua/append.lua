-- append: add entries under their keys and reschedule each key, in every partition the
-- entries fall in, all or none: each partition's recorded rules must be the ones the client
-- used, and each key the call writes is checked first, so that one of the wrong type (written
-- by hand) fails the call before anything is written.
-- transition: append
-- KEYS per partition, in the order of ARGV's partitions: due zset, age zset (first pending
-- arrival per key), stats hash, rules hash (the batcher's recorded rules, see rules.lua)
-- ARGV[1] now_ms, ARGV[2] max_items, ARGV[3] max_wait_ms, ARGV[4] idle_ms,
-- ARGV[5] dedupe '1'|'0', ARGV[6] wake channel, ARGV[7] version of the rules in ARGV,
-- ARGV[8] call id, or '' (see below), ARGV[9] how long the call id is remembered, in ms,
-- then per partition: its base and its number of keys, and per key: key, n, and n entries
-- "now_ms:digest:json" (built by the client, so that without dedupe this script only
-- pushes a slice of ARGV)
-- Returns the number of entries added (deduplicated ones are not), or, storing nothing,
-- -1 when a partition holds other rules and -2 when one holds none yet.
-- One call over several partitions needs a single server: Redis Cluster would refuse keys
-- of several slots in one script, as it refuses them in one MULTI. There, an append is one
-- call per partition, each with the same call id: the id is recorded as B..'call:'..id
-- (holding the count added) in the step that adds, and a call whose id is recorded adds
-- nothing and returns that count, so a call sent again after a dropped connection never
-- adds twice. A call with an id covers one partition.
local now = tonumber(ARGV[1])
local max_items, max_wait, idle = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local dedupe, channel, version, call = ARGV[5] == '1', ARGV[6], ARGV[7], ARGV[8]
local marker = call ~= '' and ARGV[10] .. 'call:' .. call
if marker then
  local done = redis.call('GET', marker)
  if done then return tonumber(done) end
end

-- The call's partitions and, in each, its keys and where their entries lie in ARGV.
local partitions, i, k = {}, 10, 1
while i <= #ARGV do
  local part = {base = ARGV[i], due = KEYS[k], age = KEYS[k + 1], stats = KEYS[k + 2], keys = {}}
  local recorded = redis.call('HGET', KEYS[k + 3], 'version')
  if recorded ~= version then return recorded and -1 or -2 end
  local count = tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, count do
    local n = tonumber(ARGV[i + 1])
    part.keys[#part.keys + 1] = {name = ARGV[i], from = i + 2, to = i + 1 + n}
    i = i + 2 + n
  end
  partitions[#partitions + 1] = part
  k = k + 4
end

local function check(name, wanted)
  local found = redis.call('TYPE', name)['ok']
  if found ~= 'none' and found ~= wanted then
    error({err = 'WRONGTYPE ' .. name .. ' holds a ' .. found .. ', not a ' .. wanted .. '; nothing was added'})
  end
end

-- A read that is also the type check of its key (a read fails on a key of another type):
-- each key's list length and state are read here, before anything is written. Its names
-- are kept for add below: the first pass pays for the concatenations.
local function read(name, wanted, ...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    check(name, wanted)
    error(reply)
  end
  return reply
end

for _, part in ipairs(partitions) do
  local base = part.base
  check(part.due, 'zset')
  check(part.age, 'zset')
  check(part.stats, 'hash')
  for _, key in ipairs(part.keys) do
    local items, kh = base .. 'i:' .. key.name, base .. 'k:' .. key.name
    key.items, key.kh = items, kh
    key.length = read(items, 'list', 'LLEN', items)
    key.state = read(kh, 'hash', 'HMGET', kh, 'first', 'st')
    if dedupe then check(base .. 'd:' .. key.name, 'set') end
  end
end

local wake = false

-- Push one key's entries, ARGV[from..to], and reschedule the key; returns how many were added.
local function add(part, key)
  local name, items, kh = key.name, key.items, key.kh
  local count, length = key.to - key.from + 1, 0
  if dedupe then
    local fresh, digests = {}, part.base .. 'd:' .. name
    for j = key.from, key.to do
      if redis.call('SADD', digests, digest_of(ARGV[j])) == 1 then fresh[#fresh + 1] = ARGV[j] end
    end
    count = #fresh
    if count > 0 then length = push_all(items, fresh, false) end
  else
    length = push_all(items, ARGV, false, key.from, key.to)
  end
  if count == 0 then return 0 end
  local before, state = key.length, key.state
  if before == 0 then
    redis.call('HSET', kh, 'first', now, 'last', now)
    redis.call('ZADD', part.age, now, name)
  elseif idle > 0 then
    redis.call('HSET', kh, 'last', now)
  end
  -- Without a debounce, a key that already had items keeps its deadline unless it is full;
  -- a key in a batch (state[2]) is rescheduled when that batch ends.
  local deadline
  if state[2] then
    return count
  elseif before >= max_items and state[1] then
    -- Full before this add, and scheduled (its 'first' was written by an add): it was made
    -- due then, and stays due. Every step that leaves an idle key full puts it at now (an
    -- add, a batch's end, a flush; reschedule.lua after other rules), so its score is not
    -- read again. One filled by hand (no 'first') is.
    return count
  elseif length >= max_items then
    deadline = now -- due_at's answer for a full key, without its call
  elseif before == 0 or idle > 0 then
    -- no 'first' on a key that had items: they were pushed by hand
    local first = before == 0 and now or tonumber(state[1]) or now
    deadline = due_at(first, now, length, now, max_items, max_wait, idle)
  else
    return count
  end
  local due = part.due
  local old = tonumber(redis.call('ZSCORE', due, name))
  -- A key already due (flushed, or overdue) stays due: more items never delay it.
  if old == nil or (old ~= deadline and old > now) then
    local head = head_of(due)
    redis.call('ZADD', due, deadline, name)
    if wakes(deadline, head, now) then wake = true end
  end
  return count
end

local total = 0
for _, part in ipairs(partitions) do
  local added = 0
  for _, key in ipairs(part.keys) do added = added + add(part, key) end
  if added > 0 then redis.call('HINCRBY', part.stats, 'buffered_items', added) end
  total = total + added
end
if marker then redis.call('SET', marker, total, 'PX', ARGV[9]) end
if wake then redis.call('PUBLISH', channel, '1') end
return total
