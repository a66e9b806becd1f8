-- due_orders.lua: the orders of one flight whose hold deadline has passed, by Redis's clock.
-- KEYS[1] the flight's deadline zset   ARGV[1] at most this many ids
-- Returns a list of order ids (oldest deadline first).
local now = now_ms()
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
