-- Where each open websocket session of a cluster is (PostgreSQL clusters; unused on
-- SQLite), so that a push or close made on any node reaches it, and `ws_send` can say
-- truthfully whether the session exists anywhere.
CREATE TABLE ws_directory (
    code TEXT PRIMARY KEY NOT NULL,
    domain TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    peer_ip TEXT NOT NULL DEFAULT '',
    connected_at BIGINT NOT NULL
);
CREATE INDEX ws_directory_channel ON ws_directory (domain, channel_id);
CREATE INDEX ws_directory_node ON ws_directory (domain, node_id);
-- Pushes too large for a notification's payload: the note carries the id.
CREATE TABLE ws_pushes (
    id TEXT PRIMARY KEY NOT NULL,
    domain TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
