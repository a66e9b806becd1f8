-- gateway_charge.lua: the simulated payment gateway charges once per idempotency key.
-- KEYS[1] the key's record (hash)   KEYS[2] the gateway's books (hash: charged, refunded)
-- ARGV[1] the gateway's decision: success | declined   ARGV[2] its message
-- ARGV[3] reference (the order id)   ARGV[4] how long the record is kept (s)
-- Record and count are one step: a call that Redis ran took effect completely (record written,
-- books counted), one that it never ran did nothing. A key that already has a record (a charge, a
-- decline, or 'void' written by gateway_lookup) answers that record and charges nothing.
-- Returns the record as a flat list: outcome, message, ref, refunded (0|1), at (ms).
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'outcome', ARGV[1], 'message', ARGV[2], 'ref', ARGV[3], 'refunded', 0, 'at', now_ms())
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
if ARGV[1] == 'success' then redis.call('HINCRBY', KEYS[2], 'charged', 1) end
return redis.call('HGETALL', KEYS[1])
