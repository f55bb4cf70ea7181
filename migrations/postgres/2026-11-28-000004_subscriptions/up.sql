-- Webhook subscriptions of eventing channels, and their durable outbox: one delivery
-- row per (event, subscription), written in the event's transaction.
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY NOT NULL,
    domain TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    secret TEXT NOT NULL,
    previous_secret TEXT NOT NULL DEFAULT '',
    previous_secret_until BIGINT NOT NULL DEFAULT 0,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason TEXT NOT NULL DEFAULT '',
    failing_since BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX subscriptions_channel ON subscriptions (domain, channel_id);
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    domain TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL DEFAULT 0,
    last_status INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    delivered_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, event_id);
CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at BIGINT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms BIGINT NOT NULL,
    response TEXT NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
