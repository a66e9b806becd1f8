-- mark_trying.lua: shows that a payment attempt is under way (paymentStatus 'trying').
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua (no seat keys; ARGV[5] is '*').
-- ARGV[8] payment id   ARGV[9] attemptsLeft the caller saw (a mismatch means another run of the
-- same job already moved on), or '' for the job's first attempt: then the reply's attemptsLeft is
-- the fence the caller passes to record_attempt (no separate read of the order before this script)
-- Returns {'OK', order} when this attempt may run, {'NOOP', order} when it must not.
local order = load_order(KEYS[4], ARGV[5])
if not order then return {'NOOP', {}} end
if order.state ~= 'PAYING' or order.paymentId ~= ARGV[8]
   or (ARGV[9] ~= '' and order.attemptsLeft ~= ARGV[9]) then
  return order_reply('NOOP')
end
if order.paymentStatus ~= 'trying' then save_order({'paymentStatus', 'trying'}, nil) end
return order_reply('OK')
