//! Shoal's compactor: the background jobs that keep a diskless log cheap to keep and to read.
//!
//! Agents write many small multi-partition objects, one per flush. Left alone, the batch index
//! grows one row per partition per flush and a catch-up read costs one GET per tiny object.
//! A compactor pass:
//!
//! 1. **exports** opted-in topics as Parquet files ([`export`]);
//! 2. applies **retention** by time and size, advancing log start offsets ([`retention`]);
//! 3. **cleans** `cleanup.policy=compact` topics, keeping the latest record per key
//!    ([`cleaner`]);
//! 4. **merges** small objects into large ones sorted by partition and offset, swapping their
//!    index rows atomically ([`merge`]);
//! 5. **collects garbage**: objects no row refers to, and uploads never committed, once a grace
//!    period longer than any read has passed ([`gc`]).
//!
//! Every rewrite goes through [`MetadataStore::swap_batches`], which applies only if the rows
//! it replaces are still there, so a compactor racing retention, DeleteRecords or another
//! compactor never loses or duplicates a record; leases keep compactors from doing the same
//! work twice. Nothing here blocks produce or fetch: readers holding old rows keep reading
//! the old objects until the grace period ends.

pub mod cleaner;
pub mod export;
pub mod gc;
pub mod merge;
pub mod metrics;
pub mod retention;
mod source;

use std::sync::Arc;
use std::time::Duration;

use shoal_metadata::{MetadataError, MetadataStore};
use shoal_storage::batch::BatchError;
use shoal_storage::compact::CompactError;
use shoal_storage::parquet::ExportError;
use shoal_storage::{ObjectStorage, StorageError};
use tokio::sync::watch;

/// The agent id under which the compactor reserves the keys of objects it writes: never a
/// live agent's, so the garbage collector judges those reservations by age alone.
pub const COMPACTOR_AGENT_ID: i32 = 0;

/// Why a compactor job failed. Jobs fail alone: the pass goes on with the others.
#[derive(Debug, thiserror::Error)]
pub enum CompactorError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored chunk of object {object_id} is corrupt: {source}")]
    Corrupt {
        object_id: String,
        source: BatchError,
    },
    #[error(
        "index row of object {object_id} claims offsets {base_offset}..={last_offset} but its batches hold {held}"
    )]
    OffsetMismatch {
        object_id: String,
        base_offset: i64,
        last_offset: i64,
        held: i64,
    },
    #[error(transparent)]
    Compact(#[from] CompactError),
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// How the compactor works; [`Default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct CompactorConfig {
    /// Time between passes of [`Compactor::run`].
    pub interval: Duration,
    /// Size a merge aims for; objects of at least half of it are left alone.
    pub merge_target_bytes: u64,
    /// Largest index row a merge writes: a fetch reads whole rows, so rows stay about the size
    /// of one block read.
    pub merge_row_bytes: u64,
    /// Objects younger than this are not merged yet (tail readers hold them in cache).
    pub merge_min_age: Duration,
    /// Objects of one level merged together once this many wait (or they reach the target).
    pub merge_fanout: usize,
    /// How long an unreferenced object or an uncommitted upload is kept before deletion:
    /// longer than any read that may still use an index row read before a swap.
    pub gc_grace: Duration,
    /// Broker-wide `log.retention.ms` for topics that do not set `retention.ms`.
    pub default_retention_ms: i64,
    /// Broker-wide `log.retention.bytes` for topics that do not set `retention.bytes`.
    pub default_retention_bytes: i64,
    /// Where Parquet exports go, under the object storage's prefix.
    pub export_prefix: String,
    /// A partition's pending records are exported once they reach this size...
    pub export_min_bytes: u64,
    /// ...or once the oldest of them is this old.
    pub export_max_wait: Duration,
    /// Lease on a job: longer than a job takes.
    pub lease_ttl: Duration,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            merge_target_bytes: 32 << 20,
            merge_row_bytes: 4 << 20,
            merge_min_age: Duration::from_secs(10),
            merge_fanout: 8,
            gc_grace: Duration::from_secs(600),
            default_retention_ms: 7 * 24 * 3600 * 1000,
            default_retention_bytes: -1,
            export_prefix: "exports".to_string(),
            export_min_bytes: 64 << 20,
            export_max_wait: Duration::from_secs(3600),
            lease_ttl: Duration::from_secs(300),
        }
    }
}

/// What one pass did, for logs, tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Merges applied, objects they replaced, and bytes they wrote.
    pub merges: u64,
    pub objects_merged: u64,
    pub bytes_merged: u64,
    /// Partitions whose log start offset retention advanced.
    pub partitions_truncated: u64,
    /// Partitions cleaned (compacted topics) and the records that cleaning removed.
    pub partitions_cleaned: u64,
    pub records_removed: u64,
    /// Parquet files and records exported.
    pub files_exported: u64,
    pub records_exported: u64,
    /// Objects deleted: unreferenced ones and uploads never committed.
    pub objects_deleted: u64,
    pub uploads_deleted: u64,
    /// Jobs that failed (logged; retried next pass).
    pub failures: u64,
}

/// The compactor of one process: a standalone `shoal compactor` or a single-node agent.
pub struct Compactor {
    store: Arc<dyn MetadataStore>,
    storage: Arc<ObjectStorage>,
    config: CompactorConfig,
    /// Lease holder name, unique per process.
    holder: String,
}

impl Compactor {
    pub fn new(
        store: Arc<dyn MetadataStore>,
        storage: Arc<ObjectStorage>,
        config: CompactorConfig,
    ) -> Self {
        Self {
            store,
            storage,
            config,
            holder: format!("compactor-{}", ulid::Ulid::generate()),
        }
    }

    pub fn config(&self) -> &CompactorConfig {
        &self.config
    }

    /// One full pass over every job. Errors of single jobs are logged and counted in
    /// [`PassReport::failures`]; only an unreachable sequencer fails the pass.
    pub async fn run_once(&self) -> Result<PassReport, CompactorError> {
        let start = std::time::Instant::now();
        let pass = self.pass().await;
        ::metrics::histogram!(metrics::PASS_DURATION).record(start.elapsed().as_secs_f64());
        let outcome = match &pass {
            Ok(report) => {
                metrics::record(report);
                "ok"
            }
            Err(_) => "failed",
        };
        ::metrics::counter!(metrics::PASSES, "outcome" => outcome).increment(1);
        pass
    }

    async fn pass(&self) -> Result<PassReport, CompactorError> {
        let mut report = PassReport::default();
        let topics = self.store.list_topics().await?;
        for topic in &topics {
            self.with_lease(&format!("topic:{}", topic.id), &mut report, async |r| {
                export::export_topic(self, topic, r).await?;
                retention::apply(self, topic, r).await?;
                cleaner::clean_topic(self, topic, r).await
            })
            .await;
        }
        merge::merge_pass(self, &mut report).await?;
        self.with_lease("gc", &mut report, async |r| gc::collect(self, r).await)
            .await;
        Ok(report)
    }

    /// Runs passes every [`CompactorConfig::interval`] until `shutdown` turns true.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.run_once().await {
                Ok(report) if report != PassReport::default() => {
                    tracing::info!(?report, "compactor pass done");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "compactor pass failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Runs `job` under lease `name` (skipped while another compactor holds it); a failure
    /// is logged and counted.
    async fn with_lease(
        &self,
        name: &str,
        report: &mut PassReport,
        job: impl AsyncFnOnce(&mut PassReport) -> Result<(), CompactorError>,
    ) {
        match self
            .store
            .acquire_lease(name, &self.holder, self.config.lease_ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "compactor lease not taken");
                report.failures += 1;
                return;
            }
        }
        if let Err(e) = job(report).await {
            tracing::warn!(job = name, error = %e, "compactor job failed");
            report.failures += 1;
        }
        if let Err(e) = self.store.release_lease(name, &self.holder).await {
            tracing::warn!(lease = name, error = %e, "compactor lease not released");
        }
    }
}

/// A topic config's value: the topic's own, else the catalog default (`None` for a name the
/// catalog does not know).
pub(crate) fn topic_setting<'a>(topic: &'a shoal_metadata::Topic, name: &str) -> Option<&'a str> {
    match topic.configs.get(name) {
        Some(value) => Some(value.as_str()),
        None => shoal_metadata::topic_config::config_def(name).map(|def| def.default),
    }
}

/// Milliseconds since the epoch, as record timestamps count.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
