-- The event log of each domain: ids are a per-domain offset, handed out under the row
-- lock of event_logs so that nodes sharing a database never reuse one. The epoch
-- changes only if a domain's log is reset, so clients can tell that offsets restarted.
CREATE TABLE event_logs (
    domain TEXT PRIMARY KEY NOT NULL,
    epoch TEXT NOT NULL,
    last_id BIGINT NOT NULL
);
CREATE TABLE events (
    domain TEXT NOT NULL,
    id BIGINT NOT NULL,
    type TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    data TEXT NOT NULL,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (domain, id)
);
CREATE UNIQUE INDEX events_idempotency ON events (domain, idempotency_key);
CREATE INDEX events_created ON events (domain, created_at);
-- Which event types an eventing channel exposes: a JSON array of patterns; '' = all.
ALTER TABLE channels ADD COLUMN event_types TEXT NOT NULL DEFAULT '';
