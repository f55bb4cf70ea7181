DROP TABLE channel_versions;
