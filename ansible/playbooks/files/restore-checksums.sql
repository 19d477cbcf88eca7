-- What a restore must give back: per table, the rows up to the target time, their count and an
-- md5 of all of them in id order (every column, as PostgreSQL prints the row). Run with
--   psql -X -At -v target='YYYY-MM-DD HH:MM:SS.ffffff' -d shortener -f restore-checksums.sql
-- on the source and on the restored copy (restore-drill.yml, molecule test_backup.py); the
-- timestamps are UTC like the columns. A row changed after the target time (a link edited or
-- deleted) differs in a point-in-time restore: the drill compares with a quiet source, or
-- with the target "now".
SELECT 'users', count(*), md5(coalesce(string_agg(t::text, E'\n' ORDER BY t.id), ''))
  FROM users t WHERE t.created_at <= :'target'::timestamp
UNION ALL
SELECT 'urls', count(*), md5(coalesce(string_agg(t::text, E'\n' ORDER BY t.id), ''))
  FROM urls t WHERE t.created_at <= :'target'::timestamp
UNION ALL
SELECT 'events', count(*), md5(coalesce(string_agg(t::text, E'\n' ORDER BY t.id), ''))
  FROM events t WHERE t."timestamp" <= :'target'::timestamp;
