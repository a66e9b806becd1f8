-- cancel_order.lua: cancels an order and releases its seats at once.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua; KEYS[5] the order's subject, KEYS[6] the
--   Idempotency-Key record, KEYS[FIRST_SEAT..] the order's seat keys.
-- ARGV[8..11] webhook outbox, history retention, controls and idempotency (_lib.lua)
-- An order whose time already ran out is expired instead, as a read would show it (spec section 11).
-- Returns {'OK', order, flight version, rate}, {'EXPIRED', order} or {'REPLAY', idempotency record}.
-- Errors: NOT_FOUND, SUBJECT <subject key>, STALE <seats>, IDEMPOTENCY_REUSED,
--         RATE_LIMITED <retry ms> <rate> <window ms>, CLOSED <state>, PAYING.
local order, refused = load_owned_order()
if not order then return refused end
local reply, spec, now = admit_owner_write(order)
if reply then return reply end

local changes = release_seats(FIRST_SEAT, {})
redis.call('ZREM', KEYS[3], ARGV[4])
local _, flat = save_order({'state', 'CANCELLED'}, tonumber(ARGV[7]))
remember(spec, flat)
return order_reply('OK', announce_seats(changes, nil, 'cancel'), flat)
