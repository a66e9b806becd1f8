-- cancel_order.lua: cancels an order and releases its seats at once.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua; KEYS[FIRST_SEAT..] the order's seat keys.
-- An order whose hold already lapsed is expired instead, as a read would show it (spec §11).
-- Returns {'OK', order} or {'EXPIRED', order}.
-- Errors: NOT_FOUND, CLOSED <state>, PAYING, STALE <seats>.
local order = load_order(KEYS[4], ARGV[5])
if not order then return fail('NOT_FOUND', ARGV[4]) end
if TERMINAL[order.state] then return fail('CLOSED', order.state) end
local stale = check_expected_seats(order)
if stale then return stale end
if hold_expired(order, now_ms()) then
  expire_now(EXPIRED_MESSAGE)
  return order_reply('EXPIRED')
end
if order.state == 'PAYING' then return fail('PAYING') end

local changes = release_seats(FIRST_SEAT, {})
redis.call('ZREM', KEYS[3], ARGV[4])
save_order({'state', 'CANCELLED'}, tonumber(ARGV[7]))
return order_reply('OK', announce_seats(changes))
