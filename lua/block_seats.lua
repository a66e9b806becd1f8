-- block_seats.lua: an operator takes seats off sale, or puts them back (spec section 13).
-- KEYS[1] flight hash   KEYS[2] change log   KEYS[3..] the seats' keys
-- ARGV[1] flight pub/sub channel   ARGV[2] change-log length   ARGV[3] flight id   ARGV[4] block | unblock
-- ARGV[5] the layout revision the seat ids were validated against   ARGV[6] the operator's reason
-- ARGV[7] history retention (ms)
-- block: every available seat becomes BLOCKED (no TTL: it stays off sale until unblocked); a seat already
-- blocked stays as it is; a held or sold seat refuses the whole request. unblock: every blocked seat
-- becomes available; other seats stay as they are. The changes are announced as one flight version and
-- recorded in the history with cause 'admin' and the reason (no order).
-- Returns {the flight's version after (unchanged when no seat changed), the changed seat ids}.
-- Errors: LAYOUT, SEAT_TAKEN <seat>:<held|confirmed>:<order>,...
if redis.call('HGET', KEYS[1], 'layoutRev') ~= ARGV[5] then return fail('LAYOUT') end
HISTORY_MS = tonumber(ARGV[7])
local block = ARGV[4] == 'block'
local kinds = {}
local taken = {}
for i = 3, #KEYS do
  local kind, owner = seat_owner(redis.call('GET', KEYS[i]))
  local id = seat_id_of(KEYS[i])
  kinds[i] = kind or ''
  note_before(id, kind)
  if block and (kind == 'H' or kind == 'C') then taken[#taken + 1] = id .. ':' .. STATUS_OF[kind] .. ':' .. owner end
end
if #taken > 0 then return fail('SEAT_TAKEN', table.concat(taken, ',')) end

local changes, changed = {}, {}
for i = 3, #KEYS do
  local id = seat_id_of(KEYS[i])
  if block and kinds[i] == '' then
    redis.call('SET', KEYS[i], BLOCKED)
    changes[id] = {status = 'blocked'}
  elseif not block and kinds[i] == 'B' then
    redis.call('DEL', KEYS[i])
    changes[id] = {status = 'available'}
  end
  if changes[id] then changed[#changed + 1] = id end
end
local version = announce_seats(changes, nil, 'admin', ARGV[6], '')
return {version or tonumber(redis.call('HGET', KEYS[1], 'version')), changed}
