-- _lib.lua: helpers prepended to every script by service/scripts.py (Redis has no `require`).
--
-- Conventions shared by the order scripts (create_order, hold_seats, cancel_order,
-- begin_payment, mark_trying, record_attempt, expire_order, settle_payment, admin_release, admin_extend):
--   KEYS[1] flight hash   KEYS[2] change log stream   KEYS[3] deadline zset   KEYS[4] order hash
--   KEYS[5] the subject's hash (token bucket + its orders; keys.subject)   KEYS[6] the
--   Idempotency-Key record (keys.idempotency); both are placeholders the script never touches
--   when the controls / the idempotency spec below are ''
--   KEYS[FIRST_SEAT..] seat keys (the order's current seats first, then any new ones)
--   ARGV[1] flight pub/sub channel   ARGV[2] change-log length   ARGV[3] flight id
--   ARGV[4] order id   ARGV[5] sha256 of the order token, or '*' for trusted callers (the worker)
--   ARGV[6] the order's seats as the caller last saw them (csv; a mismatch answers STALE <actual>)
--   ARGV[7] how long a terminal order stays readable (ms)
--   ARGV[8..] the script's own arguments, then its LAST FOUR (so the scripts' own numbering stays put):
--   ARGV[#ARGV - 3] the webhook outbox: 'outbox|<max age ms>' when webhooks are configured, '' otherwise
--     (see "webhooks" below; any other value, a hand-made call's, writes nothing)
--   ARGV[#ARGV - 2] how long seat history is kept (ms, SEATS_HISTORY_SECONDS; see "history" below)
--   ARGV[#ARGV - 1] controls 'rate|window ms|max held seats|max open orders|subject TTL ms'
--     (rate 0: no limiter; a max of 0: no cap), or '' (the worker: no controls)
--   ARGV[#ARGV] idempotency 'fingerprint|TTL ms|HTTP status|salt', or '' (no Idempotency-Key)
-- Every refusal is raised before the first write (Redis does not roll back a failed script), with one
-- deliberate exception: the rate limiter's bucket is spent before the checks that follow it, so a
-- request refused later (a taken seat, a closed order) still counts (retry storms are what it limits).
-- Other orders of the subject (keys read from KEYS[5]) are touched without being declared: their names
-- carry the flight's hash tag, and Redis Cluster lets a script touch undeclared keys of its own slot.

local FIRST_SEAT = 7
local TERMINAL = {CONFIRMED = true, FAILED = true, EXPIRED = true, CANCELLED = true}
-- Order fields that never leave the server (not in order events; service.orders drops them too).
local PRIVATE_FIELDS = {tokenHash = true, paymentId = true, subject = true, subjectKey = true}

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

-- A seat value is 'H|<order>|<deadline ms>' (held, key expires at the deadline), 'C|<order>' (sold) or
-- BLOCKED (an operator took it off sale; service/flights.py BLOCKED_VALUE is the same string).
local BLOCKED = 'B|-'
local function seat_owner(value)
  if not value then return nil, nil end
  local kind, owner = string.match(value, '^(%a)|([^|]+)')
  return kind, owner
end

-- A seat value's kind in the seat map's words (nil, an absent key: 'available').
local STATUS_OF = {H = 'held', C = 'confirmed', B = 'blocked'}

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
  redis.call('SPUBLISH', ARGV[1], payload)
  return version
end

-- ---- history (spec section 13) ------------------------------------------------------------------
-- Every seat change a script announces is recorded by that script, in streams of the flight's slot:
-- one entry per changed seat in that seat's stream, and one entry per script in its order's stream
-- (service/keys.py history_seat, history_order). Their names are derived from KEYS[1]
-- ('seats:{F}:flight' -> 'seats:{F}:history:seat:1A'), not declared: they carry the flight's hash tag,
-- so they live in the script's own slot, which Redis Cluster allows (as for the subject's other orders
-- below). An entry has three fields (packed: one XADD argument each, a third of the cost of a field per
-- value, measured): h '<at ms (TIME)>|<flight version the change made>|<cause>|<order id or ''>',
-- s '<seat>:<status before>:<status after>:<hold deadline after, ms, or ''>' (statuses in the map's
-- words; several, comma-separated, in an order's entry; '' for an order entry that changed no seat),
-- r the operator's reason ('' otherwise; free text, hence a field of its own). Causes: hold, swap,
-- payment, confirm, expire, cancel, admin. XADD's MINID ~ trims entries older than the retention as
-- it writes, a whole node at a time (nearly free); PEXPIRE drops a stream nobody wrote to for as long;
-- readers (history_page.lua, service/operators.py) skip what trimming left. Scripts note each seat's
-- status before they change it (note_before), as they read it anyway.
local HISTORY_MS = tonumber(ARGV[#ARGV - 2])  -- scripts outside the order convention set it themselves
local BEFORE = {}  -- seat id -> its status before this script changed it

local function note_before(id, kind)
  if BEFORE[id] == nil then BEFORE[id] = STATUS_OF[kind] or 'available' end
end

local function history_key(kind, id)
  return string.sub(KEYS[1], 1, -7) .. 'history:' .. kind .. ':' .. id  -- 'seats:{F}:flight' -> 'seats:{F}:'
end

local function append_history(stream, now, head, seats, reason)
  redis.call('XADD', stream, 'MINID', '~', now - HISTORY_MS, '*', 'h', head, 's', seats, 'r', reason)
  redis.call('PEXPIRE', stream, HISTORY_MS)
end

-- The changes (seat -> {status, expiresAt}) of one script, in seat id order: an entry per seat in its
-- stream and, with an order, one entry with them all in the order's. A call without the history argument
-- (a hand-made call) records nothing rather than fail half way.
local function record_history(changes, version, now, cause, reason, order_id)
  if not HISTORY_MS then return end
  local head = now .. '|' .. version .. '|' .. cause .. '|' .. order_id
  local ids = {}
  for id in pairs(changes) do ids[#ids + 1] = id end
  table.sort(ids)
  local seats = {}
  for i, id in ipairs(ids) do
    local change = changes[id]
    seats[i] = id .. ':' .. (BEFORE[id] or 'available') .. ':' .. change.status .. ':' .. (change.expiresAt or '')
    append_history(history_key('seat', id), now, head, seats[i], reason)
  end
  if order_id ~= '' then
    append_history(history_key('order', order_id), now, head, table.concat(seats, ','), reason)
  end
end

-- An order's entry that changed no seat (an operator's release of an order that held none).
local function record_order_entry(cause, reason, now)
  if not HISTORY_MS then return end
  local version = redis.call('HGET', KEYS[1], 'version') or 0
  append_history(history_key('order', ARGV[4]), now, now .. '|' .. version .. '|' .. cause .. '|' .. ARGV[4], '',
                 reason)
end

-- Announces a script's seat changes and records them in the history with their `cause` (and an
-- operator's `reason`). Order scripts' changes belong to ARGV[4]; `order_id` overrides it ('' for none).
local function announce_seats(changes, now, cause, reason, order_id)
  if next(changes) == nil then return nil end
  now = now or now_ms()
  local version = announce(KEYS[1], KEYS[2], 'seats', changes, now)
  record_history(changes, version, now, cause, reason or '', order_id or ARGV[4])
  return version
end

-- ---- webhooks (spec section 13) ---------------------------------------------------------------
-- An order that reaches a terminal state (CONFIRMED, FAILED, EXPIRED, CANCELLED) from an open one gets
-- one event in the flight's outbox stream (service/store/keys.py outbox), written by save_order in the
-- script that makes the change: a dead worker delays the webhook, never loses it. Only when the caller
-- passes 'outbox|<max age ms>' (SEATS_WEBHOOK_URL set): otherwise not one extra command runs. The name
-- is derived from KEYS[1], as the history's (same slot). The stream is made with its consumer group
-- (service/store/outbox.py reads it through that group, acks and deletes each entry once its delivery
-- job is queued); XADD's MINID ~ drops entries older than the max age (a webhook past it is abandoned
-- anyway). Fields: id (the webhook-id, stable across retries: 'msg_<order>_<state>_<ms>'), type
-- ('order.confirmed' ...), at (ms, TIME), o (the order's public fields as a JSON object).
local OUTBOX_GROUP = 'relay'
local EVENT_OF = {CONFIRMED = 'order.confirmed', FAILED = 'order.failed', EXPIRED = 'order.expired',
                  CANCELLED = 'order.cancelled'}

local function outbox_max_age()
  local spec = ARGV[#ARGV - 3]
  if type(spec) ~= 'string' then return nil end
  return tonumber(string.match(spec, '^outbox|(%d+)$'))
end

local function write_outbox(state, public, now, max_age)
  local stream = string.sub(KEYS[1], 1, -7) .. 'outbox'  -- 'seats:{F}:flight' -> 'seats:{F}:outbox'
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, OUTBOX_GROUP, '0', 'MKSTREAM')
  end
  local object = {}
  for i = 1, #public, 2 do object[public[i]] = public[i + 1] end
  redis.call('XADD', stream, 'MINID', '~', now - max_age, '*',
             'id', 'msg_' .. ARGV[4] .. '_' .. string.lower(state) .. '_' .. now, 'type', EVENT_OF[state],
             'at', now, 'o', cjson.encode(object))
end

-- Writes order fields, bumps the order's version and publishes an order event (and, when it ends the
-- order and webhooks are on, its outbox entry).
-- Returns the order's new version and the whole order hash as a flat list (for order_reply).
local function save_order(fields, ttl_ms, now)
  now = now or now_ms()
  local max_age = fields[1] == 'state' and EVENT_OF[fields[2]] and outbox_max_age()
  if max_age and TERMINAL[redis.call('HGET', KEYS[4], 'state') or ''] then max_age = nil end
  local version = redis.call('HINCRBY', KEYS[4], 'version', 1)
  redis.call('HSET', KEYS[4], 'updatedAt', now, unpack(fields))
  if ttl_ms then redis.call('PEXPIRE', KEYS[4], ttl_ms) end
  -- The event carries the order's public fields, so a stream shows every version even when two
  -- changes land before it could read the order.
  local flat = redis.call('HGETALL', KEYS[4])
  local public = {}
  for i = 1, #flat, 2 do
    if not PRIVATE_FIELDS[flat[i]] then
      public[#public + 1] = flat[i]
      public[#public + 1] = flat[i + 1]
    end
  end
  redis.call('SPUBLISH', ARGV[1], cjson.encode({t = 'order', f = ARGV[3], o = ARGV[4], v = version, d = public}))
  if max_age then write_outbox(fields[2], public, now, max_age) end
  return version, flat
end

-- {status, the order as a flat list[, the flight's version]}. Scripts that changed seats pass the
-- version their announcement made, so the API process that made the change never answers a
-- seat-map poll from an older version (service/flights.py note_version). `flat` (the order hash
-- as save_order left it) spares a second HGETALL.
-- A fourth element carries the rate limiter's state after this request ('remaining|reset ms|count|
-- window ms') for the RateLimit headers, false when no limiter ran (a nil would end the reply there).
local RATE = false
local function order_reply(status, flight_version, flat)
  return {status, flat or redis.call('HGETALL', KEYS[4]), flight_version or false, RATE}
end

-- Releases one seat of this order. A key already gone lapsed by its TTL at the deadline: that
-- release still needs announcing (its history says held -> available). A seat another order holds
-- now, or an operator blocked, is left alone.
local function release_seat(key, changes)
  local kind, owner = seat_owner(redis.call('GET', key))
  local id = seat_id_of(key)
  if kind == 'H' and owner == ARGV[4] then
    redis.call('DEL', key)
    note_before(id, kind)
    changes[id] = {status = 'available'}
  elseif kind == nil then
    note_before(id, 'H')
    changes[id] = {status = 'available'}
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

-- Every seat of KEYS[FIRST_SEAT..] must still be this order's: held by it, or gone (its key lost, by data
-- loss: it is taken again). A seat another order holds or bought, or an operator blocked, is never
-- overwritten: the refusal CONFLICT names each. Notes each seat's status before (history).
local function check_seats_still_ours()
  local lost = {}
  for i = FIRST_SEAT, #KEYS do
    local kind, owner = seat_owner(redis.call('GET', KEYS[i]))
    note_before(seat_id_of(KEYS[i]), kind)
    if kind and (kind ~= 'H' or owner ~= ARGV[4]) then
      lost[#lost + 1] = seat_id_of(KEYS[i]) .. ':' .. STATUS_OF[kind]
    end
  end
  if #lost > 0 then return fail('CONFLICT', table.concat(lost, ',')) end
  return nil
end

-- Holds every seat of KEYS[FIRST_SEAT..] for this order until `deadline` (ms; the keys expire then) and
-- moves the order in the deadline index; returns the seat changes to announce.
local function hold_until(deadline)
  local changes = {}
  for i = FIRST_SEAT, #KEYS do
    redis.call('SET', KEYS[i], 'H|' .. ARGV[4] .. '|' .. deadline, 'PXAT', deadline)
    changes[seat_id_of(KEYS[i])] = {status = 'held', expiresAt = deadline, o = ARGV[4]}
  end
  redis.call('ZADD', KEYS[3], deadline, ARGV[4])
  return changes
end

-- Whether the order's time ran out: a hold past its deadline, or a PENDING order that never held a
-- seat past its pendingUntil (SEATS_PENDING_ORDER_SECONDS after creation).
local function hold_expired(order, now)
  local deadline = tonumber(order.holdExpiresAt)
  if order.state == 'PENDING' then deadline = tonumber(order.pendingUntil) end
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
  announce_seats(changes, nil, 'expire')
  return changes
end

local EXPIRED_MESSAGE = 'The hold expired before a successful payment; the seats were released.'
local IDLE_MESSAGE = 'The order held no seats before its time ran out; it expired.'

local function expired_message(order)
  if order.state == 'PENDING' then return IDLE_MESSAGE end
  return EXPIRED_MESSAGE
end

-- ---- hostile crowds: the subject's limits and the Idempotency-Key record (spec section 10) ----------

local function split_bar(s)
  local out, from = {}, 1
  while true do
    local at = string.find(s, '|', from, true)
    if not at then
      out[#out + 1] = string.sub(s, from)
      return out
    end
    out[#out + 1] = string.sub(s, from, at - 1)
    from = at + 1
  end
end

-- The controls of this call (ARGV[#ARGV - 1]), or nil for the worker's calls.
local function controls()
  local spec = ARGV[#ARGV - 1]
  if spec == nil or spec == '' then return nil end
  local f = split_bar(spec)
  return {rate = tonumber(f[1]), window = tonumber(f[2]), held = tonumber(f[3]), orders = tonumber(f[4]),
          ttl = tonumber(f[5])}
end

-- An order created before subjects existed has none: it carries no limits.
local function check_subject(order)
  if order.subjectKey and order.subjectKey ~= '' and order.subjectKey ~= KEYS[5] then
    return fail('SUBJECT', order.subjectKey)
  end
  return nil
end

-- The token bucket of KEYS[5] (spec: SEATS_RATE_LIMIT_WRITES, burst = count): refills continuously at
-- rate/window; takes one token or refuses with RATE_LIMITED '<retry ms> <rate> <window ms>'. Sets RATE.
local function take_token(c, now)
  if c == nil or c.rate == 0 then return nil end
  local state = redis.call('HMGET', KEYS[5], 'tokens', 'ts')
  local tokens, since = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or since == nil then
    tokens = c.rate
  else
    tokens = math.min(c.rate, tokens + math.max(0, now - since) * c.rate / c.window)
  end
  if tokens < 1 then
    return fail('RATE_LIMITED', math.ceil((1 - tokens) * c.window / c.rate) .. ' ' .. c.rate .. ' ' .. c.window)
  end
  tokens = tokens - 1
  redis.call('HSET', KEYS[5], 'tokens', tokens, 'ts', now)
  redis.call('PEXPIRE', KEYS[5], c.ttl)
  RATE = math.floor(tokens) .. '|' .. math.ceil((c.rate - tokens) * c.window / c.rate) .. '|' .. c.rate .. '|'
         .. c.window
  return nil
end

-- What the subject of KEYS[5] has on this flight besides the order of KEYS[4]: open (non-terminal,
-- unlapsed) orders, seats they hold (a FAILED order's seats count until they are released), and the
-- members that ended (to forget once the script's checks have passed).
local function subject_usage(now)
  local flat = redis.call('HGETALL', KEYS[5])
  local open, held, ended = 0, 0, {}
  for i = 1, #flat, 2 do
    local key = flat[i]
    if key ~= 'tokens' and key ~= 'ts' and key ~= KEYS[4] then
      local f = redis.call('HMGET', key, 'state', 'seats', 'holdExpiresAt', 'pendingUntil')
      local other = {state = f[1], seats = f[2], holdExpiresAt = f[3], pendingUntil = f[4]}
      local deadline = tonumber(redis.call('ZSCORE', KEYS[3], flat[i + 1]))
      local holding = other.state ~= nil and other.state ~= 'PENDING' and other.state ~= 'CONFIRMED'
                      and deadline ~= nil and deadline > now
      if holding then held = held + #split_csv(other.seats) end
      if other.state ~= nil and not TERMINAL[other.state] and not hold_expired(other, now) then
        open = open + 1
      elseif not holding then
        ended[#ended + 1] = key
      end
    end
  end
  return open, held, ended
end

local function forget(ended)
  if #ended > 0 then redis.call('HDEL', KEYS[5], unpack(ended)) end
end

local function subject_limit(what, limit, current)
  return fail('SUBJECT_LIMIT', what .. ' ' .. limit .. ' ' .. current)
end

-- The Idempotency-Key spec of this call (ARGV[#ARGV]), or nil.
local function idempotency()
  local spec = ARGV[#ARGV]
  if spec == nil or spec == '' then return nil end
  local f = split_bar(spec)
  return {fingerprint = f[1], ttl = tonumber(f[2]), status = tonumber(f[3]), salt = f[4]}
end

-- A first response already recorded under this key: {'REPLAY', record} (nothing is done again), or
-- IDEMPOTENCY_REUSED when it was recorded for another body; nil when the request must run.
local function replayed(spec)
  if spec == nil then return nil end
  local raw = redis.call('GET', KEYS[6])
  if not raw then return nil end
  local record = cjson.decode(raw)
  if record.p then return nil end  -- the pending claim the API process made for this very request
  if record.f ~= spec.fingerprint then return fail('IDEMPOTENCY_REUSED') end
  return {'REPLAY', raw}
end

-- Records this request's response under its key, in the same script as its change (no crash window).
local function remember(spec, flat)
  if spec == nil then return end
  local record = {f = spec.fingerprint, s = spec.status, o = flat}
  if spec.salt ~= '' then record.k = spec.salt end
  redis.call('SET', KEYS[6], cjson.encode(record), 'PX', spec.ttl)
end


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

-- ---- the two halves every owner's write (hold_seats, begin_payment, cancel_order) begins with ----------

-- The order of KEYS[4], found by its token (ARGV[5]), still its caller's subject's, with the seats the caller
-- last saw. Returns the order, or nil and the error reply.
local function load_owned_order()
  local order = load_order(KEYS[4], ARGV[5])
  if not order then return nil, fail('NOT_FOUND', ARGV[4]) end
  local refused = check_subject(order) or check_expected_seats(order)
  if refused then return nil, refused end
  return order
end

-- After the script's own checks of the request: the Idempotency-Key's replay, the subject's write token,
-- then the order's state as of now (a terminal order is CLOSED; a lapsed one is expired first, whatever the
-- request asks, spec section 11; a paying one refuses). Returns nil, spec, now, controls; or the reply to
-- return at once.
local function admit_owner_write(order)
  local spec = idempotency()
  local replay = replayed(spec)
  if replay then return replay end
  local now = now_ms()
  local c = controls()
  local limited = take_token(c, now)
  if limited then return limited end
  if TERMINAL[order.state] then return fail('CLOSED', order.state) end
  if hold_expired(order, now) then
    expire_now(expired_message(order))
    return order_reply('EXPIRED')
  end
  if order.state == 'PAYING' then return fail('PAYING') end
  return nil, spec, now, c
end
