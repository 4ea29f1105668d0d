-- What the compactor needs to find its work and to delete objects safely.
-- `level`: 0 for an agent's flush, n + 1 for an object merged from objects of level n.
-- `unreferenced_at_ms`: when the garbage collector first saw no index row refer to the
-- object (a row never comes back: objects are immutable and merges write new ones).
-- `deleted_at_ms`: when the object was deleted from the store. The row stays a while as a
-- tombstone, so a commit retried after that cannot commit the same key again.
ALTER TABLE objects ADD COLUMN level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN unreferenced_at_ms INTEGER;
ALTER TABLE objects ADD COLUMN deleted_at_ms INTEGER;

CREATE INDEX objects_by_commit ON objects (committed_at_ms) WHERE deleted_at_ms IS NULL;

-- Leases on compactor jobs, so several compactor processes never do the same work at once.
CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

-- How far a per-partition job has got (log cleaning of compacted topics, Parquet export).
CREATE TABLE partition_progress (
    job TEXT NOT NULL,
    topic_id BLOB NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (job, topic_id, partition)
) WITHOUT ROWID;
