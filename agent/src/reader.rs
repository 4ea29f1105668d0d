//! The read path: finds the chunks holding a partition's offsets through the batch index,
//! reads them through the chunk cache (then the object store), and cuts them to the batches
//! a fetch asked for, with their committed base offsets in place.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use shoal_metadata::{BatchIndexEntry, MetadataError, MetadataStore, PartitionOffsets, TopicId};
use shoal_storage::batch::{BatchError, BatchHeader, batches, patch_base_offsets};
use shoal_storage::{ChunkCache, ObjectStorage, StorageError};
use tokio::sync::OnceCell;

use crate::index::RecentIndex;
use crate::metrics as m;

/// Why a partition read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored chunk of object {object_id} is corrupt: {source}")]
    Corrupt {
        object_id: String,
        source: BatchError,
    },
}

/// Reads partitions for Fetch and ListOffsets.
#[derive(Clone)]
pub struct Reader {
    store: Arc<dyn MetadataStore>,
    index: Arc<RecentIndex>,
    storage: Arc<ObjectStorage>,
    cache: Arc<ChunkCache>,
    /// Chunks being read from the object store, so concurrent misses of one chunk (consumers
    /// catching up together) share one GET.
    loading: Arc<Mutex<HashMap<ChunkKey, Arc<OnceCell<Bytes>>>>>,
}

/// A chunk: its object and byte position.
type ChunkKey = (String, u64);

impl Reader {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        index: Arc<RecentIndex>,
        storage: Arc<ObjectStorage>,
        cache: Arc<ChunkCache>,
    ) -> Self {
        Self {
            store,
            index,
            storage,
            cache,
            loading: Arc::default(),
        }
    }

    /// Bytes the read cache holds.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.used_bytes()
    }

    /// The partition's offsets, with a high watermark of at least `at_least` when the
    /// sequencer has one (see [`RecentIndex::offsets`]).
    pub async fn offsets(
        &self,
        topic: TopicId,
        partition: i32,
        at_least: i64,
    ) -> Result<PartitionOffsets, ReadError> {
        Ok(self.index.offsets(topic, partition, at_least).await?)
    }

    /// Drops what this agent remembers of a partition (its log start offset moved, or its
    /// index rows were replaced), so the next read asks the sequencer.
    pub fn forget(&self, topic: TopicId, partition: i32) {
        self.index.forget(topic, partition);
    }

    /// Reads batches from `offset` on, up to `max_bytes` (but always at least one whole batch
    /// when `at_least_one`, as Kafka does so a batch larger than the limit still gets
    /// through). The caller has checked that `offset` is inside the log.
    pub async fn read(
        &self,
        topic: TopicId,
        partition: i32,
        offset: i64,
        max_bytes: u64,
        at_least_one: bool,
    ) -> Result<Bytes, ReadError> {
        match self
            .read_once(topic, partition, offset, max_bytes, at_least_one)
            .await
        {
            // Rows remembered from before a merge may name an object the garbage collector
            // has since deleted: the sequencer's rows name its replacement.
            Err(ReadError::Storage(e)) if e.is_not_found() => {
                self.index.forget(topic, partition);
                self.read_once(topic, partition, offset, max_bytes, at_least_one)
                    .await
            }
            other => other,
        }
    }

    async fn read_once(
        &self,
        topic: TopicId,
        partition: i32,
        offset: i64,
        max_bytes: u64,
        at_least_one: bool,
    ) -> Result<Bytes, ReadError> {
        let entries = self
            .index
            .batches(topic, partition, offset, max_bytes)
            .await?;
        let mut out: Vec<Bytes> = Vec::new();
        let mut total = 0u64;
        'chunks: for entry in entries {
            let chunk = self.chunk(&entry).await?;
            let mut start = None;
            let mut end = 0;
            for item in batches(&chunk) {
                let (header, range) = item.map_err(|source| ReadError::Corrupt {
                    object_id: entry.object_id.clone(),
                    source,
                })?;
                if header.base_offset + header.offset_count() <= offset {
                    continue;
                }
                let len = range.len() as u64;
                let fits = total + len <= max_bytes || (at_least_one && total == 0);
                if !fits {
                    if let Some(s) = start {
                        out.push(chunk.slice(s..end));
                    }
                    break 'chunks;
                }
                start.get_or_insert(range.start);
                end = range.end;
                total += len;
            }
            if let Some(s) = start {
                out.push(chunk.slice(s..end));
            }
        }
        Ok(match out.len() {
            0 => Bytes::new(),
            1 => out.pop().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(total as usize);
                for part in out {
                    joined.extend_from_slice(&part);
                }
                joined.freeze()
            }
        })
    }

    /// One batch index row's chunk, offsets patched: from the cache, or read once from the
    /// object store and cached (committed offsets never change).
    pub async fn chunk(&self, entry: &BatchIndexEntry) -> Result<Bytes, ReadError> {
        if let Some(data) = self.cache.get(&entry.object_id, entry.position) {
            metrics::counter!(m::CACHE_REQUESTS, "result" => "hit").increment(1);
            return Ok(data);
        }
        let key = (entry.object_id.clone(), entry.position);
        let cell = self.loading.lock().entry(key.clone()).or_default().clone();
        let mut loaded_here = false;
        let result = cell
            .get_or_try_init(|| {
                loaded_here = true;
                self.load(entry)
            })
            .await
            .cloned();
        if !loaded_here {
            metrics::counter!(m::CACHE_REQUESTS, "result" => "joined").increment(1);
        }
        // Done (or failed: the next reader tries again): later readers find the cache.
        let mut loading = self.loading.lock();
        if loading.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            loading.remove(&key);
        }
        result
    }

    /// Reads a chunk from the object store into the cache, unless a read that finished
    /// since the caller's miss put it there.
    async fn load(&self, entry: &BatchIndexEntry) -> Result<Bytes, ReadError> {
        if let Some(data) = self.cache.get(&entry.object_id, entry.position) {
            metrics::counter!(m::CACHE_REQUESTS, "result" => "hit").increment(1);
            return Ok(data);
        }
        metrics::counter!(m::CACHE_REQUESTS, "result" => "miss").increment(1);
        let raw = self
            .storage
            .get_range(
                &entry.object_id,
                entry.position..entry.position + entry.size,
            )
            .await?;
        let mut data = BytesMut::from(raw);
        patch_base_offsets(&mut data, entry.base_offset).map_err(|source| ReadError::Corrupt {
            object_id: entry.object_id.clone(),
            source,
        })?;
        let data = data.freeze();
        self.cache
            .insert(&entry.object_id, entry.position, data.clone());
        Ok(data)
    }

    /// The first record at or after `timestamp`: (offset, timestamp), for ListOffsets.
    pub async fn offset_for_timestamp(
        &self,
        topic: TopicId,
        partition: i32,
        timestamp: i64,
        log_start_offset: i64,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let Some(entry) = self
            .store
            .batch_for_timestamp(topic, partition, timestamp)
            .await?
        else {
            return Ok(None);
        };
        let chunk = self.chunk(&entry).await?;
        self.find_record(&entry, &chunk, |ts| ts >= timestamp, log_start_offset)
    }

    /// The record with the largest timestamp (the first of equals), for MAX_TIMESTAMP.
    pub async fn max_timestamp_offset(
        &self,
        topic: TopicId,
        partition: i32,
        log_start_offset: i64,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let Some(entry) = self
            .store
            .batch_with_max_timestamp(topic, partition)
            .await?
        else {
            return Ok(None);
        };
        let chunk = self.chunk(&entry).await?;
        let max = entry.max_timestamp;
        self.find_record(&entry, &chunk, |ts| ts >= max, log_start_offset)
    }

    /// Walks a chunk's batches and records for the first record (at or above the log start
    /// offset) whose timestamp satisfies `wanted`.
    fn find_record(
        &self,
        entry: &BatchIndexEntry,
        chunk: &Bytes,
        wanted: impl Fn(i64) -> bool,
        log_start_offset: i64,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let corrupt = |source| ReadError::Corrupt {
            object_id: entry.object_id.clone(),
            source,
        };
        for item in batches(chunk) {
            let (header, range) = item.map_err(corrupt)?;
            if header.is_control()
                || !wanted(header.max_timestamp)
                || header.base_offset + header.offset_count() <= log_start_offset
            {
                continue;
            }
            if let Some(found) =
                first_record(&header, chunk.slice(range), &wanted, log_start_offset)
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

/// Decodes one batch's records (decompressing as needed) to find the first wanted one.
fn first_record(
    header: &BatchHeader,
    batch: Bytes,
    wanted: &impl Fn(i64) -> bool,
    log_start_offset: i64,
) -> Option<(i64, i64)> {
    if header.is_log_append_time() {
        let offset = header.base_offset.max(log_start_offset);
        return Some((offset, header.max_timestamp));
    }
    let mut buf = batch;
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records
        .iter()
        .find(|r| r.offset >= log_start_offset && wanted(r.timestamp))
        .map(|r| (r.offset, r.timestamp))
}
