-- Integration channels of every domain served from this database.
CREATE TABLE channels (
    id TEXT PRIMARY KEY NOT NULL,
    domain TEXT NOT NULL,
    code TEXT NOT NULL,
    kind TEXT NOT NULL,
    wait_for_completion BOOLEAN NOT NULL DEFAULT 0,
    ws_role TEXT NOT NULL DEFAULT '',
    token TEXT NOT NULL,
    outgoing_url TEXT NOT NULL DEFAULT '',
    outgoing_token_primary TEXT NOT NULL DEFAULT '',
    outgoing_token_secondary TEXT NOT NULL DEFAULT '',
    webhook_scenario TEXT NOT NULL DEFAULT '',
    websocket_scenario TEXT NOT NULL DEFAULT '',
    comment TEXT NOT NULL DEFAULT '',
    enabled BOOLEAN NOT NULL DEFAULT 1,
    version BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX channels_domain_code ON channels (domain, code);
CREATE UNIQUE INDEX channels_token ON channels (token);
