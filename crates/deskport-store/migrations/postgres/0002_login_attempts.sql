-- Login attempts per key (a user name, a source address), so that throttling holds across
-- manager replicas; times are Unix milliseconds. The janitor forgets keys idle for long.
CREATE TABLE login_attempts (
    key          TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    first_at     BIGINT NOT NULL,
    locked_until BIGINT,
    lockouts     BIGINT NOT NULL,
    last_at      BIGINT NOT NULL
);
CREATE INDEX login_attempts_by_last ON login_attempts(last_at);

-- The janitor deletes expired sessions.
CREATE INDEX sessions_by_expiry ON sessions(expires_at);
