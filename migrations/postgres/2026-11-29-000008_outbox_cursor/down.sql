ALTER TABLE subscriptions DROP COLUMN after_event_id;
DROP TABLE outbox_cursors;
