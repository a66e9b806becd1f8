-- cancel_order.lua: cancels an order and releases its seats at once.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua; KEYS[5] the order's subject, KEYS[6] the
--   Idempotency-Key record, KEYS[FIRST_SEAT..] the order's seat keys.
-- ARGV[8..11] webhook outbox, history retention, controls and idempotency (_lib.lua)
-- An order whose time already ran out is expired instead, as a read would show it (spec section 11).
-- Returns {'OK', order, flight version, rate}, {'EXPIRED', order} or {'REPLAY', idempotency record}.
-- Errors: NOT_FOUND, SUBJECT <subject key>, STALE <seats>, IDEMPOTENCY_REUSED,
--         RATE_LIMITED <retry ms> <rate> <window ms>, CLOSED <state>, PAYING.
local order = load_order(KEYS[4], ARGV[5])
if not order then return fail('NOT_FOUND', ARGV[4]) end
local refused = check_subject(order) or check_expected_seats(order)
if refused then return refused end
local spec = idempotency()
local replay = replayed(spec)
if replay then return replay end
local now = now_ms()
local limited = take_token(controls(), now)
if limited then return limited end
if TERMINAL[order.state] then return fail('CLOSED', order.state) end
if hold_expired(order, now) then
  expire_now(expired_message(order))
  return order_reply('EXPIRED')
end
if order.state == 'PAYING' then return fail('PAYING') end

local changes = release_seats(FIRST_SEAT, {})
redis.call('ZREM', KEYS[3], ARGV[4])
local _, flat = save_order({'state', 'CANCELLED'}, tonumber(ARGV[7]))
remember(spec, flat)
return order_reply('OK', announce_seats(changes, nil, 'cancel'), flat)
