-- gateway_lookup.lua: what happened under an idempotency key, answered once and for all.
-- KEYS[1] the key's record (hash)
-- ARGV[1] reference (the order id)   ARGV[2] how long the record is kept (s)
-- A key with no record gets the record 'void' ("no charge under this key") in the same step, so
-- the answer can never change: a charge call still on its way (sent before its caller timed out,
-- delayed by a pause or a slow link) finds the record and charges nothing.
-- Returns the record as a flat list: outcome (success | declined | void), message, ref, refunded, at.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'outcome', 'void', 'message', 'No charge was made under this key.',
             'ref', ARGV[1], 'refunded', 0, 'at', now_ms())
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return redis.call('HGETALL', KEYS[1])
