-- replay: put dead letters' entries back in front of their keys' pending entries, due now.
-- A key's letters go back in the order they died, each letter's entries in arrival order;
-- with dedupe, an entry equal to one in front of it collapses into that one (see collapse).
-- transition: replay
-- KEYS[1] due zset, KEYS[2] age zset, KEYS[3] stats hash, KEYS[4] dead zset
-- ARGV[1] base, ARGV[2] now_ms, ARGV[3] wake channel, ARGV[4] dedupe '1'|'0', ARGV[5] mode:
--   'ids': ARGV[6..] batch ids: all of them replayed or, when one is unknown, none
--   'all': ARGV[6] limit, ARGV[7] cutoff (a ZRANGEBYSCORE bound): the newest letters that
--          died up to the cutoff, `limit` of them but never splitting a millisecond (so a
--          later call, which puts older letters in front of these, keeps each key's order)
-- Index entries whose record is gone (evicted, deleted by hand) are dropped on the way.
-- Returns {entries the letters held (collapsed ones included), index entries taken,
-- index entries dropped, {unknown ids}}.
local due, age, stats, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base, now, dedupe, mode = ARGV[1], tonumber(ARGV[2]), ARGV[4] == '1', ARGV[5]

-- The newest letters at or before the cutoff, whole milliseconds only.
local function newest(limit, cutoff)
  local rows = redis.call('ZREVRANGEBYSCORE', dead, cutoff, '-inf', 'WITHSCORES', 'LIMIT', 0, limit + 1)
  local ids = {}
  if #rows <= 2 * limit then
    for i = 1, #rows, 2 do ids[#ids + 1] = rows[i] end
    return ids
  end
  local split = rows[#rows]  -- the millisecond the limit falls in: left for a later call
  for i = 1, #rows - 2, 2 do
    if rows[i + 1] ~= split then ids[#ids + 1] = rows[i] end
  end
  if #ids == 0 then ids = redis.call('ZRANGEBYSCORE', dead, split, split) end
  return ids
end

local picked = function() return newest(tonumber(ARGV[6]), ARGV[7]) end
local chosen, ids, unknown, dropped = choose_letters(base, dead, mode, picked, 6)
if #unknown > 0 then return {0, 0, dropped, unknown} end

-- Each key's letters, in the order they died: by the fencing token of their last attempt
-- (ordered within a partition, unlike the clocks of several hosts), then by time of death.
local by_key, keys = {}, {}
for _, bid in ipairs(ids) do
  local meta = redis.call('HMGET', base .. 'x:' .. bid, 'key', 'tok', 'died')
  if meta[1] then  -- a record without its key was written by hand: left as it is
    if not by_key[meta[1]] then
      by_key[meta[1]] = {}
      keys[#keys + 1] = meta[1]
    end
    local letters = by_key[meta[1]]
    letters[#letters + 1] = {bid = bid, tok = tonumber(meta[2]) or 0, died = tonumber(meta[3]) or 0}
  end
end

local function died_before(a, b)
  if a.tok ~= b.tok then return a.tok < b.tok end
  if a.died ~= b.died then return a.died < b.died end
  return a.bid < b.bid
end

-- With dedupe no two equal entries wait under a key at once: of the replayed entries keep
-- the first of each digest, and drop waiting entries equal to one of them (it is in front).
local function collapse(key, items, entries)
  local kept, seen, clash, clashes = {}, {}, {}, false
  for _, entry in ipairs(entries) do
    local digest = digest_of(entry) or ''  -- nil: written by hand, never collapsed
    if digest == '' then  -- added while the batcher did not dedupe, or written by hand
      kept[#kept + 1] = entry
    elseif not seen[digest] then
      seen[digest] = true
      kept[#kept + 1] = entry
      if redis.call('SADD', base .. 'd:' .. key, digest) == 0 then
        clash[digest], clashes = true, true
      end
    end
  end
  if clashes then
    local waiting, rest = redis.call('LRANGE', items, 0, -1), {}
    for _, entry in ipairs(waiting) do
      if not clash[digest_of(entry) or ''] then rest[#rest + 1] = entry end
    end
    redis.call('DEL', items)
    push_all(items, rest, false)
    redis.call('HINCRBY', stats, 'buffered_items', #rest - #waiting)
  end
  return kept
end

local replayed, wake = 0, false
for _, key in ipairs(keys) do
  local letters = by_key[key]
  table.sort(letters, died_before)
  local entries = {}
  for _, letter in ipairs(letters) do
    for _, entry in ipairs(redis.call('LRANGE', base .. 'xi:' .. letter.bid, 0, -1)) do
      entries[#entries + 1] = entry
    end
    redis.call('DEL', base .. 'x:' .. letter.bid, base .. 'xi:' .. letter.bid)
    redis.call('ZREM', dead, letter.bid)
  end
  if #entries > 0 then
    local kh, items = base .. 'k:' .. key, base .. 'i:' .. key
    replayed = replayed + #entries
    if dedupe then entries = collapse(key, items, entries) end
    local reversed = {}
    for j = #entries, 1, -1 do reversed[#reversed + 1] = entries[j] end
    push_all(items, reversed, true)
    local first = arrival(entries[1]) or now  -- unframed: dead-lettered again when claimed
    redis.call('HSET', kh, 'first', first)
    if redis.call('HEXISTS', kh, 'last') == 0 then redis.call('HSET', kh, 'last', now) end
    redis.call('ZADD', age, first, key)
    redis.call('HINCRBY', stats, 'buffered_items', #entries)
    -- A key with a current batch keeps its deadline: its items wait for the batch to end.
    -- A key made due now wakes workers whatever the index head was (wakes in lib.lua).
    if redis.call('HEXISTS', kh, 'st') == 0 then
      redis.call('ZADD', due, now, key)
      wake = true
    end
  end
end
if wake then redis.call('PUBLISH', ARGV[3], '1') end
return {replayed, #chosen, dropped, unknown}
