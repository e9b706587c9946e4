-- purge: delete dead letters: record, entries and index entry.
-- KEYS[1] dead zset
-- ARGV[1] base, ARGV[2] mode:
--   'ids': ARGV[3..] batch ids: all of them deleted or, when one is unknown, none
--   'all': ARGV[3] limit, ARGV[4] cutoff (a ZRANGEBYSCORE bound): the oldest `limit`
--          letters that died up to the cutoff
-- Returns {letters deleted, index entries taken, {unknown ids}}.
local dead, base, mode = KEYS[1], ARGV[1], ARGV[2]
local ids, unknown = {}, {}
if mode == 'all' then
  ids = redis.call('ZRANGEBYSCORE', dead, '-inf', ARGV[4], 'LIMIT', 0, tonumber(ARGV[3]))
else
  for i = 3, #ARGV do
    if redis.call('EXISTS', base .. 'x:' .. ARGV[i]) == 1 then
      ids[#ids + 1] = ARGV[i]
    else
      unknown[#unknown + 1] = ARGV[i]
    end
  end
  if #unknown > 0 then return {0, 0, unknown} end
end
local purged = 0
for _, bid in ipairs(ids) do
  purged = purged + redis.call('ZREM', dead, bid)
  redis.call('DEL', base .. 'x:' .. bid, base .. 'xi:' .. bid)
end
return {purged, #ids, unknown}
