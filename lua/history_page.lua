-- history_page.lua: the stream entries of one page of a seat's or an order's history, newest first
-- (spec section 13; service/operators.py turns them into a page).
-- KEYS[1] the history stream (service/keys.py history_seat or history_order)
-- ARGV[1] retention (ms, SEATS_HISTORY_SECONDS): older entries are never returned, whether or not
-- trimming (XADD MINID ~, a node at a time) removed them yet   ARGV[2] the id of the stream entry the
-- page starts at, included (the previous page may have shown only some of its seats), or '' for the
-- newest   ARGV[3] at most this many stream entries
-- Entry ids only grow, so a page that starts at the previous page's last entry never repeats one and
-- never skips one, whatever is written in between (new entries sort above the first page).
-- Returns XREVRANGE's reply: {{id, {'h', head, 's', seats, 'r', reason}}, ...}.
local oldest = now_ms() - tonumber(ARGV[1])
local newest = ARGV[2] == '' and '+' or ARGV[2]
return redis.call('XREVRANGE', KEYS[1], newest, math.max(oldest, 0), 'COUNT', tonumber(ARGV[3]))
