-- idempotency_settle.lua: ends the pending claim an API process made for an Idempotency-Key, unless
-- the request's own script already replaced it with the first response (then nothing changes).
-- KEYS[1] the key's record (service.keys.idempotency)   ARGV[1] the request's body fingerprint
-- ARGV[2] the response to keep (JSON record), or '' to forget the claim so a retry runs again (the
-- request failed before it could change anything, e.g. 429 or 503)   ARGV[3] how long to keep it (ms)
-- Returns 1 when the claim was settled, 0 when the record was not this request's pending claim.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local record = cjson.decode(raw)
if not record.p or record.f ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
