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
local chosen = {}
if mode == 'all' then
  chosen = redis.call('ZRANGEBYSCORE', dead, '-inf', ARGV[4], 'LIMIT', 0, tonumber(ARGV[3]))
else
  for i = 3, #ARGV do chosen[#chosen + 1] = ARGV[i] end
end
local ids, unknown, dropped = split_letters(base, dead, chosen)
if mode == 'all' then
  unknown = {}
elseif #unknown > 0 then
  return {0, 0, dropped, unknown}
end
for _, bid in ipairs(ids) do
  redis.call('ZREM', dead, bid)
  redis.call('DEL', base .. 'x:' .. bid, base .. 'xi:' .. bid)
end
return {#ids, #chosen, dropped, unknown}
