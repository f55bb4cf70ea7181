-- Channel state (issue #14): small values a channel's scripts keep between runs
-- (state_get/state_set/state_del/seen_before), shared by every node of the domain.
-- Values are JSON text. expires_at is milliseconds since the epoch on the database's
-- clock, 0 for never; expired rows are removed on read and by each node's sweep.
-- A channel's state goes with it (the foreign key), also when a run still writes
-- while the channel is deleted.
CREATE TABLE channel_state (
    channel_id TEXT NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    state_key TEXT NOT NULL,
    value TEXT NOT NULL,
    expires_at BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (channel_id, state_key)
);
-- The sweep reads the expiring rows, soonest first.
CREATE INDEX channel_state_expiry ON channel_state (expires_at) WHERE expires_at > 0;
