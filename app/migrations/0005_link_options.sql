-- Link options (issue 12): after expires_at, or once max_clicks clicks were counted, a link
-- answers 404 like an inactive one and records nothing. The redirect script in Redis decides
-- (app/redirect_hit.lua), so the Nginx edge enforces them as well; docs/analytics.md.
ALTER TABLE urls ADD COLUMN expires_at TIMESTAMP, ADD COLUMN max_clicks BIGINT CHECK (max_clicks > 0);
