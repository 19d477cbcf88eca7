-- One hit on a fixed-window rate-limit counter (app/limits.py): KEYS[1] the counter,
-- ARGV[1] the window in seconds, ARGV[2] the cost. The same as the `limits` library's
-- incr_expire.lua except when the expiry is set: that script sets it only when INCRBY made
-- the counter (its value equals the cost), so a counter that exists without an expiry is
-- never given one, only grows, and refuses its client for good (seen after chaos 06/07:
-- the admin key's counter at 2,077 with PTTL -1, every admin request 429). Here every hit
-- that finds no expiry sets one, whatever left the counter without it: a counter lives at
-- most one window longer than it should.
local current = redis.call('INCRBY', KEYS[1], tonumber(ARGV[2]))
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return current
