-- admin_extend.lua: an operator extends an order's hold (spec section 13).
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua (ARGV[5] is '*'); KEYS[FIRST_SEAT..] the
--   order's seat keys.
-- ARGV[8] the operator's reason   ARGV[9] the extension (ms)   ARGV[10] the cap on a hold from the
-- order's first hold (ms, SEATS_MAX_HOLD_SECONDS)   ARGV[11] '1' to go beyond that cap   ARGV[12] how
-- long the order outlives its deadline (ms; its hash's TTL is set to the deadline plus this)
-- ARGV[13..16] webhook outbox, history retention, controls and idempotency (_lib.lua; the last two are '')
-- A SEATS_SELECTED or PAYING order's deadline moves to min(deadline + extension, first hold + cap) (no
-- min with ARGV[11] '1'), on every seat, the deadline index and the order; each seat's new deadline is
-- a history entry with cause 'admin' and the reason. A seat another order holds or bought, or an
-- operator blocked (possible only after data loss) is never overwritten. A lapsed order is expired first.
-- Returns {'OK', order, flight version} or {'EXPIRED', order}.
-- Errors: NOT_FOUND, STALE <seats>, CLOSED <state>, NO_SEATS (PENDING), HOLD_CAP <cap ms> (the cap
--         leaves no later deadline), CONFLICT <seat>:<held|confirmed|blocked>,...
local order = load_order(KEYS[4], ARGV[5])
if not order then return fail('NOT_FOUND', ARGV[4]) end
local stale = check_expected_seats(order)
if stale then return stale end
local now = now_ms()
if TERMINAL[order.state] then return fail('CLOSED', order.state) end
if hold_expired(order, now) then
  expire_now(expired_message(order))
  return order_reply('EXPIRED')
end
if order.state == 'PENDING' or #KEYS < FIRST_SEAT then return fail('NO_SEATS') end

local current = tonumber(order.holdExpiresAt)
local cap = tonumber(order.firstHoldAt) + tonumber(ARGV[10])
local deadline = current + tonumber(ARGV[9])
if ARGV[11] ~= '1' then deadline = math.min(deadline, cap) end
if deadline <= current then return fail('HOLD_CAP', cap) end

local lost = check_seats_still_ours()
if lost then return lost end

local changes = hold_until(deadline)
local _, flat = save_order({'holdExpiresAt', deadline}, deadline - now + tonumber(ARGV[12]), now)
return order_reply('OK', announce_seats(changes, now, 'admin', ARGV[8]), flat)
