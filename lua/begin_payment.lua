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
local order, refused = load_owned_order()
if not order then return refused end
local reply, spec, now = admit_owner_write(order)
if reply then return reply end
if order.seats == '' or #KEYS < FIRST_SEAT then return fail('NO_SEATS') end

local lost = check_seats_still_ours()
if lost then return lost end

local deadline = math.max(tonumber(order.holdExpiresAt), now + tonumber(ARGV[9]))
local changes = hold_until(deadline)
local _, flat = save_order({'state', 'PAYING', 'paymentStatus', 'trying', 'paymentId', ARGV[8],
                            'lastError', '', 'holdExpiresAt', deadline}, nil)
remember(spec, flat)
return order_reply('OK', announce_seats(changes, nil, 'payment'), flat)
