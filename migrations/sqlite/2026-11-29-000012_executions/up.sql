-- Execution history (issue #13): which runs of a channel are recorded ("off",
-- "errors" or "all"), and the records, written in batches by the node's executions
-- writer, trimmed by count per channel and by age, deleted with their channel.
ALTER TABLE channels ADD COLUMN history TEXT NOT NULL DEFAULT 'errors';
CREATE TABLE executions (
    -- A UUIDv7: ordered by time, the listing's cursor.
    id TEXT NOT NULL PRIMARY KEY,
    domain TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    -- webhook | websocket
    trigger_kind TEXT NOT NULL,
    -- ok | error
    outcome TEXT NOT NULL,
    version BIGINT NOT NULL,
    duration_us BIGINT NOT NULL,
    wait_us BIGINT NOT NULL,
    -- Inputs, reply, logs, calls, error (JSON), secrets masked.
    detail TEXT NOT NULL
);
CREATE INDEX executions_by_channel ON executions (channel_id, id);
CREATE INDEX executions_by_age ON executions (started_at);
