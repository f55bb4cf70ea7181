DROP TABLE executions;
ALTER TABLE channels DROP COLUMN history;
