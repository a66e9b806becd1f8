-- mark_trying.lua: shows that a payment attempt is under way (paymentStatus 'trying').
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua (ARGV[5] is '*'); seat keys are only
--   needed (and checked, STALE otherwise) when the order's hold has lapsed.
-- ARGV[8] payment id   ARGV[9] attemptsLeft the caller saw (a mismatch means another run of the
-- same job already moved on), or '' for the job's first attempt: then the reply's attemptsLeft is
-- the fence the caller passes to record_attempt (no separate read of the order before this script)
-- A lapsed order is expired (and owes a settlement) instead of starting an attempt.
-- Returns {'OK', order} when this attempt may run, {'NOOP', order} when it must not,
-- {'EXPIRED', order} when the hold had lapsed.
-- Errors: STALE <seats>.
local order = load_order(KEYS[4], ARGV[5])
if not order then return {'NOOP', {}} end
if order.state ~= 'PAYING' or order.paymentId ~= ARGV[8]
   or (ARGV[9] ~= '' and order.attemptsLeft ~= ARGV[9]) then
  return order_reply('NOOP')
end
if hold_expired(order, now_ms()) then
  local stale = check_expected_seats(order)
  if stale then return stale end
  expire_now(EXPIRED_MESSAGE)
  return order_reply('EXPIRED')
end
if order.paymentStatus ~= 'trying' then save_order({'paymentStatus', 'trying'}, nil) end
return order_reply('OK')
