-- The node registry: every node of a domain records itself and its heartbeat (in
-- milliseconds of the database's clock, so that nodes with skewed clocks agree on
-- who is alive).
CREATE TABLE nodes (
    domain TEXT NOT NULL,
    node_id TEXT NOT NULL,
    roles TEXT NOT NULL DEFAULT '',
    listen TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    PRIMARY KEY (domain, node_id)
);
