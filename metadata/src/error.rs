/// Why a sequencer call failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("invalid metadata URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    #[error("unknown partition {partition} of topic {topic}")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("metadata database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("metadata migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("this agent does not hold the lease on consumer group `{0}`")]
    NotGroupCoordinator(String),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
}
