//! The agent's recent batch index: per partition, the offsets and the newest index rows,
//! kept in memory so that tail fetches and long-polls do not query the sequencer.
//!
//! Local commits update it at once. Other agents' commits are announced (see
//! `crate::announce`) and mark their partitions stale. Anything else (a lost announcement, the
//! compactor moving the log start offset) is picked up by reloading from the sequencer when
//! an entry is older than [`MAX_AGE`], or when a caller asks for an offset it does not know.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_metadata::{
    BatchBudget, BatchIndexEntry, MetadataError, MetadataStore, PartitionOffsets, TopicId,
};

/// How long cached offsets are trusted without asking the sequencer.
const MAX_AGE: Duration = Duration::from_millis(250);
/// Index rows kept per partition: enough for the tail that consumers read.
const MAX_ROWS: usize = 256;

#[derive(Default)]
struct Partition {
    offsets: Option<PartitionOffsets>,
    loaded_at: Option<Instant>,
    /// Contiguous rows ending at the high watermark, oldest first.
    rows: VecDeque<BatchIndexEntry>,
}

/// Recent offsets and batch index rows of every partition this agent serves.
pub struct RecentIndex {
    store: Arc<dyn MetadataStore>,
    partitions: Mutex<HashMap<(TopicId, i32), Partition>>,
}

impl RecentIndex {
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        Self {
            store,
            partitions: Mutex::new(HashMap::new()),
        }
    }

    /// Records a row this agent just committed.
    pub fn committed(&self, topic: TopicId, partition: i32, row: BatchIndexEntry) {
        let mut partitions = self.partitions.lock();
        let state = partitions.entry((topic, partition)).or_default();
        let Some(offsets) = state.offsets.as_mut() else {
            // Never loaded: the next reader loads it from the sequencer.
            return;
        };
        if row.base_offset != offsets.high_watermark {
            // Another writer committed in between: what we hold is no longer contiguous.
            state.rows.clear();
            state.loaded_at = None;
            return;
        }
        offsets.high_watermark = row.last_offset + 1;
        state.rows.push_back(row);
        if state.rows.len() > MAX_ROWS {
            state.rows.pop_front();
        }
    }

    /// Another agent committed up to `high_watermark`: reload before answering from memory.
    pub fn moved(&self, topic: TopicId, partition: i32, high_watermark: i64) {
        let mut partitions = self.partitions.lock();
        if let Some(state) = partitions.get_mut(&(topic, partition))
            && state
                .offsets
                .is_some_and(|offsets| offsets.high_watermark < high_watermark)
        {
            state.loaded_at = None;
        }
    }

    /// Drops a partition's offsets and rows, so the next caller reloads them.
    pub fn forget(&self, topic: TopicId, partition: i32) {
        self.partitions.lock().remove(&(topic, partition));
    }

    /// Announcements may have been missed: every partition reloads before it is trusted.
    pub fn forget_offsets(&self) {
        for state in self.partitions.lock().values_mut() {
            state.loaded_at = None;
        }
    }

    /// The partition's offsets; `at_least` forces a reload when the cached high watermark is
    /// below it (a client may know of commits made through other agents).
    pub async fn offsets(
        &self,
        topic: TopicId,
        partition: i32,
        at_least: i64,
    ) -> Result<PartitionOffsets, MetadataError> {
        {
            let partitions = self.partitions.lock();
            if let Some(state) = partitions.get(&(topic, partition))
                && let (Some(offsets), Some(loaded_at)) = (state.offsets, state.loaded_at)
                && loaded_at.elapsed() < MAX_AGE
                && offsets.high_watermark >= at_least
            {
                return Ok(offsets);
            }
        }
        self.reload(topic, partition).await
    }

    async fn reload(
        &self,
        topic: TopicId,
        partition: i32,
    ) -> Result<PartitionOffsets, MetadataError> {
        let offsets = self.store.partition_offsets(topic, partition).await?;
        let mut partitions = self.partitions.lock();
        let state = partitions.entry((topic, partition)).or_default();
        let known = state.offsets.map_or(-1, |o| o.high_watermark);
        if offsets.high_watermark != known {
            // Rows we hold end at the old high watermark: drop them rather than leave a gap.
            state.rows.clear();
        }
        state
            .rows
            .retain(|row| row.last_offset >= offsets.log_start_offset);
        state.offsets = Some(offsets);
        state.loaded_at = Some(Instant::now());
        Ok(offsets)
    }

    /// Index rows from `from_offset` on, within `max_bytes` (at least one row): from memory
    /// when the recent rows cover `from_offset`, else from the sequencer.
    pub async fn batches(
        &self,
        topic: TopicId,
        partition: i32,
        from_offset: i64,
        max_bytes: u64,
    ) -> Result<Vec<BatchIndexEntry>, MetadataError> {
        {
            let partitions = self.partitions.lock();
            if let Some(state) = partitions.get(&(topic, partition))
                && state
                    .rows
                    .front()
                    .is_some_and(|first| first.base_offset <= from_offset)
            {
                let mut budget = BatchBudget::new(max_bytes);
                for row in state.rows.iter().filter(|r| r.last_offset >= from_offset) {
                    if !budget.push(row.clone()) {
                        break;
                    }
                }
                return Ok(budget.into_entries());
            }
        }
        self.store
            .batches(topic, partition, from_offset, max_bytes)
            .await
    }
}
