DROP TABLE ws_pushes;
DROP TABLE ws_directory;
