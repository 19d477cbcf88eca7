-- The cached redirect in one Redis round trip: read the link and, on a hit, queue its click.
-- The ONE copy of this script: app/cache.py loads it for the instances, the nginx role
-- installs it for the Lua edge (ansible/roles/nginx/files/shortener_edge.lua). Callers pass
-- the click positionally and never spell the stream's field names; app/clicks.py reads them
-- back (STREAM_FIELDS there lists the same names: change both or neither).
--
-- KEYS[1] the link's cache key, KEYS[2] the click stream.
-- ARGV: click id, time (UTC, ISO 8601, seconds), referrer, user agent, short code, request id,
-- client address (the click worker hashes it into a visitor id; docs/analytics.md).
-- Returns the cached value: nil (a miss), '-' (negative), '!' (tombstone) or the link
-- "url_id \t user_id \t status \t location"; only the last queues a click.
--
-- Link options ride on the cached id ("id;expires;max_clicks", app/cache.py CachedLink): an
-- expired link, or one whose click counter (KEYS[1] .. '#n') has reached max_clicks, answers
-- '-' and queues nothing. The counter is incremented here, atomically with the decision, so
-- max_clicks N yields exactly N redirects however many clients race.
local v = redis.call('GET', KEYS[1])
if not v or v == '!' or v == '-' then return v end
local id, options, rest = string.match(v, '^(%d+)([^\t]*)(\t.*)$')
-- Not a link entry (written by hand, or a stray counter): a miss, which the instances refill.
if not id then return nil end
if options ~= '' then
  local expires, cap = string.match(options, '^;(%d*);(%d*)$')
  if expires ~= '' and tonumber(redis.call('TIME')[1]) >= tonumber(expires) then return '-' end
  if cap ~= '' then
    local counter = KEYS[1] .. '#n'
    if tonumber(redis.call('GET', counter) or '0') >= tonumber(cap) then return '-' end
    redis.call('INCR', counter)
  end
  v = id .. rest
end
local uid = string.match(rest, '^\t(%d*)\t')
redis.call('XADD', KEYS[2], '*', 'c', ARGV[1], 'u', id, 'o', uid, 't', ARGV[2],
           'r', ARGV[3], 'a', ARGV[4], 's', ARGV[5], 'q', ARGV[6], 'i', ARGV[7] or '')
return v
