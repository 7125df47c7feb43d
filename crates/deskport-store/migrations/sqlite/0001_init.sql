-- deskport's schema. Ids are UUID text; times are Unix milliseconds.

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE memberships (
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('admin', 'member', 'reader')),
    PRIMARY KEY (project_id, user_id)
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE security_groups (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

-- Rules are immutable: created and deleted, never updated (as in Neutron).
CREATE TABLE security_group_rules (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    group_id         TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
    project_id       TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    direction        TEXT NOT NULL,
    ethertype        TEXT NOT NULL,
    protocol         TEXT,
    port_range_min   INTEGER,
    port_range_max   INTEGER,
    remote_ip_prefix TEXT,
    remote_group_id  TEXT REFERENCES security_groups(id),
    description      TEXT NOT NULL DEFAULT '',
    created_at       INTEGER NOT NULL
);
CREATE INDEX rules_by_group ON security_group_rules(group_id, seq);
CREATE INDEX rules_by_project ON security_group_rules(project_id);

CREATE TABLE instances (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    public_address   TEXT NOT NULL,
    public_rdp_port  INTEGER NOT NULL DEFAULT 3389,
    internal_address TEXT,
    rdp_port         INTEGER NOT NULL DEFAULT 3389,
    rdp_enabled      INTEGER NOT NULL DEFAULT 0,
    rdp_nla_only     INTEGER NOT NULL DEFAULT 1,
    cert_fingerprint TEXT,
    agent_token_hash TEXT NOT NULL UNIQUE,
    agent_seen_at    INTEGER,
    agent_revision   INTEGER,
    created_at       INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE instance_groups (
    instance_id TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    group_id    TEXT NOT NULL REFERENCES security_groups(id),
    seq         INTEGER NOT NULL,
    PRIMARY KEY (instance_id, group_id)
);

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  TEXT,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT,
    summary     TEXT NOT NULL,
    source      TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX audit_by_project ON audit_events(project_id, id);

-- One counter for the agents' feed: every change to what agents enforce increments it.
CREATE TABLE state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO state (key, value) VALUES ('revision', 1);
