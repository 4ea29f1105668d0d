-- Live agents: each registers with its advertised address and zone, then renews its lease.
-- Ids are Kafka node ids and are never reused (AUTOINCREMENT).
CREATE TABLE agents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    zone TEXT,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

-- Object keys an agent reserved before uploading. A commit removes its row, so a row that
-- stays names an object that may have been uploaded and never committed (its agent died
-- between PUT and commit): the compactor deletes such objects after a grace period.
CREATE TABLE uploads (
    id TEXT PRIMARY KEY NOT NULL,
    agent_id INTEGER NOT NULL,
    reserved_at_ms INTEGER NOT NULL
);

CREATE INDEX uploads_by_time ON uploads (reserved_at_ms);
