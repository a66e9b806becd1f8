-- expire_order.lua: the sweeper's step for one order whose deadline is due.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua (ARGV[5] is '*'); KEYS[FIRST_SEAT..] the
--   order's seat keys.
-- A SEATS_SELECTED or PAYING order past its deadline, or a PENDING order past its pendingUntil (it
-- never held a seat), becomes EXPIRED; a FAILED order keeps its state and releases its seats. Either
-- way it leaves the deadline index.
-- An order that owes a settlement (paymentStatus 'refunding', see owe_settlement) is left as it is
-- and answered SETTLE: the caller settles its payment (service/payments.py settle_payment).
-- Returns {'EXPIRED'|'RELEASED'|'DONE'|'SETTLE'|'NOT_DUE'|'GONE', order}.
-- Errors: STALE <seats>.
local order = load_order(KEYS[4], ARGV[5])
if not order then
  redis.call('ZREM', KEYS[3], ARGV[4])
  return {'GONE', {}}
end
if order.paymentStatus == 'refunding' then return order_reply('SETTLE') end
local stale = check_expected_seats(order)
if stale then return stale end
local now = now_ms()
if not hold_expired(order, now) then return order_reply('NOT_DUE') end

if order.state == 'PENDING' or order.state == 'SEATS_SELECTED' or order.state == 'PAYING' then
  expire_now(expired_message(order))
  return order_reply('EXPIRED')
end
local changes = release_seats(FIRST_SEAT, {})
redis.call('ZREM', KEYS[3], ARGV[4])
local flight_version = announce_seats(changes, nil, 'expire')
if order.state == 'FAILED' then return order_reply('RELEASED', flight_version) end
return order_reply('DONE', flight_version)
