-- The initial schema. Timestamps are UTC without a zone, as the API shows them.

CREATE TABLE users (
    id          BIGSERIAL PRIMARY KEY,
    username    TEXT NOT NULL,
    email       TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
-- Emails are unique regardless of case; usernames are checked by the API under an advisory
-- lock instead of a unique index, because the seed data may repeat usernames.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
CREATE INDEX users_username_idx ON users (username);

CREATE TABLE urls (
    id             BIGSERIAL PRIMARY KEY,
    user_id        BIGINT REFERENCES users (id) ON DELETE SET NULL,
    short_code     TEXT NOT NULL UNIQUE,
    original_url   TEXT NOT NULL,
    title          TEXT,
    is_active      BOOLEAN NOT NULL DEFAULT TRUE,
    redirect_type  SMALLINT NOT NULL DEFAULT 302 CHECK (redirect_type IN (301, 302, 307, 308)),
    created_at     TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at     TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    -- Deleted links stay as rows so that their events keep a valid url_id and the code is
    -- never handed out again.
    deleted_at     TIMESTAMP
);
CREATE INDEX urls_user_id_idx ON urls (user_id);

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    url_id      BIGINT REFERENCES urls (id) ON DELETE SET NULL,
    user_id     BIGINT REFERENCES users (id) ON DELETE SET NULL,
    event_type  VARCHAR(50) NOT NULL,
    "timestamp" TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    details     JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Set on clicks only: the id the redirect gave the click, so that the queue's
    -- at-least-once delivery writes each click exactly once.
    click_id    TEXT UNIQUE
);
CREATE INDEX events_url_id_idx ON events (url_id);
CREATE INDEX events_user_id_idx ON events (user_id);
CREATE INDEX events_event_type_idx ON events (event_type);
