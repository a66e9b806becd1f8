-- settle_payment.lua: records that the payment of an order that ended unconfirmed is settled
-- (every charge made for it refunded at the gateway, every attempt key closed).
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua (no seat keys; ARGV[5] is '*').
-- ARGV[8] payment id   ARGV[9] paymentStatus now: refunded (a charge was refunded) | failed
-- (nothing had been charged)   ARGV[10] lastError, the customer's explanation
-- Only an order whose paymentStatus is 'refunding' for this payment changes (a repeat is a NOOP);
-- it leaves the deadline index, where owe_settlement had put it for the sweeper.
-- Returns {'SETTLED'|'NOOP', order}.
local order = load_order(KEYS[4], ARGV[5])
if not order then return {'NOOP', {}} end
if order.paymentStatus ~= 'refunding' or order.paymentId ~= ARGV[8] then return order_reply('NOOP') end
redis.call('ZREM', KEYS[3], ARGV[4])
local _, flat = save_order({'paymentStatus', ARGV[9], 'lastError', ARGV[10]}, nil)
return order_reply('SETTLED', nil, flat)
