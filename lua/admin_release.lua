-- admin_release.lua: an operator's force-release of an order's holds (spec section 13).
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua (ARGV[5] is '*'); KEYS[FIRST_SEAT..] the
--   order's seat keys.
-- ARGV[8] the operator's reason (recorded in the history, never shown to the customer)
-- ARGV[9..12] webhook outbox, history retention, controls and idempotency (_lib.lua; the last two are '')
-- PENDING, SEATS_SELECTED and PAYING orders become CANCELLED and their seats are released and announced
-- at once; a PAYING order owes a settlement (its charge, if any, is refunded: owe_settlement). A FAILED
-- order that still keeps its seats until its deadline releases them and stays FAILED. Every change is
-- recorded with cause 'admin' and the reason (an order that held no seat gets one order entry).
-- A lapsed order is expired first, as every action sees it (spec section 11).
-- Returns {'OK', order, flight version|false} (CANCELLED), {'RELEASED', order, flight version|false}
-- (FAILED, seats released) or {'EXPIRED', order}.
-- Errors: NOT_FOUND, STALE <seats>, CLOSED <state> (CONFIRMED, EXPIRED, CANCELLED, or FAILED with no
--         seat left to release).
local RELEASED_MESSAGE = 'An operator released this order; its seats are back on sale.'
local order = load_order(KEYS[4], ARGV[5])
if not order then return fail('NOT_FOUND', ARGV[4]) end
local stale = check_expected_seats(order)
if stale then return stale end
local now = now_ms()
local reason = ARGV[8]
local failed_with_seats = order.state == 'FAILED' and redis.call('ZSCORE', KEYS[3], ARGV[4])
if TERMINAL[order.state] and not failed_with_seats then return fail('CLOSED', order.state) end
if not TERMINAL[order.state] and hold_expired(order, now) then
  expire_now(expired_message(order))
  return order_reply('EXPIRED')
end

local changes = release_seats(FIRST_SEAT, {})
redis.call('ZREM', KEYS[3], ARGV[4])
if failed_with_seats then
  return order_reply('RELEASED', announce_seats(changes, now, 'admin', reason))
end
local _, flat = save_order(owe_settlement({'state', 'CANCELLED', 'lastError', RELEASED_MESSAGE}, now),
                           tonumber(ARGV[7]), now)
local version = announce_seats(changes, now, 'admin', reason)
if not version then record_order_entry('admin', reason, now) end
return order_reply('OK', version, flat)
