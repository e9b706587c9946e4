-- jobs_page: read one page of a job index, newest first, with the records. Changes nothing.
-- No transition: a query, in one round trip and one consistent view.
-- KEYS[1] the index (B..'jx:all', B..'jx:'..status, B..'jgm:'..group or
-- B..'jgx:'..status..':'..group)
-- ARGV[1] base, ARGV[2] the page's upper bound, a ZREVRANGEBYLEX bound: '+' for the first page,
-- '(' .. the last member of the page before, ARGV[3] how many
-- Returns {member, the record as HGETALL answers it} per member ({} when its record is gone:
-- deleted by hand).
local base, page = ARGV[1], {}
local members = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[2], '-', 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(members) do
  page[#page + 1] = {member, redis.call('HGETALL', base .. 'j:' .. string.sub(member, 17))}
end
return page
