-- create_order.lua: creates a PENDING order on a flight.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua (no seat keys; ARGV[6] is '').
-- ARGV[8] payment attempts allowed   ARGV[9] TTL of a non-terminal order (ms)
-- Returns {'OK', order hash as a flat list}.
-- Errors: FLIGHT_NOT_FOUND, ORDER_EXISTS.
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('FLIGHT_NOT_FOUND', ARGV[3]) end
if redis.call('EXISTS', KEYS[4]) == 1 then return fail('ORDER_EXISTS', ARGV[4]) end
local now = now_ms()
redis.call('HSET', KEYS[4],
  'orderId', ARGV[4], 'flightId', ARGV[3], 'tokenHash', ARGV[5], 'state', 'PENDING',
  'seats', '', 'holdExpiresAt', '', 'firstHoldAt', '', 'attemptsLeft', ARGV[8],
  'paymentStatus', '', 'paymentId', '', 'lastError', '', 'confirmationId', '',
  'version', 0, 'createdAt', now)
save_order({}, tonumber(ARGV[9]))
return order_reply('OK')
