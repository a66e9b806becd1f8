-- hold_seats.lua: atomically swaps an order's selection for a new set of seats.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua; KEYS[5] the order's subject, KEYS[6] the
--   Idempotency-Key record, KEYS[FIRST_SEAT..] the current seats' keys followed by the keys of the new
--   seats that are not current.
-- ARGV[8] hold duration (ms)   ARGV[9] max hold from the first hold (ms)
-- ARGV[10] layout revision the seat ids were validated against   ARGV[11] order TTL (ms)
-- ARGV[12] the new selection (csv of seat ids, same order as their keys)   ARGV[13..16] outbox, history retention,
--   controls and idempotency (_lib.lua)
-- All-or-nothing: either every new seat is held by this order until one new deadline (kept seats
-- included) and dropped seats are released, or nothing changes. The seats the order's subject then
-- holds on the flight (FAILED orders' kept seats included) stay within its cap.
-- Returns {'OK', order, flight version, rate}, {'EXPIRED', order} when the order's time had already
-- run out, or {'REPLAY', idempotency record}.
-- Errors: NOT_FOUND, SUBJECT <subject key>, STALE <seats>, LAYOUT, KEYS_MISMATCH <key> (KEYS[FIRST_SEAT..]
--         and the csv disagree: a caller's bug), IDEMPOTENCY_REUSED, RATE_LIMITED <retry ms> <rate>
--         <window ms>, CLOSED <state>, PAYING, SUBJECT_LIMIT seats <limit> <current>,
--         CONFLICT <seat>:<held|confirmed|blocked>,...
-- A lapsed order is expired first, whatever else the request asks (PAYING included).
local order, refused = load_owned_order()
if not order then return refused end
if redis.call('HGET', KEYS[1], 'layoutRev') ~= ARGV[10] then return fail('LAYOUT') end
local wanted_ids = split_csv(ARGV[12])
local bad_keys = check_seat_keys(order.seats, wanted_ids)
if bad_keys then return bad_keys end
local reply, spec, now, c = admit_owner_write(order)
if reply then return reply end

-- The cap needs no refusal of its own: an order whose hold is still running is before its cap, or an
-- operator extended it past the cap (admin_extend.lua), and that running deadline is then the cap.
local first_hold = tonumber(order.firstHoldAt) or now
local cap = math.max(first_hold + tonumber(ARGV[9]), tonumber(order.holdExpiresAt) or 0)
local deadline = math.min(now + tonumber(ARGV[8]), cap)

local order_id = ARGV[4]
local wanted = {}
for _, id in ipairs(wanted_ids) do wanted[id] = true end

local ended = {}
if c and c.held > 0 then
  local _, others, gone = subject_usage(now)
  ended = gone
  if others + #wanted_ids > c.held then
    return subject_limit('seats', c.held, others + #split_csv(order.seats))
  end
end

local conflicts = {}
for i = FIRST_SEAT, #KEYS do
  local id = seat_id_of(KEYS[i])
  if wanted[id] then
    local kind, owner = seat_owner(redis.call('GET', KEYS[i]))
    note_before(id, kind)
    if kind and owner ~= order_id then
      conflicts[#conflicts + 1] = id .. ':' .. STATUS_OF[kind]
    end
  end
end
if #conflicts > 0 then return fail('CONFLICT', table.concat(conflicts, ',')) end

local changes = {}
local held_value = 'H|' .. order_id .. '|' .. deadline
for i = FIRST_SEAT, #KEYS do
  local id = seat_id_of(KEYS[i])
  if wanted[id] then
    redis.call('SET', KEYS[i], held_value, 'PXAT', deadline)
    changes[id] = {status = 'held', expiresAt = deadline, o = order_id}
  else
    release_seat(KEYS[i], changes)
  end
end
redis.call('ZADD', KEYS[3], deadline, order_id)
-- One TIME for the whole script (deadline, updatedAt, lastUpdated) and the order hash read once
-- after the write (it is both the order event and the reply).
local _, flat = save_order({'state', 'SEATS_SELECTED', 'seats', ARGV[12], 'holdExpiresAt', deadline,
                            'firstHoldAt', first_hold}, tonumber(ARGV[11]), now)
forget(ended)
remember(spec, flat)
return order_reply('OK', announce_seats(changes, now, order.state == 'PENDING' and 'hold' or 'swap'), flat)
