-- create_order.lua: creates a PENDING order on a flight, within the subject's limits.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua (no seat keys; ARGV[6] is ''); KEYS[5] is
--   the creating subject's hash, KEYS[6] the Idempotency-Key record.
-- ARGV[8] payment attempts allowed   ARGV[9] TTL of a non-terminal order (ms)
-- ARGV[10] the subject (e.g. 'a:203.0.113.7', 'b:buyer-42')   ARGV[11] how long the order may stay
--   PENDING (ms; then the sweeper expires it)   ARGV[12..15] outbox (unused), history retention (unused),
--   controls and idempotency (_lib.lua)
-- Returns {'OK', order hash as a flat list, false, rate} or {'REPLAY', idempotency record}.
-- Errors: FLIGHT_NOT_FOUND, IDEMPOTENCY_REUSED, ORDER_EXISTS, RATE_LIMITED <retry ms> <rate> <window ms>,
--         SUBJECT_LIMIT orders <limit> <current>.
if redis.call('EXISTS', KEYS[1]) == 0 then return fail('FLIGHT_NOT_FOUND', ARGV[3]) end
local spec = idempotency()
local replay = replayed(spec)
if replay then return replay end
if redis.call('EXISTS', KEYS[4]) == 1 then return fail('ORDER_EXISTS', ARGV[4]) end
local now = now_ms()
local c = controls()
local limited = take_token(c, now)
if limited then return limited end
local open, _, ended = 0, 0, {}
if c and c.orders > 0 then
  open, _, ended = subject_usage(now)
  if open >= c.orders then return subject_limit('orders', c.orders, open) end
end

local pending_until = now + tonumber(ARGV[11])
redis.call('HSET', KEYS[4],
  'orderId', ARGV[4], 'flightId', ARGV[3], 'tokenHash', ARGV[5], 'state', 'PENDING',
  'seats', '', 'holdExpiresAt', '', 'firstHoldAt', '', 'attemptsLeft', ARGV[8], 'attempts', ARGV[8],
  'paymentStatus', '', 'paymentId', '', 'lastError', '', 'confirmationId', '',
  'version', 0, 'createdAt', now, 'pendingUntil', pending_until,
  'subject', ARGV[10], 'subjectKey', c and KEYS[5] or '')
if c then
  forget(ended)
  redis.call('HSET', KEYS[5], KEYS[4], ARGV[4])
  redis.call('PEXPIRE', KEYS[5], c.ttl)
end
redis.call('ZADD', KEYS[3], pending_until, ARGV[4])
local _, flat = save_order({}, tonumber(ARGV[9]), now)
remember(spec, flat)
return order_reply('OK', nil, flat)
