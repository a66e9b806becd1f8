-- record_attempt.lua: records the outcome of one payment attempt, exactly once.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua (ARGV[5] is '*'); KEYS[FIRST_SEAT..] the
--   order's seat keys.
-- ARGV[8] payment id   ARGV[9] attemptsLeft the attempt started with (compare-and-set: a
-- duplicate job run records nothing)   ARGV[10] outcome: success | declined | timeout
-- ARGV[11] the gateway's message   ARGV[12] confirmation id (used on success)
-- ARGV[13] release on failure: deadline | immediate   ARGV[14] attempts per order
-- The outcome must be resolved (the gateway answered, or said "no charge" under the attempt's key):
-- FAILED therefore means nothing was charged. A lapsed order is expired first. Success is fenced:
-- it confirms only if the hold is still running and every seat is still held by this order;
-- otherwise the order EXPIRES, nothing is sold and the order owes a settlement (paymentStatus
-- 'refunding', see owe_settlement): the caller refunds the charge.
-- Returns {'CONFIRMED'|'LATE'|'EXPIRED'|'RETRY'|'FAILED'|'NOOP', order}.
-- Errors: STALE <seats>.
local LATE_MESSAGE = 'The payment went through after the hold had ended; it is being refunded and nothing was confirmed.'
local order = load_order(KEYS[4], ARGV[5])
if not order then return {'NOOP', {}} end
if order.state ~= 'PAYING' or order.paymentId ~= ARGV[8]
   or order.attemptsLeft ~= ARGV[9] then
  return order_reply('NOOP')
end
local stale = check_expected_seats(order)
if stale then return stale end

local now = now_ms()
local order_id = ARGV[4]
local retention = tonumber(ARGV[7])
local success = ARGV[10] == 'success'

if hold_expired(order, now) then
  expire_now(success and LATE_MESSAGE or EXPIRED_MESSAGE)
  return order_reply(success and 'LATE' or 'EXPIRED')
end
if success then
  for i = FIRST_SEAT, #KEYS do
    local kind, owner = seat_owner(redis.call('GET', KEYS[i]))
    note_before(seat_id_of(KEYS[i]), kind)
    if kind ~= 'H' or owner ~= order_id then
      expire_now(LATE_MESSAGE)
      return order_reply('LATE')
    end
  end
  local changes = {}
  for i = FIRST_SEAT, #KEYS do
    redis.call('SET', KEYS[i], 'C|' .. order_id)
    changes[seat_id_of(KEYS[i])] = {status = 'confirmed', o = order_id}
  end
  redis.call('HINCRBY', KEYS[1], 'sold', #KEYS - FIRST_SEAT + 1)
  redis.call('ZREM', KEYS[3], order_id)
  save_order({'state', 'CONFIRMED', 'paymentStatus', 'success', 'lastError', '',
              'confirmationId', ARGV[12]}, retention)
  announce_seats(changes, now, 'confirm')
  return order_reply('CONFIRMED')
end

local left = tonumber(ARGV[9]) - 1
if left > 0 then
  save_order({'attemptsLeft', left, 'paymentStatus', 'retrying', 'lastError', ARGV[11]}, nil)
  return order_reply('RETRY')
end
local message = 'Payment failed after ' .. ARGV[14] .. ' attempts: ' .. ARGV[11]
local changes = {}
if ARGV[13] == 'immediate' then
  changes = release_seats(FIRST_SEAT, {})
  redis.call('ZREM', KEYS[3], order_id)
end
save_order({'state', 'FAILED', 'attemptsLeft', 0, 'paymentStatus', 'failed',
            'lastError', message}, retention)
announce_seats(changes, now, 'payment')  -- SEATS_RELEASE_ON_FAILURE=immediate: the payment released them
return order_reply('FAILED')
