use std::collections::BTreeMap;

/// A topic's stable identity (Kafka's topic id), distinct from its name so a topic deleted
/// and created again under the same name is a different topic.
pub type TopicId = uuid::Uuid;

/// A topic as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub id: TopicId,
    pub name: String,
    pub partitions: i32,
    /// Topic-level configs set explicitly (Kafka names: `retention.ms`, `cleanup.policy`, ...).
    pub configs: BTreeMap<String, String>,
}

/// One (topic, partition) chunk of an object, as the batcher wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCommit {
    pub topic: TopicId,
    pub partition: i32,
    /// Number of offsets the chunk takes (sum of `last_offset_delta + 1` of its batches).
    pub offset_count: i64,
    /// Largest record timestamp in the chunk (ms since the epoch).
    pub max_timestamp: i64,
    /// Byte position of the chunk in the object.
    pub position: u64,
    /// Byte length of the chunk.
    pub size: u64,
}

/// An object ready to be committed: its key and its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCommit {
    /// The object's key in the object store (a ULID); never reused.
    pub object_id: String,
    pub size: u64,
    pub chunks: Vec<ChunkCommit>,
}

/// What the sequencer did with one chunk of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The chunk was assigned offsets starting at `base_offset`.
    Committed { base_offset: i64 },
    /// The topic or partition no longer exists (deleted between produce and commit).
    UnknownPartition,
}

/// Offsets bounding a partition's readable log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The first offset still readable.
    pub log_start_offset: i64,
    /// The next offset to be assigned (Kafka's high watermark and log end offset).
    pub high_watermark: i64,
}

/// One row of the batch index: where the chunk holding a range of offsets lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchIndexEntry {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub object_id: String,
    pub position: u64,
    pub size: u64,
}

/// Collects batch index rows in offset order until a byte budget is spent, always taking
/// at least one row so a batch larger than the budget still gets through (as Kafka does).
#[derive(Debug)]
pub struct BatchBudget {
    max_bytes: u64,
    total: u64,
    entries: Vec<BatchIndexEntry>,
}

impl BatchBudget {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            total: 0,
            entries: Vec::new(),
        }
    }

    /// Takes `entry` if it fits; `false` (and the entry is dropped) once the budget is spent.
    pub fn push(&mut self, entry: BatchIndexEntry) -> bool {
        if !self.entries.is_empty() && self.total + entry.size > self.max_bytes {
            return false;
        }
        self.total += entry.size;
        self.entries.push(entry);
        true
    }

    /// Whether no further row can fit.
    pub fn is_spent(&self) -> bool {
        self.total >= self.max_bytes
    }

    /// Takes one page of rows read with `LIMIT limit`; `true` once the listing is complete
    /// (budget spent, or a short page means no rows are left).
    pub fn take_page(&mut self, page: Vec<BatchIndexEntry>, limit: usize) -> bool {
        let len = page.len();
        for entry in page {
            if !self.push(entry) {
                return true;
            }
        }
        len < limit || self.is_spent()
    }

    /// The next offset after the rows taken so far, if any.
    pub fn next_offset(&self) -> Option<i64> {
        self.entries.last().map(|e| e.last_offset + 1)
    }

    pub fn into_entries(self) -> Vec<BatchIndexEntry> {
        self.entries
    }
}

/// What an agent tells the fleet about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRegistration {
    /// Availability zone; agents without one are listed to every client.
    pub zone: Option<String>,
    /// The advertised Kafka address.
    pub host: String,
    pub port: i32,
}

/// A live agent, as Metadata lists it to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// Kafka node id; never reused.
    pub id: i32,
    pub zone: Option<String>,
    pub host: String,
    pub port: i32,
    /// When the agent last registered or renewed its lease (ms since the epoch, sequencer
    /// clock).
    pub last_heartbeat_ms: i64,
}

/// An object key reserved for an upload that has not been committed (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub object_id: String,
    pub agent_id: i32,
    /// When the key was reserved (ms since the epoch, sequencer clock).
    pub reserved_at_ms: i64,
}

/// A partition's new high watermark, as one agent announces it to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HighWatermark {
    pub topic: TopicId,
    pub partition: i32,
    pub high_watermark: i64,
}

/// What a subscription to other agents' commits delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// Partitions that moved, announced by agent `from`.
    Moved {
        from: i32,
        marks: Vec<HighWatermark>,
    },
    /// Announcements may have been missed (the connection was lost): anything may have moved.
    Gap,
}

/// A consumer group's committed offset for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub topic: TopicId,
    pub partition: i32,
    pub offset: i64,
    /// The leader epoch the client saw (-1 when unknown), echoed back on fetch.
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    /// When the offset was committed (ms since the epoch).
    pub commit_time_ms: i64,
}

/// A committed object, as the compactor picks objects to merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub id: String,
    pub size: u64,
    /// 0 for an agent's flush; one more than its inputs' highest level for a merged object.
    pub level: i32,
    /// When the object was committed (ms since the epoch).
    pub committed_at_ms: i64,
}

/// A batch index row together with its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionBatch {
    pub topic: TopicId,
    pub partition: i32,
    pub entry: BatchIndexEntry,
}

/// A rewritten object taking the place of the index rows it was made from, all at once.
///
/// Applied only if every row in `replaced` is still in the index exactly as listed (same
/// base offset, same object): retention, DeleteRecords or another compactor may have moved
/// on since the rows were read, and then nothing changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSwap {
    /// The new object's key; its upload reservation (if any) is released by the swap.
    pub object_id: String,
    pub size: u64,
    pub level: i32,
    pub replaced: Vec<PartitionBatch>,
    /// Rows of the new object. Their offsets lie within the replaced rows' ranges.
    pub rows: Vec<PartitionBatch>,
}
