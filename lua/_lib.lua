-- _lib.lua: helpers prepended to every script by service/scripts.py (Redis has no `require`).
--
-- Conventions shared by the order scripts (create_order, hold_seats, cancel_order,
-- begin_payment, mark_trying, record_attempt, expire_order):
--   KEYS[1] flight hash   KEYS[2] change log stream   KEYS[3] deadline zset   KEYS[4] order hash
--   KEYS[FIRST_SEAT..] seat keys (the order's current seats first, then any new ones)
--   ARGV[1] flight pub/sub channel   ARGV[2] change-log length   ARGV[3] flight id
--   ARGV[4] order id   ARGV[5] sha256 of the order token, or '*' for trusted callers (the worker)
--   ARGV[6] the order's seats as the caller last saw them (csv; a mismatch answers STALE <actual>)
--   ARGV[7] how long a terminal order stays readable (ms)
-- Every refusal is raised before the first write: Redis does not roll back a failed script.

local FIRST_SEAT = 5
local TERMINAL = {CONFIRMED = true, FAILED = true, EXPIRED = true, CANCELLED = true}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fail(code, detail)
  return redis.error_reply(code .. ' ' .. (detail or ''))
end

local function split_csv(s)
  local out = {}
  if s == nil or s == '' then return out end
  for item in string.gmatch(s, '[^,]+') do out[#out + 1] = item end
  return out
end

local function seat_id_of(key)
  return string.match(key, ':([^:]+)$')
end

-- A seat value is 'H|<order>|<deadline ms>' (held, key expires at the deadline) or 'C|<order>' (sold).
local function seat_owner(value)
  if not value then return nil, nil end
  local kind, owner = string.match(value, '^(%a)|([^|]+)')
  return kind, owner
end

local function read_hash(key)
  local flat = redis.call('HGETALL', key)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map
end

-- Loads an order and checks its token; nil means "not found" (a wrong token looks the same).
local function load_order(order_key, token_hash)
  local order = read_hash(order_key)
  if order.orderId == nil then return nil end
  if token_hash ~= '*' and order.tokenHash ~= token_hash then return nil end
  return order
end

-- Appends one change to the flight's capped log and publishes it: the change, its version and its
-- announcement are one atomic step.
-- `now` (ms, from TIME) may be passed in by a script that already read it.
local function announce(flight_key, log_key, kind, changes, now)
  local version = redis.call('HINCRBY', flight_key, 'version', 1)
  now = now or now_ms()
  redis.call('HSET', flight_key, 'lastUpdated', now)
  local payload = cjson.encode({t = kind, f = ARGV[3], v = version, u = now, c = changes})
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], version .. '-1', 'd', payload)
  redis.call('PUBLISH', ARGV[1], payload)
  return version
end

local function announce_seats(changes, now)
  if next(changes) == nil then return nil end
  return announce(KEYS[1], KEYS[2], 'seats', changes, now)
end

-- Writes order fields, bumps the order's version and publishes an order event.
-- Returns the order's new version and the whole order hash as a flat list (for order_reply).
local function save_order(fields, ttl_ms, now)
  now = now or now_ms()
  local version = redis.call('HINCRBY', KEYS[4], 'version', 1)
  redis.call('HSET', KEYS[4], 'updatedAt', now, unpack(fields))
  if ttl_ms then redis.call('PEXPIRE', KEYS[4], ttl_ms) end
  -- The event carries the order's public fields, so a stream shows every version even when two
  -- changes land before it could read the order.
  local flat = redis.call('HGETALL', KEYS[4])
  local public = {}
  for i = 1, #flat, 2 do
    if flat[i] ~= 'tokenHash' and flat[i] ~= 'paymentId' then
      public[#public + 1] = flat[i]
      public[#public + 1] = flat[i + 1]
    end
  end
  redis.call('PUBLISH', ARGV[1], cjson.encode({t = 'order', f = ARGV[3], o = ARGV[4], v = version, d = public}))
  return version, flat
end

-- {status, the order as a flat list[, the flight's version]}. Scripts that changed seats pass the
-- version their announcement made, so the API process that made the change never answers a
-- seat-map poll from an older version (service/flights.py note_version). `flat` (the order hash
-- as save_order left it) spares a second HGETALL.
local function order_reply(status, flight_version, flat)
  return {status, flat or redis.call('HGETALL', KEYS[4]), flight_version}
end

-- Releases one seat of this order. A key already gone lapsed by its TTL at the deadline: that
-- release still needs announcing. A seat another order holds now is left alone.
local function release_seat(key, changes)
  local kind, owner = seat_owner(redis.call('GET', key))
  if kind == 'H' and owner == ARGV[4] then
    redis.call('DEL', key)
    changes[seat_id_of(key)] = {status = 'available'}
  elseif kind == nil then
    changes[seat_id_of(key)] = {status = 'available'}
  end
end

-- Releases every seat key in KEYS[first..] that this order still holds; records the changes.
local function release_seats(first, changes)
  for i = first, #KEYS do release_seat(KEYS[i], changes) end
  return changes
end

local function check_expected_seats(order)
  local current = order.seats or ''
  if current ~= ARGV[6] then return fail('STALE', current) end
  return nil
end

local function hold_expired(order, now)
  local deadline = tonumber(order.holdExpiresAt)
  return deadline ~= nil and deadline <= now
end

-- A PAYING order that ends without a confirmation may have been charged (an attempt whose answer
-- never came, a success that came too late): it owes a settlement. Its paymentStatus becomes
-- 'refunding' and it stays in the deadline index, due now, so the sweeper settles it
-- (service/payments.py settle_payment) if the payment job does not. Appends to `fields`.
local function owe_settlement(fields, now)
  if redis.call('HGET', KEYS[4], 'state') ~= 'PAYING' then return fields end
  redis.call('ZADD', KEYS[3], now or now_ms(), ARGV[4])
  fields[#fields + 1] = 'paymentStatus'
  fields[#fields + 1] = 'refunding'
  return fields
end

-- Ends an order whose hold deadline passed: its seats go back on sale, the order is EXPIRED.
local function expire_now(message)
  local changes = release_seats(FIRST_SEAT, {})
  redis.call('ZREM', KEYS[3], ARGV[4])
  save_order(owe_settlement({'state', 'EXPIRED', 'lastError', message}), tonumber(ARGV[7]))
  announce_seats(changes)
  return changes
end

local EXPIRED_MESSAGE = 'The hold expired before a successful payment; the seats were released.'

-- KEYS[FIRST_SEAT..] must name exactly the order's current seats and the wanted ones, each once, all
-- of this flight: a caller that got them out of step with the csv would otherwise sell seats the
-- order does not list, or leave dropped seats held. A caller's bug, so its code maps to a 500.
local function check_seat_keys(current_csv, wanted_ids)
  local expected = {}
  for _, id in ipairs(split_csv(current_csv)) do expected[id] = true end
  for _, id in ipairs(wanted_ids) do
    if expected[id] == 'wanted' then return fail('KEYS_MISMATCH', 'duplicate ' .. id) end
    expected[id] = 'wanted'
  end
  local prefix = string.sub(KEYS[1], 1, -7) .. 'seat:'  -- 'seats:{F}:flight' -> 'seats:{F}:seat:'
  for i = FIRST_SEAT, #KEYS do
    local id = seat_id_of(KEYS[i])
    if not expected[id] or KEYS[i] ~= prefix .. id then return fail('KEYS_MISMATCH', KEYS[i]) end
    expected[id] = nil
  end
  local missing = next(expected)
  if missing then return fail('KEYS_MISMATCH', 'no key for ' .. missing) end
  return nil
end
