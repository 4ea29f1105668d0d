-- Catalog: topics and their explicitly set configs.
CREATE TABLE topics (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE topic_configs (
    topic_id UUID NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (topic_id, name)
);

-- Sequencer state of each partition: the next offset to assign (high watermark) and the
-- first offset still readable. Commits lock these rows, always in (topic_id, partition) order.
CREATE TABLE partitions (
    topic_id UUID NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL DEFAULT 0,
    log_start_offset BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
);

-- Every committed object; the commit of an object id happens once.
CREATE TABLE objects (
    id TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    committed_at_ms BIGINT NOT NULL
);

-- The batch index: which byte range of which object holds a range of offsets.
-- `chunk_index` is the chunk's place in its commit, so a retried commit can be answered.
CREATE TABLE batches (
    topic_id UUID NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partition INTEGER NOT NULL,
    base_offset BIGINT NOT NULL,
    last_offset BIGINT NOT NULL,
    max_timestamp BIGINT NOT NULL,
    object_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    size BIGINT NOT NULL,
    chunk_index INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, base_offset)
);

CREATE INDEX batches_by_object ON batches (object_id);
