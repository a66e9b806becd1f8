-- cancel_order.lua: cancels an order and releases its seats at once.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua; KEYS[5..] the order's seat keys.
-- Returns {'OK', order}.
-- Errors: NOT_FOUND, CLOSED <state>, PAYING, STALE <seats>.
local order = load_order(KEYS[4], ARGV[5])
if not order then return fail('NOT_FOUND', ARGV[4]) end
if TERMINAL[order.state] then return fail('CLOSED', order.state) end
if order.state == 'PAYING' then return fail('PAYING') end
local stale = check_expected_seats(order)
if stale then return stale end

local changes = release_seats(5, {})
redis.call('ZREM', KEYS[3], ARGV[4])
save_order({'state', 'CANCELLED'}, tonumber(ARGV[7]))
return order_reply('OK', announce_seats(changes))
