-- The cached redirect in one Redis round trip: read the link and, on a hit, queue its click.
-- The ONE copy of this script: app/cache.py loads it for the instances, the nginx role
-- installs it for the Lua edge (ansible/roles/nginx/files/shortener_edge.lua). Callers pass
-- the click positionally and never spell the stream's field names; app/clicks.py reads them
-- back (STREAM_FIELDS there lists the same names: change both or neither).
--
-- KEYS[1] the link's cache key, KEYS[2] the click stream.
-- ARGV: click id, time (UTC, ISO 8601, seconds), referrer, user agent, short code, request id.
-- Returns the cached value: nil (a miss), '-' (negative), '!' (tombstone) or the link
-- "url_id \t user_id \t status \t location"; only the last queues a click.
local v = redis.call('GET', KEYS[1])
if not v or v == '!' or v == '-' then return v end
local id, uid = string.match(v, '^(%d+)\t(%d*)\t')
redis.call('XADD', KEYS[2], '*', 'c', ARGV[1], 'u', id, 'o', uid, 't', ARGV[2],
           'r', ARGV[3], 'a', ARGV[4], 's', ARGV[5], 'q', ARGV[6])
return v
