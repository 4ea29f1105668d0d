-- Which agent coordinates a consumer group: a lease, so two agents never run one group.
-- Offsets and state below are written only by the agent holding an unexpired lease.
CREATE TABLE group_leases (
    group_id TEXT PRIMARY KEY NOT NULL,
    agent_id INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- A group's membership at its last stable point (encoded by the agents), so the agent that
-- takes a group over carries on with the same generation and members.
CREATE TABLE consumer_groups (
    group_id TEXT PRIMARY KEY NOT NULL,
    state BLOB NOT NULL,
    updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Committed offsets, by topic id: offsets of a deleted topic go with it.
CREATE TABLE group_offsets (
    group_id TEXT NOT NULL,
    topic_id BLOB NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    partition INTEGER NOT NULL,
    committed_offset INTEGER NOT NULL,
    leader_epoch INTEGER NOT NULL,
    metadata TEXT,
    commit_time_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic_id, partition)
) WITHOUT ROWID;
