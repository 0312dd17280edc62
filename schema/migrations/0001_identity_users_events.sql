-- Identity, users and events: the write-up's separate services, as tables of one database.
-- citext makes the unique email index case-insensitive without lower() everywhere.
CREATE EXTENSION IF NOT EXISTS citext;

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         citext NOT NULL UNIQUE,
    password_hash text NOT NULL,
    name          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE profiles (
    user_id      bigint PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    display_name text,
    bio          text,
    avatar_url   text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE prefs (
    user_id      bigint PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    locale       text NOT NULL DEFAULT 'en',
    timezone     text NOT NULL DEFAULT 'UTC',
    theme        text NOT NULL DEFAULT 'system',
    email_opt_in boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a token is stored: a leaked table does not leak sessions.
CREATE TABLE sessions (
    token_hash bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id    bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX sessions_user_id ON sessions(user_id);

CREATE TABLE events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The events page reads a user's newest events by keyset (created_at, id) < cursor: this
-- index serves it in order, with no sort and no scan of other users' rows.
CREATE INDEX events_user_created ON events(user_id, created_at DESC, id DESC);
