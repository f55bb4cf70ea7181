-- The outbox (one deliveries row per event x subscription) is written behind the log
-- instead of in the publish transaction: a publish stores its events only, and the
-- delivery workers turn events into deliveries rows in bounded chunks, in order of id,
-- advancing this cursor in the same transaction as the rows they write. Every event
-- above a domain's cursor is still owed its deliveries (see docs/design-notes.md).
CREATE TABLE outbox_cursors (
    domain TEXT PRIMARY KEY NOT NULL,
    last_id BIGINT NOT NULL
);
-- Events stored before this migration already have their deliveries rows.
INSERT INTO outbox_cursors (domain, last_id) SELECT domain, last_id FROM event_logs;
-- A subscription gets the events stored after it was made (the log's last id then).
ALTER TABLE subscriptions ADD COLUMN after_event_id BIGINT NOT NULL DEFAULT 0;
