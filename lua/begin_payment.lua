-- begin_payment.lua: starts a payment submission and extends the holds so they cannot lapse
-- while the attempts run.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua; KEYS[5] the order's subject, KEYS[6] the
--   Idempotency-Key record, KEYS[FIRST_SEAT..] the order's seat keys.
-- ARGV[8] payment id (also the arq job id)   ARGV[9] payment window: the holds last at least
-- this long from now (ms)   ARGV[10..13] outbox, history retention, controls and idempotency (_lib.lua)
-- A lapsed order is expired first. Every seat must still be this order's (a key that vanished, by
-- data loss, is taken again): a seat another order holds or bought is never overwritten.
-- Returns {'OK', order, flight version, rate} (state PAYING, paymentStatus trying), {'EXPIRED', order}
-- or {'REPLAY', idempotency record}.
-- Errors: NOT_FOUND, SUBJECT <subject key>, STALE <seats>, IDEMPOTENCY_REUSED,
--         RATE_LIMITED <retry ms> <rate> <window ms>, CLOSED <state>, PAYING, NO_SEATS,
--         CONFLICT <seat>:<held|confirmed|blocked>,...
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
if order.seats == '' or #KEYS < FIRST_SEAT then return fail('NO_SEATS') end

local lost = check_seats_still_ours()
if lost then return lost end

local deadline = math.max(tonumber(order.holdExpiresAt), now + tonumber(ARGV[9]))
local changes = hold_until(deadline)
local _, flat = save_order({'state', 'PAYING', 'paymentStatus', 'trying', 'paymentId', ARGV[8],
                            'lastError', '', 'holdExpiresAt', deadline}, nil)
remember(spec, flat)
return order_reply('OK', announce_seats(changes, nil, 'payment'), flat)
