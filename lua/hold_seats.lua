-- hold_seats.lua: atomically swaps an order's selection for a new set of seats.
-- KEYS/ARGV[1..7]: the order-script convention of _lib.lua; KEYS[FIRST_SEAT..] are the current seats'
--   keys followed by the keys of the new seats that are not current.
-- ARGV[8] hold duration (ms)   ARGV[9] max hold from the first hold (ms)
-- ARGV[10] layout revision the seat ids were validated against   ARGV[11] order TTL (ms)
-- ARGV[12] the new selection (csv of seat ids, same order as their keys)
-- All-or-nothing: either every new seat is held by this order until one new deadline (kept seats
-- included) and dropped seats are released, or nothing changes.
-- Returns {'OK', order} or {'EXPIRED', order} when the order's hold had already run out.
-- Errors: NOT_FOUND, CLOSED <state>, PAYING, STALE <seats>, LAYOUT, CONFLICT <seat>:<held|confirmed>,...,
--         KEYS_MISMATCH <key> (KEYS[FIRST_SEAT..] and the csv disagree: a caller's bug)
-- A lapsed order is expired first, whatever else the request asks (PAYING included).
local order = load_order(KEYS[4], ARGV[5])
if not order then return fail('NOT_FOUND', ARGV[4]) end
if TERMINAL[order.state] then return fail('CLOSED', order.state) end
local stale = check_expected_seats(order)
if stale then return stale end
if redis.call('HGET', KEYS[1], 'layoutRev') ~= ARGV[10] then return fail('LAYOUT') end
local wanted_ids = split_csv(ARGV[12])
local bad_keys = check_seat_keys(order.seats, wanted_ids)
if bad_keys then return bad_keys end

local now = now_ms()
if hold_expired(order, now) then
  expire_now(EXPIRED_MESSAGE)
  return order_reply('EXPIRED')
end
if order.state == 'PAYING' then return fail('PAYING') end

-- The cap needs no refusal of its own: an order whose hold is still running is before its cap.
local first_hold = tonumber(order.firstHoldAt) or now
local deadline = math.min(now + tonumber(ARGV[8]), first_hold + tonumber(ARGV[9]))

local order_id = ARGV[4]
local wanted = {}
for _, id in ipairs(wanted_ids) do wanted[id] = true end

local conflicts = {}
for i = FIRST_SEAT, #KEYS do
  local id = seat_id_of(KEYS[i])
  if wanted[id] then
    local kind, owner = seat_owner(redis.call('GET', KEYS[i]))
    if kind and owner ~= order_id then
      conflicts[#conflicts + 1] = id .. ':' .. (kind == 'C' and 'confirmed' or 'held')
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
return order_reply('OK', announce_seats(changes, now), flat)
