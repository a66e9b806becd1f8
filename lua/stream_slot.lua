-- stream_slot.lua: the places of a subject's open SSE streams, across every API process (spec section
-- 10: at most SEATS_MAX_STREAMS_PER_SUBJECT at once).
-- KEYS[1] the subject's stream zset (service.keys.streams: member -> lease end, ms)
-- ARGV[1] open | renew | close   ARGV[2] the cap   ARGV[3] lease (ms): a place not renewed within it
-- (its API process died) no longer counts   ARGV[4..] members ('<process id>:<stream number>';
-- open takes exactly one)
-- Returns 1 (open: admitted; renew, close: done) or 0 (open: the subject is at its cap; nothing written).
local now = now_ms()
if ARGV[1] == 'close' then
  redis.call('ZREM', KEYS[1], unpack(ARGV, 4))
  return 1
end
local lease_until = now + tonumber(ARGV[3])
if ARGV[1] == 'renew' then
  for i = 4, #ARGV do redis.call('ZADD', KEYS[1], 'XX', lease_until, ARGV[i]) end
else
  if redis.call('ZCOUNT', KEYS[1], now, '+inf') >= tonumber(ARGV[2]) then return 0 end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('ZADD', KEYS[1], lease_until, ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
