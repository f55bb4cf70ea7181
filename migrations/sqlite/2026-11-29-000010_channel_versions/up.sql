-- The scripts of every saved version of a channel (issue #13, versions): each save
-- (create, update, restore) adds a row in the same transaction as the channel write;
-- the oldest are trimmed past `channel_versions_kept`; a channel's rows go with it.
CREATE TABLE channel_versions (
    channel_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    domain TEXT NOT NULL,
    webhook_scenario TEXT NOT NULL DEFAULT '',
    websocket_scenario TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    saved_at BIGINT NOT NULL,
    PRIMARY KEY (channel_id, version)
);
-- The channels saved before this table existed start with their current version.
INSERT INTO channel_versions
    (channel_id, version, domain, webhook_scenario, websocket_scenario, note, saved_at)
SELECT id, version, domain, webhook_scenario, websocket_scenario, '', updated_at
FROM channels;
