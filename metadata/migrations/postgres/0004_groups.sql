-- Which agent coordinates a consumer group: a lease, so two agents never run one group.
-- Offsets and state below are written only by the agent holding an unexpired lease.
CREATE TABLE group_leases (
    group_id TEXT PRIMARY KEY,
    agent_id INTEGER NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

-- A group's membership at its last stable point (encoded by the agents), so the agent that
-- takes a group over carries on with the same generation and members.
CREATE TABLE consumer_groups (
    group_id TEXT PRIMARY KEY,
    state BYTEA NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- Committed offsets, by topic id: offsets of a deleted topic go with it.
CREATE TABLE group_offsets (
    group_id TEXT NOT NULL,
    topic_id UUID NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partition INTEGER NOT NULL,
    committed_offset BIGINT NOT NULL,
    leader_epoch INTEGER NOT NULL,
    metadata TEXT,
    commit_time_ms BIGINT NOT NULL,
    PRIMARY KEY (group_id, topic_id, partition)
);
