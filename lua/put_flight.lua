-- put_flight.lua: creates a flight or replaces its layout.
-- KEYS[1] flight hash   KEYS[2] change log   KEYS[3] deadline zset
-- ARGV[1] channel   ARGV[2] change-log length   ARGV[3] flight id   ARGV[4] rows
-- ARGV[5] columns (one letter each)   ARGV[6] capacity   ARGV[7] mode: ensure | put
-- 'ensure' creates the flight only when it is absent; 'put' also replaces an existing layout,
-- refused while any seat is held (an order is in the deadline index) or sold. Creating a flight
-- starts its change log afresh.
-- Returns {'CREATED'|'REPLACED'|'EXISTS', flight hash as a flat list}.
-- Errors: FLIGHT_IN_USE.
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[7] == 'ensure' then return {'EXISTS', redis.call('HGETALL', KEYS[1])} end
  local sold = tonumber(redis.call('HGET', KEYS[1], 'sold')) or 0
  if sold > 0 or redis.call('ZCARD', KEYS[3]) > 0 then return fail('FLIGHT_IN_USE', ARGV[3]) end
  redis.call('HSET', KEYS[1], 'rows', ARGV[4], 'columns', ARGV[5], 'capacity', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'layoutRev', 1)
  announce(KEYS[1], KEYS[2], 'layout', {})
  return {'REPLACED', redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'flightId', ARGV[3], 'rows', ARGV[4], 'columns', ARGV[5],
  'capacity', ARGV[6], 'createdAt', now, 'lastUpdated', now, 'version', 0, 'layoutRev', 1,
  'sold', 0)
-- A change log that outlived its flight hash (lost data) would refuse every XADD of the new
-- versions (ids must grow), and only after the script that made the change had written it.
-- After the HSET: a script's first write is the one an out-of-memory Redis refuses.
redis.call('DEL', KEYS[2])
return {'CREATED', redis.call('HGETALL', KEYS[1])}
