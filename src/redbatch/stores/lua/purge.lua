-- purge: delete dead letters by id.
-- KEYS[1] dead zset
-- ARGV[1] base, ARGV[2..] batch ids
-- Returns the number deleted.
local dead, base = KEYS[1], ARGV[1]
local purged = 0
for i = 2, #ARGV do
  purged = purged + redis.call('ZREM', dead, ARGV[i])
  redis.call('DEL', base .. 'x:' .. ARGV[i], base .. 'xi:' .. ARGV[i])
end
return purged
