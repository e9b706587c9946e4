-- purge: delete dead letters: record, entries and index entry.
-- transition: purge
-- KEYS[1] dead zset
-- ARGV[1] base, ARGV[2] mode:
--   'ids': ARGV[3..] batch ids: all of them deleted or, when one is unknown, none
--   'all': ARGV[3] limit, ARGV[4] cutoff (a ZRANGEBYSCORE bound): the oldest `limit`
--          letters that died up to the cutoff
-- Index entries whose record is gone (evicted, deleted by hand) are dropped on the way.
-- Returns {letters deleted, index entries taken, index entries dropped, {unknown ids}}.
local dead, base, mode = KEYS[1], ARGV[1], ARGV[2]
local oldest = function()
  return redis.call('ZRANGEBYSCORE', dead, '-inf', ARGV[4], 'LIMIT', 0, tonumber(ARGV[3]))
end
local chosen, ids, unknown, dropped = choose_letters(base, dead, mode, oldest, 3)
if #unknown > 0 then return {0, 0, dropped, unknown} end
for _, bid in ipairs(ids) do
  redis.call('ZREM', dead, bid)
  redis.call('DEL', base .. 'x:' .. bid, base .. 'xi:' .. bid)
end
return {#ids, #chosen, dropped, unknown}
