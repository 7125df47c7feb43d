-- The RD Gateway: a per-instance *gateway access* switch (on by default) and the short-lived
-- tokens (PAA cookies) that open a tunnel to one instance for one user. A token is kept as its
-- SHA-256 (hex), reusable until it expires (one client run opens several tunnels with it), and
-- revoked by stamping revoked_at. Tokens have no foreign keys: they outlive their user and
-- instance, so that a refused tunnel says why; the janitor forgets them long after expiry.
-- Times are Unix milliseconds.

ALTER TABLE instances ADD COLUMN rdp_gateway BOOLEAN NOT NULL DEFAULT TRUE;

CREATE TABLE gateway_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    user_id     TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX gateway_tokens_by_instance ON gateway_tokens(instance_id, created_at);
CREATE INDEX gateway_tokens_by_expiry ON gateway_tokens(expires_at);
