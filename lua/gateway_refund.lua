-- gateway_refund.lua: refunds the charge made under an idempotency key, at most once.
-- KEYS[1] the key's record (hash)   KEYS[2] the gateway's books (hash: charged, refunded)
-- Marking the record and counting the refund are one step; a second call answers the record as it
-- stands and counts nothing.
-- Returns the record as a flat list (refunded = 1).
-- Errors: NOT_CHARGED <outcome> (no record, or nothing was charged under this key).
local outcome = redis.call('HGET', KEYS[1], 'outcome')
if outcome ~= 'success' then return fail('NOT_CHARGED', outcome or 'none') end
if redis.call('HGET', KEYS[1], 'refunded') ~= '1' then
  redis.call('HSET', KEYS[1], 'refunded', 1, 'refundedAt', now_ms())
  redis.call('HINCRBY', KEYS[2], 'refunded', 1)
end
return redis.call('HGETALL', KEYS[1])
