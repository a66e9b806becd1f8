-- history_page.lua: one page of a seat's or an order's history, newest first (spec section 13).
-- KEYS[1] the history stream (service/keys.py history_seat or history_order)
-- ARGV[1] retention (ms, SEATS_HISTORY_SECONDS): older entries are never returned, whether or not
-- trimming (XADD MINID ~, a node at a time) removed them yet   ARGV[2] the id of the last entry of the
-- previous page ('' for the first page)   ARGV[3] at most this many entries
-- Entry ids only grow, so a page that starts below the previous page's last id never repeats an entry
-- and never skips one, whatever is written in between (new entries sort above the first page).
-- Returns XREVRANGE's reply: {{id, {field, value, ...}}, ...}.
if ARGV[2] == '0-0' then return {} end  -- nothing lies below the smallest id (and '(0-0' is an error)
local oldest = now_ms() - tonumber(ARGV[1])
local newest = ARGV[2] == '' and '+' or '(' .. ARGV[2]
return redis.call('XREVRANGE', KEYS[1], newest, math.max(oldest, 0), 'COUNT', tonumber(ARGV[3]))
