DROP TABLE channel_state;
