-- Catalog: topics and their explicitly set configs.
CREATE TABLE topics (
    id BLOB PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE topic_configs (
    topic_id BLOB NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (topic_id, name)
) WITHOUT ROWID;

-- Sequencer state of each partition: the next offset to assign (high watermark) and the
-- first offset still readable.
CREATE TABLE partitions (
    topic_id BLOB NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL DEFAULT 0,
    log_start_offset INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;

-- Every committed object; the commit of an object id happens once.
CREATE TABLE objects (
    id TEXT PRIMARY KEY NOT NULL,
    size INTEGER NOT NULL,
    committed_at_ms INTEGER NOT NULL
);

-- The batch index: which byte range of which object holds a range of offsets.
-- `chunk_index` is the chunk's place in its commit, so a retried commit can be answered.
CREATE TABLE batches (
    topic_id BLOB NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partition INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    max_timestamp INTEGER NOT NULL,
    object_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    size INTEGER NOT NULL,
    chunk_index INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, base_offset)
) WITHOUT ROWID;

CREATE INDEX batches_by_object ON batches (object_id);
