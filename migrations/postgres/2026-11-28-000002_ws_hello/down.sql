ALTER TABLE channels DROP COLUMN ws_hello;
