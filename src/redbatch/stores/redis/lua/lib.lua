-- lib.lua: the prelude the Redis store puts in front of every script, and the key map.
--
-- A batcher's keys are spread over its partitions (one unless the store is opened with
-- partitions=N; a key k lives in partition crc32(k) mod N). Every key of partition P of
-- batcher NAME starts with the base B = '{PREFIX:NAME:P}:', whose braces are a Redis Cluster
-- hash tag: everything one script touches sits in one slot. A script gets the partition's
-- keys in KEYS and B in ARGV, and builds the per-key names below from B.
--
-- Per partition:
--   B..'due'        zset    the deadline index: each open key, scored by the next moment it
--                           needs attention (redbatch.engine: due_at while IDLE, lease_until
--                           while RUNNING, retry_at while WAITING; an ABSENT key is no member)
--   B..'age'        zset    each key with pending entries, scored by its oldest arrival
--   B..'stats'      hash    counters, by redbatch.engine's names: buffered_items,
--                           in_flight, retrying, flushed_batches, flushed_items and
--                           last_flush_at (the time of the last ack); data written before
--                           may hold buffered and last_flush too (read by counters())
--   B..'dead'       zset    dead letters' batch ids, scored by their time of death
--   B..'seq'        string  the last fencing token handed out (INCR)
--   B..'rules'      hash    the batcher's rules, a copy in every partition (see rules.lua)
--   B..'call:'..id  string  on Redis Cluster: an append call that was applied here, and how
--                           many entries it added, kept a short while (see append.lua)
-- Per key k:
--   B..'i:'..k      list    pending entries, oldest first
--   B..'d:'..k      set     dedupe digests of pending entries
--   B..'k:'..k      hash    first, last (pending arrivals; 'last' is kept only while the
--                           batcher debounces); bid, st, attempt, tok (fencing token),
--                           created, n, err: the current batch, when there is one
--   B..'b:'..k      list    entries of the current batch
-- Per dead letter, by batch id:
--   B..'x:'..bid    hash    key, attempts, error, created, died, tok (the fencing token of
--                           its last attempt: a key's letters died in its order)
--   B..'xi:'..bid   list    its entries
-- Channels:
--   PREFIX..':wake:'..NAME  a script PUBLISHes here when a key may be due sooner than any
--                           worker expects (see wakes below); each waiter also listens on a
--                           channel of its own, to be ended from another thread
--
-- Job queues (engine name 'jobs:'..NAME, see redbatch.jobrecords) have ONE partition, P = 0,
-- whatever the store's partitions option: a group's record and its members' batch state must
-- share one hash tag so that every job script (a group finished by its last member's claim,
-- fail or finish) touches one slot. A job is a key (its id) holding one entry, its payload;
-- beside its batch state, from the same base B = '{PREFIX:jobs:NAME:0}:':
--   B..'j:'..id     hash    the job's record: function, status, lane, attempt, max_attempts,
--                           step, steps, progress, message, result, error, created, started,
--                           finished, group, cancel ('1'|'0'), payload (the current step's
--                           entry), dead (the batch id of its dead letter, once failed); an
--                           empty progress, result, started or finished means none
--   B..'jx:all'     zset    every job         } score 0, member IX = created_ms zero-padded to
--   B..'jx:'..st    zset    the jobs of status } 15 digits..':'..id, so that ZRANGE BYLEX
--   B..'jgm:'..g    zset    group g's members  } orders them by (created_at, id) and a page
--   B..'jgx:'..st..':'..g   g's members of st  } resumes after its last member (index_member)
--   B..'jf'         zset    finished jobs outside any group, scored by finished_ms (cleanup)
--   B..'jg:'..g     hash    group g: total, one count per status (pending, running, succeeded,
--                           failed, cancelled), created, finished ('' while open), round,
--                           callback_job, callback (its payload), callback_function,
--                           callback_max_attempts
--   B..'jgf'        zset    finished groups, scored by finished_ms (cleanup)
-- Every job query is served by one of these sorted sets (or a count's ZCARD), never a scan.
--
-- An entry is "arrived_ms:digest:json" (digest '' when the batcher does not dedupe); one
-- without that framing was pushed by hand. A key's state (redbatch.engine.KeyState) is
-- read from B..'k:'..k's 'st' and its place in B..'due':
--   ABSENT   not in due            IDLE     in due, no 'st'
--   RUNNING  st = 'run'            WAITING  st = 'wait'

local function arrival(entry)
  return tonumber(string.match(entry, '^(%d+):'))
end

local function digest_of(entry)
  return string.match(entry, '^%d+:([^:]*):')
end

-- The batching rule, redbatch.engine.due_at stated again: it runs inside Redis.
local function due_at(first, last, pending, now, max_items, max_wait, idle)
  if pending >= max_items then return now end
  local deadline = first + max_wait
  if idle > 0 and last + idle < deadline then deadline = last + idle end
  return deadline
end

-- Whether a key's new deadline should wake sleeping workers: redbatch.engine.wakes, stated
-- again. A worker sleeps until the head of the index it last read, so a step wakes workers
-- when the key it scheduled is due now, or due before the head the index had before the
-- step (head_before; nil when the index was empty).
local function wakes(deadline, head_before, now)
  return deadline <= now or head_before == nil or deadline < head_before
end

-- The score at the head of a deadline index, nil when it is empty: O(log n). Read it before
-- the change whose wake-up it decides.
local function head_of(due)
  return tonumber(redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')[2])
end

-- Push source[from..to] (default: all of it) in chunks, since unpack has a stack limit;
-- returns the list's new length.
local function push_all(list, source, left, from, to)
  local cmd, length = left and 'LPUSH' or 'RPUSH', 0
  from, to = from or 1, to or #source
  for i = from, to, 1000 do
    length = redis.call(cmd, list, unpack(source, i, math.min(i + 999, to)))
  end
  return length
end

local BATCH_FIELDS = {'bid', 'st', 'attempt', 'tok', 'created', 'n', 'err'}

-- After a key's current batch ended: schedule its pending items or forget the key.
-- Returns true when workers should be woken (see wakes).
local function reschedule(base, due, key, now, max_items, max_wait, idle)
  local kh = base .. 'k:' .. key
  local pending = redis.call('LLEN', base .. 'i:' .. key)
  if pending == 0 then
    redis.call('ZREM', due, key)
    redis.call('DEL', kh, base .. 'd:' .. key)
    return false
  end
  local times = redis.call('HMGET', kh, 'first', 'last')
  local first = tonumber(times[1])
  -- 'last' is only kept up to date for debounced batchers (idle > 0)
  local deadline = due_at(first, tonumber(times[2]) or first, pending, now, max_items, max_wait, idle)
  local head = head_of(due)
  redis.call('ZADD', due, deadline, key)
  return wakes(deadline, head, now)
end

-- The ack transition's counters (redbatch.engine TRANSITIONS['ack']), for `batches`
-- acknowledged batches holding `items` items in all: ack.lua and finish.lua (jobs) both end
-- batches this way.
local function count_acked(stats, batches, items, now)
  if batches == 0 then return end
  redis.call('HINCRBY', stats, 'in_flight', -batches)
  redis.call('HINCRBY', stats, 'flushed_batches', batches)
  redis.call('HINCRBY', stats, 'flushed_items', items)
  redis.call('HSET', stats, 'last_flush_at', now)
end

-- A running batch of a key ended (ack): drop it, then schedule the key's pending items or
-- forget the key, as reschedule does. A key with nothing pending is deleted whole, its batch
-- fields with it. Returns true when workers should be woken (see wakes).
local function end_batch(base, due, key, now, max_items, max_wait, idle)
  local kh = base .. 'k:' .. key
  if redis.call('LLEN', base .. 'i:' .. key) == 0 then
    redis.call('ZREM', due, key)
    redis.call('DEL', kh, base .. 'b:' .. key, base .. 'd:' .. key)
    return false
  end
  redis.call('DEL', base .. 'b:' .. key)
  redis.call('HDEL', kh, unpack(BATCH_FIELDS))
  return reschedule(base, due, key, now, max_items, max_wait, idle)
end

-- Move the current batch of a key to dead letters with an error; returns its batch id.
local function bury(base, dead, key, error, now)
  local kh = base .. 'k:' .. key
  local b = redis.call('HMGET', kh, 'bid', 'attempt', 'created', 'tok')
  local bid = b[1]
  redis.call('HSET', base .. 'x:' .. bid, 'key', key, 'attempts', b[2], 'error', error,
    'created', b[3], 'died', now, 'tok', b[4] or 0)
  if redis.call('EXISTS', base .. 'b:' .. key) == 1 then
    redis.call('RENAME', base .. 'b:' .. key, base .. 'xi:' .. bid)
  end
  redis.call('ZADD', dead, now, bid)
  redis.call('HDEL', kh, unpack(BATCH_FIELDS))
  return bid
end

-- Split batch ids into dead letters with a record and unknown ones, dropping the index
-- entries of unknown ones (a record lost to eviction or a hand DEL leaves its entry behind).
-- Returns known ids, unknown ids, and how many index entries were dropped.
local function split_letters(base, dead, ids)
  local known, unknown, dropped = {}, {}, 0
  for _, bid in ipairs(ids) do
    if redis.call('EXISTS', base .. 'x:' .. bid) == 1 then
      known[#known + 1] = bid
    else
      unknown[#unknown + 1] = bid
      dropped = dropped + redis.call('ZREM', dead, bid)
    end
  end
  return known, unknown, dropped
end

-- The dead letters a replay or a purge changes. 'all' mode: those select_all() picks, an id
-- whose record is gone dropped on the way, never refused. 'ids' mode: ARGV[first..], all or
-- none, so the caller changes nothing when `unknown` is not empty.
-- Returns the chosen ids, the known ones among them, the unknown ones, the entries dropped.
local function choose_letters(base, dead, mode, select_all, first)
  local chosen = {}
  if mode == 'all' then
    chosen = select_all()
  else
    for i = first, #ARGV do chosen[#chosen + 1] = ARGV[i] end
  end
  local ids, unknown, dropped = split_letters(base, dead, chosen)
  if mode == 'all' then unknown = {} end
  return chosen, ids, unknown, dropped
end

-- True when (bid, token) still holds the running batch of key.
local function holds(kh, bid, token)
  local b = redis.call('HMGET', kh, 'bid', 'tok', 'st')
  return b[1] == bid and b[2] == token and b[3] == 'run'
end

-- The clear transition: drop a key's pending items and any batch waiting to retry; a running
-- batch stays. Returns the number of items dropped.
local function clear_key(base, due, age, stats, key)
  local kh = base .. 'k:' .. key
  local dropped = redis.call('LLEN', base .. 'i:' .. key)
  redis.call('DEL', base .. 'i:' .. key, base .. 'd:' .. key)
  redis.call('ZREM', age, key)
  redis.call('HDEL', kh, 'first', 'last')
  if dropped > 0 then redis.call('HINCRBY', stats, 'buffered_items', -dropped) end
  local st = redis.call('HGET', kh, 'st')
  if st == 'wait' then
    dropped = dropped + tonumber(redis.call('HGET', kh, 'n'))
    redis.call('DEL', base .. 'b:' .. key)
    redis.call('HDEL', kh, unpack(BATCH_FIELDS))
    redis.call('HINCRBY', stats, 'retrying', -1)
    st = false
  end
  if not st then
    redis.call('ZREM', due, key)
    redis.call('DEL', kh)
  end
  return dropped
end

-- ------------------------------------------------------------------ job records
--
-- redbatch.engine.JOB_TRANSITIONS, stated again: row -> {statuses it leaves, status it enters}.
-- job_moves applies a row to a record, its indexes and its group's counters; every job step
-- goes through it, in the same script as the engine transition that moves the job.
-- (tests/test_redis_store.py checks this table against the engine's.)
local JOB_ROWS = {
  submit = {{}, 'pending'},
  claim = {{pending = true}, 'running'},
  claim_retry = {{pending = true}, 'running'},
  reclaim = {{running = true}, 'running'},
  bury_lapsed = {{running = true}, 'failed'},
  heartbeat = {{running = true}, 'running'},
  finish_succeeded = {{running = true}, 'succeeded'},
  finish_cancelled = {{running = true}, 'cancelled'},
  finish_advance = {{running = true}, 'pending'},
  fail_retry = {{running = true}, 'pending'},
  fail_dead = {{running = true}, 'failed'},
  cancel_pending = {{pending = true}, 'cancelled'},
  cancel_running = {{running = true}, 'running'},
  retry_jobs = {{failed = true}, 'pending'},
  progress = {{running = true}, 'running'},
}
local JOB_STATUSES = {'pending', 'running', 'succeeded', 'failed', 'cancelled'}
local OPEN_STATUS = {pending = true, running = true}

-- An integer millisecond count as digits (Lua would print a large number with an exponent).
local function ms(n)
  return string.format('%d', n)
end

-- A job's member in the BYLEX indexes: created_ms zero-padded to 15 digits, ':', its id.
local function index_member(created, id)
  local digits = ms(tonumber(created))
  return string.rep('0', 15 - #digits) .. digits .. ':' .. id
end

-- Put a job's payload under its key as a pending entry at deadline score `score` (the append
-- transition for one entry). The key must have no current batch: a job has one entry at a
-- time, and finish_advance ends the batch before it enqueues the next step.
-- Returns true when workers should be woken.
local function job_enqueue(base, key, payload, score, now)
  local due, kh = base .. 'due', base .. 'k:' .. key
  local length = redis.call('RPUSH', base .. 'i:' .. key, ms(now) .. '::' .. payload)
  redis.call('HINCRBY', base .. 'stats', 'buffered_items', 1)
  if length == 1 then
    redis.call('HSET', kh, 'first', now)
    redis.call('ZADD', base .. 'age', now, key)
  end
  local head = head_of(due)
  redis.call('ZADD', due, score, key)
  return wakes(score, head, now)
end

-- Create a job's record and its entry (the submit row), unless a record of that id exists.
-- Returns whether it was created, and whether workers should be woken.
local function job_create(base, id, fn, payload, score, lane, max_attempts, steps, group, now)
  local jh = base .. 'j:' .. id
  if redis.call('EXISTS', jh) == 1 then return false, false end
  redis.call('HSET', jh, 'function', fn, 'status', 'pending', 'lane', lane, 'attempt', 0,
    'max_attempts', max_attempts, 'step', 0, 'steps', steps, 'progress', '', 'message', '',
    'result', '', 'error', '', 'created', ms(now), 'started', '', 'finished', '', 'group', group,
    'cancel', '0', 'payload', payload, 'dead', '')
  local member = index_member(now, id)
  redis.call('ZADD', base .. 'jx:all', 0, member)
  redis.call('ZADD', base .. 'jx:pending', 0, member)
  if group ~= '' then
    redis.call('ZADD', base .. 'jgm:' .. group, 0, member)
    redis.call('ZADD', base .. 'jgx:pending:' .. group, 0, member)
    redis.call('HINCRBY', base .. 'jg:' .. group, 'total', 1)
    redis.call('HINCRBY', base .. 'jg:' .. group, 'pending', 1)
  end
  return true, job_enqueue(base, id, payload, score, now)
end

-- A group with no pending or running member is finished: once per round, record when and
-- submit its callback job (due now, lane NORMAL, outside the group). Returns whether workers
-- should be woken.
local function group_finish_if_done(base, group, now)
  local gh = base .. 'jg:' .. group
  local g = redis.call('HMGET', gh, 'pending', 'running', 'finished', 'round', 'callback',
    'callback_function', 'callback_max_attempts')
  if (tonumber(g[1]) or 0) + (tonumber(g[2]) or 0) > 0 or (g[3] or '') ~= '' then return false end
  redis.call('HSET', gh, 'finished', ms(now))
  redis.call('ZADD', base .. 'jgf', now, group)
  if (g[5] or '') == '' then return false end
  local id = group .. ':callback:' .. g[4] -- redbatch.jobrecords.callback_job_id
  redis.call('HSET', gh, 'callback_job', id)
  local _, wake = job_create(base, id, g[6], g[5], now, 1, tonumber(g[7]), 1, '', now)
  return wake
end

-- A finished group whose member is put back to pending opens again, for a new round.
local function group_reopen(base, group)
  local gh = base .. 'jg:' .. group
  if (redis.call('HGET', gh, 'finished') or '') == '' then return end
  redis.call('HSET', gh, 'finished', '')
  redis.call('HINCRBY', gh, 'round', 1)
  redis.call('ZREM', base .. 'jgf', group)
end

-- Apply JOB_ROWS[row] to job `id`: its status (with `fields`, a table of field -> value, set
-- in the same HSET), its status indexes, its group's counters (each member counted in
-- exactly one status, so a row that keeps the status moves no counter) and, when the row
-- ends the group's last open member, the group's end. A job whose record is missing or
-- whose status the row does not leave is left as it is.
-- Returns whether the row applied, and whether workers should be woken (a callback job).
local function job_moves(base, id, row, now, fields)
  local rule, jh = JOB_ROWS[row], base .. 'j:' .. id
  local rec = redis.call('HMGET', jh, 'status', 'created', 'group')
  local old, group = rec[1], rec[3] or ''
  if not old or not rule[1][old] then return false, false end
  local new, args = rule[2], {'status', rule[2]}
  for field, value in pairs(fields or {}) do
    args[#args + 1] = field
    args[#args + 1] = value
  end
  redis.call('HSET', jh, unpack(args))
  if old == new then return true, false end
  local member = index_member(rec[2], id)
  redis.call('ZREM', base .. 'jx:' .. old, member)
  redis.call('ZADD', base .. 'jx:' .. new, 0, member)
  if group == '' then
    if not OPEN_STATUS[new] then redis.call('ZADD', base .. 'jf', now, id) end
    if not OPEN_STATUS[old] then redis.call('ZREM', base .. 'jf', id) end
    return true, false
  end
  local gh = base .. 'jg:' .. group
  redis.call('HINCRBY', gh, old, -1)
  redis.call('HINCRBY', gh, new, 1)
  redis.call('ZREM', base .. 'jgx:' .. old .. ':' .. group, member)
  redis.call('ZADD', base .. 'jgx:' .. new .. ':' .. group, 0, member)
  if OPEN_STATUS[old] and not OPEN_STATUS[new] then
    return true, group_finish_if_done(base, group, now)
  end
  if OPEN_STATUS[new] and not OPEN_STATUS[old] then group_reopen(base, group) end
  return true, false
end

-- Delete a finished job's record, its index entries and its dead letter (if still held).
local function job_delete(base, id)
  local jh = base .. 'j:' .. id
  local rec = redis.call('HMGET', jh, 'status', 'created', 'group', 'dead')
  if not rec[1] then return 0 end
  local member = index_member(rec[2], id)
  redis.call('ZREM', base .. 'jx:all', member)
  redis.call('ZREM', base .. 'jx:' .. rec[1], member)
  redis.call('ZREM', base .. 'jf', id)
  if (rec[4] or '') ~= '' then
    redis.call('ZREM', base .. 'dead', rec[4])
    redis.call('DEL', base .. 'x:' .. rec[4], base .. 'xi:' .. rec[4])
  end
  redis.call('DEL', jh)
  return 1
end
