ALTER TABLE channels DROP COLUMN event_types;
DROP TABLE events;
DROP TABLE event_logs;
