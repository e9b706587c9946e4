-- clear: drop a key's pending items and any batch waiting to retry; a running batch stays.
-- transition: clear (clear_key in lib.lua)
-- KEYS[1] due zset, KEYS[2] age zset, KEYS[3] stats hash
-- ARGV[1] base, ARGV[2] key
-- Returns the number of items dropped.
return clear_key(ARGV[1], KEYS[1], KEYS[2], KEYS[3], ARGV[2])
