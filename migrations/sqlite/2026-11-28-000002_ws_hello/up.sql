-- Public channels can greet each new websocket with its session code.
ALTER TABLE channels ADD COLUMN ws_hello BOOLEAN NOT NULL DEFAULT 0;
