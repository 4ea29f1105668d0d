//! The batcher: gathers validated batches from every connection into one pending object,
//! flushes it on size or age, commits it to the sequencer, and only then answers the
//! producers with their offsets.
//!
//! PUTs of several objects run at once, but commits happen in flush order, so batches that
//! one connection sent in order get increasing offsets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_metadata::{
    BatchIndexEntry, ChunkCommit, CommitOutcome, HighWatermark, MetadataStore, ObjectCommit,
    TopicId,
};
use shoal_storage::batch::patch_base_offsets;
use shoal_storage::{BuiltObject, ChunkCache, ObjectBuilder, ObjectStorage};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::announce::Announcer;
use crate::index::RecentIndex;
use crate::metrics as m;
use crate::uploads::UploadKeys;

/// Flushes whose PUT may run at the same time.
const MAX_FLUSHES_IN_FLIGHT: usize = 4;
/// Attempts at a commit whose outcome is unknown (the commit is idempotent by object id).
const COMMIT_ATTEMPTS: u32 = 5;

/// Why a produce could not be made durable; each maps to a retriable Kafka error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("object store write failed: {0}")]
    Storage(String),
    #[error("sequencer commit failed: {0}")]
    Commit(String),
    #[error("the partition was deleted before the commit")]
    UnknownPartition,
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// Batches of one partition from one produce request.
pub struct Append {
    pub topic: TopicId,
    pub partition: i32,
    pub batches: Bytes,
    pub offset_count: i64,
    pub max_timestamp: i64,
}

/// Where an append landed: the base offset of its first batch.
pub type AppendResult = Result<i64, AppendError>;

/// Resolves to an append's outcome once its object is committed (or failed).
pub struct Receipt(oneshot::Receiver<AppendResult>);

impl std::future::Future for Receipt {
    type Output = AppendResult;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<AppendResult> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AppendError::ShuttingDown)))
    }
}

struct Request {
    append: Append,
    reply: oneshot::Sender<AppendResult>,
}

struct Waiter {
    chunk: (TopicId, i32),
    delta: i64,
    reply: oneshot::Sender<AppendResult>,
}

/// Handle that produce requests use to hand batches to the batcher task.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Request>,
}

/// Settings of the batcher.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    pub flush_interval: Duration,
    pub flush_bytes: u64,
}

/// Shared services a flush needs.
#[derive(Clone)]
pub struct FlushContext {
    pub storage: Arc<ObjectStorage>,
    pub store: Arc<dyn MetadataStore>,
    pub cache: Arc<ChunkCache>,
    /// Learns every commit, so tail reads need not ask the sequencer.
    pub index: Arc<RecentIndex>,
    /// Bumped after every commit, so parked fetches look again.
    pub commits: Arc<watch::Sender<u64>>,
    /// Tells other agents about every commit.
    pub announcer: Announcer,
    /// Object keys on record before their upload.
    pub uploads: Arc<UploadKeys>,
}

impl Batcher {
    /// Starts the batcher task. When `shutdown` turns true it refuses new appends, flushes
    /// what it holds, and its join handle completes once the last commit is answered.
    pub fn start(
        config: BatcherConfig,
        ctx: FlushContext,
        shutdown: watch::Receiver<bool>,
    ) -> (Batcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(run(config, ctx, rx, shutdown));
        (Batcher { tx }, task)
    }

    /// Queues batches for the next object, in call order. The receipt resolves once they are
    /// committed.
    pub async fn submit(&self, append: Append) -> Result<Receipt, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { append, reply })
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        Ok(Receipt(rx))
    }
}

struct Pending {
    builder: ObjectBuilder,
    waiters: Vec<Waiter>,
    since: Instant,
    /// Record-batch bytes appended, counted in the flush backlog until committed or failed.
    bytes: u64,
}

impl Pending {
    fn new() -> Self {
        Self {
            builder: ObjectBuilder::new(),
            waiters: Vec::new(),
            since: Instant::now(),
            bytes: 0,
        }
    }
}

async fn run(
    config: BatcherConfig,
    ctx: FlushContext,
    mut rx: mpsc::Receiver<Request>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_FLUSHES_IN_FLIGHT));
    let mut pending = Pending::new();
    // Completed when the previous flush's commit is done; each flush waits for its
    // predecessor before committing so offsets follow flush order.
    let mut previous: Option<oneshot::Receiver<()>> = None;
    let mut flushes = tokio::task::JoinSet::new();
    let mut stopping = false;
    loop {
        let deadline = pending.since + config.flush_interval;
        let idle = pending.builder.is_empty();
        let request = tokio::select! {
            request = rx.recv() => request,
            _ = tokio::time::sleep_until(deadline), if !idle => {
                start_flush(&ctx, &permits, &mut pending, &mut previous, &mut flushes).await;
                continue;
            }
            changed = shutdown.changed(), if !stopping => {
                if changed.is_err() || *shutdown.borrow() {
                    // Refuse new appends but keep those already queued.
                    rx.close();
                    stopping = true;
                }
                continue;
            }
        };
        let Some(Request { append, reply }) = request else {
            break;
        };
        if pending.builder.is_empty() {
            pending.since = Instant::now();
        }
        let chunk = (append.topic, append.partition);
        pending.bytes += append.batches.len() as u64;
        metrics::gauge!(m::FLUSH_BACKLOG_BYTES).increment(append.batches.len() as f64);
        let delta = pending.builder.append(
            append.topic,
            append.partition,
            append.batches,
            append.offset_count,
            append.max_timestamp,
        );
        pending.waiters.push(Waiter {
            chunk,
            delta,
            reply,
        });
        if pending.builder.len_bytes() >= config.flush_bytes {
            start_flush(&ctx, &permits, &mut pending, &mut previous, &mut flushes).await;
        }
    }
    if !pending.builder.is_empty() {
        start_flush(&ctx, &permits, &mut pending, &mut previous, &mut flushes).await;
    }
    while flushes.join_next().await.is_some() {}
    ctx.uploads.release_all().await;
}

async fn start_flush(
    ctx: &FlushContext,
    permits: &Arc<Semaphore>,
    pending: &mut Pending,
    previous: &mut Option<oneshot::Receiver<()>>,
    flushes: &mut tokio::task::JoinSet<()>,
) {
    // Waiting here when too many PUTs are in flight stops intake: producers feel
    // back-pressure instead of the agent buffering without bound.
    let Ok(permit) = permits.clone().acquire_owned().await else {
        return;
    };
    let taken = std::mem::replace(pending, Pending::new());
    let (done_tx, done_rx) = oneshot::channel();
    let before = previous.replace(done_rx);
    let ctx = ctx.clone();
    flushes.spawn(async move {
        let start = std::time::Instant::now();
        let object = taken.builder.finish();
        metrics::histogram!(m::FLUSH_BYTES).record(object.size as f64);
        let stored = match ctx.uploads.next().await {
            Ok(object_id) => ctx
                .storage
                .put(&object_id, object.parts.clone())
                .await
                .map(|()| object_id)
                .map_err(|e| AppendError::Storage(e.to_string())),
            Err(e) => Err(AppendError::Commit(format!(
                "cannot reserve an object key: {e}"
            ))),
        };
        drop(permit);
        if let Some(before) = before {
            let _ = before.await;
        }
        // The next flush commits only after this one's rows reach the recent index, which
        // keeps the index's rows in offset order.
        let committed = match stored {
            Ok(object_id) => {
                let outcome = commit(&ctx, &object_id, &object).await;
                let committed = outcome.is_ok();
                answer(&ctx, &object_id, &object, outcome, taken.waiters);
                committed
            }
            Err(e) => {
                fail(&e, taken.waiters);
                false
            }
        };
        metrics::gauge!(m::FLUSH_BACKLOG_BYTES).decrement(taken.bytes as f64);
        metrics::histogram!(m::FLUSH_DURATION).record(start.elapsed().as_secs_f64());
        let outcome = if committed { "ok" } else { "failed" };
        metrics::counter!(m::FLUSHES, "outcome" => outcome).increment(1);
        let _ = done_tx.send(());
    });
    while flushes.try_join_next().is_some() {}
}

async fn commit(
    ctx: &FlushContext,
    object_id: &str,
    object: &BuiltObject,
) -> Result<Vec<CommitOutcome>, AppendError> {
    let commit = ObjectCommit {
        object_id: object_id.to_string(),
        size: object.size,
        chunks: object
            .chunks
            .iter()
            .map(|c| ChunkCommit {
                topic: c.topic,
                partition: c.partition,
                offset_count: c.offset_count,
                max_timestamp: c.max_timestamp,
                position: c.position,
                size: c.size,
            })
            .collect(),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let start = std::time::Instant::now();
        let result = ctx.store.commit_object(&commit).await;
        metrics::histogram!(m::COMMIT_DURATION).record(start.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(_) if attempt < COMMIT_ATTEMPTS => "retried",
            Err(_) => "failed",
        };
        metrics::counter!(m::COMMITS, "outcome" => outcome).increment(1);
        match result {
            Ok(outcomes) => return Ok(outcomes),
            Err(e) if attempt < COMMIT_ATTEMPTS => {
                tracing::warn!(object_id, attempt, error = %e, "commit failed, retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(e) => return Err(AppendError::Commit(e.to_string())),
        }
    }
}

fn answer(
    ctx: &FlushContext,
    object_id: &str,
    object: &BuiltObject,
    outcome: Result<Vec<CommitOutcome>, AppendError>,
    waiters: Vec<Waiter>,
) {
    let outcomes = match outcome {
        Ok(outcomes) => outcomes,
        Err(e) => return fail(&e, waiters),
    };
    let mut bases = std::collections::HashMap::with_capacity(object.chunks.len());
    let mut marks = Vec::with_capacity(object.chunks.len());
    for (index, (chunk, outcome)) in object.chunks.iter().zip(&outcomes).enumerate() {
        if let CommitOutcome::Committed { base_offset } = *outcome {
            bases.insert((chunk.topic, chunk.partition), base_offset);
            marks.push(HighWatermark {
                topic: chunk.topic,
                partition: chunk.partition,
                high_watermark: base_offset + chunk.offset_count,
            });
            ctx.index.committed(
                chunk.topic,
                chunk.partition,
                BatchIndexEntry {
                    base_offset,
                    last_offset: base_offset + chunk.offset_count - 1,
                    max_timestamp: chunk.max_timestamp,
                    object_id: object_id.to_string(),
                    position: chunk.position,
                    size: chunk.size,
                },
            );
            // The writer caches what it wrote, offsets patched, so tail reads need no GET.
            let mut data = bytes::BytesMut::from(object.chunk_data(index));
            if patch_base_offsets(&mut data, base_offset).is_ok() {
                ctx.cache.insert(object_id, chunk.position, data.freeze());
            }
        }
    }
    ctx.commits.send_modify(|n| *n += 1);
    ctx.announcer.announce(marks);
    for waiter in waiters {
        let result = match bases.get(&waiter.chunk) {
            Some(base) => Ok(base + waiter.delta),
            None => Err(AppendError::UnknownPartition),
        };
        let _ = waiter.reply.send(result);
    }
}

/// Answers every producer of a flush that failed with its retriable error.
fn fail(e: &AppendError, waiters: Vec<Waiter>) {
    tracing::error!(error = %e, "flush failed; producers get a retriable error");
    for waiter in waiters {
        let _ = waiter.reply.send(Err(e.clone()));
    }
}
