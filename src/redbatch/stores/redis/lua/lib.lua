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

-- Move the current batch of a key to dead letters with an error.
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
