-- The dashboard's users (DESIGN §6, issue 10): a name, a role and an argon2id hash (PHC string).
-- Sessions live in Redis; this table is the only state the dashboard writes to Postgres.

CREATE TABLE dashboard_users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT        NOT NULL UNIQUE CHECK (char_length(name) BETWEEN 1 AND 64),
    role          TEXT        NOT NULL CHECK (role IN ('viewer', 'accountant', 'admin')),
    password_hash TEXT        NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
