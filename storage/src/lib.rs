//! Shoal's storage layer: Kafka record batches as raw bytes, the object format, object
//! store access and the chunk read cache. It knows nothing of SQL or of the Kafka wire
//! protocol beyond record batches.

pub mod batch;
pub mod cache;
pub mod compact;
pub mod metrics;
pub mod object;
pub mod parquet;
mod records;
pub mod store;

pub use batch::{BatchError, BatchHeader, Validated};
pub use cache::ChunkCache;
pub use compact::{CompactError, CompactOptions, CompactedChunk, KeyIndex, compact_chunk};
pub use object::{BuiltObject, ChunkInfo, ObjectBuilder, ObjectError};
pub use store::{ObjectStorage, S3Credentials, S3Options, StorageError};
