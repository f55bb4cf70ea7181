ALTER TABLE channels DROP COLUMN guards;
