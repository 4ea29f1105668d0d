//! The catalog and sequencer of Shoal.
//!
//! Records live in immutable objects; their order lives here. A [`MetadataStore`] owns the
//! topics, each partition's next offset and log start offset, and the batch index that maps
//! offset ranges to byte ranges of objects. Every backend runs the same conformance suite
//! ([`conformance`]), so the agent never depends on which one it talks to.

pub mod conformance;
mod error;
mod postgres;
mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod types;

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use error::MetadataError;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use types::{
    BatchBudget, BatchIndexEntry, ChunkCommit, CommitOutcome, ObjectCommit, PartitionOffsets,
    Topic, TopicId,
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
