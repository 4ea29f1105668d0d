//! The catalog and sequencer of Shoal.
//!
//! Records live in immutable objects; their order lives here. A [`MetadataStore`] owns the
//! topics, each partition's next offset and log start offset, and the batch index that maps
//! offset ranges to byte ranges of objects. Every backend runs the same conformance suite
//! ([`conformance`]), so the agent never depends on which one it talks to.

mod announce;
pub mod conformance;
mod error;
mod postgres;
mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod topic_config;
mod types;

use std::collections::BTreeMap;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use error::MetadataError;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use types::{
    AgentInfo, AgentRegistration, Announcement, BatchBudget, BatchIndexEntry, ChunkCommit,
    CommitOutcome, CommittedOffset, HighWatermark, IndexSwap, ObjectCommit, PartitionBatch,
    PartitionOffsets, StoredObject, Topic, TopicId, Upload,
};

/// Result alias for the sequencer.
pub type Result<T, E = MetadataError> = std::result::Result<T, E>;

/// The sequencer and catalog that every agent shares.
///
/// Methods are one transaction each: a caller never sees half of a commit or half of a topic.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// The cluster id (Kafka's, a 22-character URL-safe base64 UUID), made on first use and
    /// the same for every agent of the cluster ever after.
    async fn cluster_id(&self) -> Result<String>;

    /// Creates a topic with `partitions` partitions and the given topic configs.
    /// Fails with [`MetadataError::TopicExists`] if the name is taken.
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Topic>;

    /// Deletes a topic, its partitions and its batch index rows. The objects stay until the
    /// garbage collector finds them unreferenced.
    async fn delete_topic(&self, name: &str) -> Result<()>;

    /// All topics, ordered by name.
    async fn list_topics(&self) -> Result<Vec<Topic>>;

    /// One topic by name, or `None`.
    async fn topic(&self, name: &str) -> Result<Option<Topic>>;

    /// Grows a topic to `total` partitions. Fails with [`MetadataError::InvalidPartitions`]
    /// if `total` is not larger than the current count.
    async fn create_partitions(&self, name: &str, total: i32) -> Result<Topic>;

    /// Replaces the whole set of topic configs (AlterConfigs semantics).
    async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<Topic>;

    /// Commits one object: assigns each chunk its base offset, advancing the partitions'
    /// next offsets, and records the batch index rows, all in one transaction.
    ///
    /// Keyed by `object.object_id`: committing the same object again returns the offsets the
    /// first commit assigned and changes nothing. Chunks of unknown topics or partitions get
    /// [`CommitOutcome::UnknownPartition`] and take no offsets; the rest commit normally.
    async fn commit_object(&self, object: &ObjectCommit) -> Result<Vec<CommitOutcome>>;

    /// Log start offset and high watermark of a partition.
    async fn partition_offsets(&self, topic: TopicId, partition: i32) -> Result<PartitionOffsets>;

    /// Batch index rows of a partition whose last offset is at least `from_offset`, in offset
    /// order, stopping once `max_bytes` of chunk data is listed (at least one row is returned
    /// when any exists).
    async fn batches(
        &self,
        topic: TopicId,
        partition: i32,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<BatchIndexEntry>>;

    /// The first batch index row of a partition, at or above the log start offset, whose
    /// max timestamp is at least `timestamp`.
    async fn batch_for_timestamp(
        &self,
        topic: TopicId,
        partition: i32,
        timestamp: i64,
    ) -> Result<Option<BatchIndexEntry>>;

    /// The batch index row holding the largest timestamp of a partition (the earliest such
    /// row on ties), for ListOffsets' MAX_TIMESTAMP.
    async fn batch_with_max_timestamp(
        &self,
        topic: TopicId,
        partition: i32,
    ) -> Result<Option<BatchIndexEntry>>;

    /// Registers a new agent, live for `ttl` unless renewed; returns its node id, never
    /// given to another agent.
    async fn register_agent(&self, agent: &AgentRegistration, ttl: Duration) -> Result<i32>;

    /// Renews agent `id`'s lease for `ttl`. An agent whose lease lapsed (a long outage of the
    /// sequencer) comes back under the same id.
    async fn renew_agent(&self, id: i32, agent: &AgentRegistration, ttl: Duration) -> Result<()>;

    /// Removes agent `id` from the live agents at once (a clean stop).
    async fn deregister_agent(&self, id: i32) -> Result<()>;

    /// Agents whose lease has not lapsed, by id.
    async fn live_agents(&self) -> Result<Vec<AgentInfo>>;

    /// Records object keys that agent `agent` is about to upload, so an object uploaded and
    /// never committed can be found and deleted. Committing an object removes its record.
    async fn reserve_uploads(&self, agent: i32, object_ids: &[String]) -> Result<()>;

    /// Drops the records of reserved keys that were never uploaded.
    async fn release_uploads(&self, object_ids: &[String]) -> Result<()>;

    /// Reserved, uncommitted keys older than `age` (by the sequencer's clock), oldest first.
    async fn stale_uploads(&self, age: Duration) -> Result<Vec<Upload>>;

    /// Tells other agents that partitions moved, best effort: a backend without
    /// notifications does nothing, and listeners fall back to polling.
    async fn announce(&self, from: i32, marks: &[HighWatermark]) -> Result<()>;

    /// Other agents' announcements, or `None` when the backend cannot deliver them.
    /// The feed ends when the receiver is dropped.
    async fn subscribe(&self) -> Result<Option<mpsc::Receiver<Announcement>>>;

    /// Takes (or renews) the lease on coordinating consumer group `group` for agent `agent`,
    /// for `ttl`; `false` while another agent holds an unexpired lease.
    async fn acquire_group(&self, group: &str, agent: i32, ttl: Duration) -> Result<bool>;

    /// Renews agent `agent`'s leases on `groups`; returns those it no longer holds.
    async fn renew_groups(
        &self,
        agent: i32,
        groups: &[String],
        ttl: Duration,
    ) -> Result<Vec<String>>;

    /// Gives up agent `agent`'s lease on `group`, so another agent may take it at once.
    async fn release_group(&self, group: &str, agent: i32) -> Result<()>;

    /// Stores committed offsets of `group`, all or none, if agent `agent` holds the group's
    /// lease; [`MetadataError::NotGroupCoordinator`] otherwise (a coordinator that lost its
    /// lease can never overwrite its successor's commits).
    async fn commit_offsets(
        &self,
        group: &str,
        agent: i32,
        offsets: &[CommittedOffset],
    ) -> Result<()>;

    /// Committed offsets of `group`, by topic and partition.
    async fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>>;

    /// Deletes committed offsets of `group` for the given partitions (leased, as above).
    async fn delete_offsets(
        &self,
        group: &str,
        agent: i32,
        partitions: &[(TopicId, i32)],
    ) -> Result<()>;

    /// Stores `group`'s encoded membership state (leased, as above).
    async fn save_group(&self, group: &str, agent: i32, state: &[u8]) -> Result<()>;

    /// `group`'s last saved membership state.
    async fn load_group(&self, group: &str) -> Result<Option<Vec<u8>>>;

    /// Deletes `group`'s state and committed offsets (leased, as above).
    async fn delete_group(&self, group: &str, agent: i32) -> Result<()>;

    /// Every group with saved state or committed offsets, by name.
    async fn list_groups(&self) -> Result<Vec<String>>;

    /// Advances a partition's log start offset to `offset` (never back, never past the high
    /// watermark) and deletes the batch index rows wholly below it, for retention and
    /// DeleteRecords. Returns the log start offset now in force.
    async fn advance_log_start(&self, topic: TopicId, partition: i32, offset: i64) -> Result<i64>;

    /// Objects still referenced (or not yet checked) and smaller than `max_size` bytes,
    /// committed at least `min_age` ago, oldest first, at most `limit`: what merging may take.
    async fn merge_candidates(
        &self,
        max_size: u64,
        min_age: Duration,
        limit: usize,
    ) -> Result<Vec<StoredObject>>;

    /// Every batch index row referring to one of `object_ids`, ordered by topic, partition
    /// and base offset.
    async fn object_batches(&self, object_ids: &[String]) -> Result<Vec<PartitionBatch>>;

    /// Applies `swap` in one transaction; `false` (and nothing changed) when a replaced row
    /// is gone or was replaced already (see [`IndexSwap`]).
    async fn swap_batches(&self, swap: &IndexSwap) -> Result<bool>;

    /// Objects that no index row has referred to for at least `grace` (by the sequencer's
    /// clock), oldest first, at most `limit`. Objects found unreferenced now start their grace
    /// period.
    async fn unreferenced_objects(&self, grace: Duration, limit: usize) -> Result<Vec<String>>;

    /// Records that `object_ids` were deleted from the object store. Their rows stay as
    /// tombstones for a day, so a late retry of a commit of the same key changes nothing.
    async fn forget_objects(&self, object_ids: &[String]) -> Result<()>;

    /// Takes (or renews) lease `name` for `holder`, for `ttl`; `false` while another holder
    /// has an unexpired lease. Compactor processes share work this way.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool>;

    /// Gives up `holder`'s lease `name`.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;

    /// How far job `job` got in a partition (the next offset it has to handle), if anywhere.
    async fn partition_progress(
        &self,
        job: &str,
        topic: TopicId,
        partition: i32,
    ) -> Result<Option<i64>>;

    /// Records job `job`'s progress in a partition.
    async fn set_partition_progress(
        &self,
        job: &str,
        topic: TopicId,
        partition: i32,
        next_offset: i64,
    ) -> Result<()>;
}

/// Opens the metadata store named by a URL (`sqlite://path/to/metadata.db` for one node,
/// `postgres://user@host/db` for a fleet), creating and migrating it as needed.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn MetadataStore>> {
    let parsed = url::Url::parse(url).map_err(|e| MetadataError::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    match parsed.scheme() {
        "sqlite" => Ok(std::sync::Arc::new(SqliteStore::open(url).await?)),
        "postgres" | "postgresql" => Ok(std::sync::Arc::new(PostgresStore::open(url).await?)),
        other => Err(MetadataError::InvalidUrl {
            url: url.to_string(),
            reason: format!("unsupported scheme `{other}` (expected sqlite:// or postgres://)"),
        }),
    }
}
