//! Object store access.
//!
//! Objects are stored under `<prefix>/<object_id>`: the storage URL names a location
//! dedicated to Shoal's objects (`file://shoal-data/objects`, `s3://bucket/prefix`), so no
//! further namespace is added.

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};
use thiserror::Error;

use crate::metrics::observe;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("unsupported object storage URL {0:?} (expected file://PATH or s3://BUCKET[/PREFIX])")]
    UnsupportedUrl(String),
    #[error("object directory {path} is not usable: {source}")]
    LocalDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "object {object_id} already exists with {existing} bytes, expected {expected}; \
         object keys must never be reused"
    )]
    Conflict {
        object_id: String,
        existing: u64,
        expected: u64,
    },
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
}

impl StorageError {
    /// Whether the object is not there (deleted by the garbage collector after a merge, for a
    /// reader that still held an old index row).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StorageError::ObjectStore(object_store::Error::NotFound { .. })
        )
    }
}

/// A fresh object id. ULIDs are unique without coordination and sort by creation time,
/// which keeps object listings in write order.
pub fn new_object_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// Settings of an S3 (or S3-compatible) store. Unset values and credentials come from the
/// standard AWS environment (`AWS_REGION`, `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, ...).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible store (MinIO, R2, a test server).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
    /// Address buckets as `BUCKET.endpoint` rather than `endpoint/BUCKET`.
    pub virtual_hosted_style: bool,
    /// Static credentials instead of the environment's, for in-process test servers
    /// (tests of one process cannot each set their own environment).
    pub credentials: Option<S3Credentials>,
    /// Send a second copy of a PUT that is slower than nearly all recent ones (see
    /// [`PutHedge`]): cuts the tail of produce latency for about 5% more PUT requests.
    pub put_hedging: bool,
}

/// An access key pair.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Shoal's view of an object store: immutable objects addressed by id.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    put_mode: PutMode,
    hedge: Option<Arc<PutHedge>>,
}

/// Hedged PUTs. Object-store latency has a long tail (S3: p50 ~30 ms, p99 ~150 ms or
/// more), and a produce waits for its object's PUT, so the tail of PUT latency is the tail
/// of produce latency. A PUT still running after the 95th percentile of recent PUT latencies
/// gets a second, identical PUT of the same key; whichever lands first answers. PUTs are
/// create-only, so the key holds one object either way: the slower copy is refused as
/// already existing (or as a conflicting concurrent write) or is cancelled.
#[derive(Debug, Default)]
pub struct PutHedge {
    recent: parking_lot::Mutex<std::collections::VecDeque<Duration>>,
}

impl PutHedge {
    /// Latencies remembered.
    const WINDOW: usize = 200;
    /// Latencies needed before hedging starts.
    const MIN_SAMPLES: usize = 20;
    const QUANTILE: f64 = 0.95;
    /// Never hedge sooner than this, however fast the store has been.
    const FLOOR: Duration = Duration::from_millis(10);

    /// How long a PUT may run before it is hedged; `None` until enough PUTs were seen.
    fn delay(&self) -> Option<Duration> {
        let recent = self.recent.lock();
        if recent.len() < Self::MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<Duration> = recent.iter().copied().collect();
        sorted.sort_unstable();
        let at = ((sorted.len() as f64 * Self::QUANTILE) as usize).min(sorted.len() - 1);
        Some(sorted[at].max(Self::FLOOR))
    }

    fn record(&self, latency: Duration) {
        let mut recent = self.recent.lock();
        if recent.len() == Self::WINDOW {
            recent.pop_front();
        }
        recent.push_back(latency);
    }
}

impl ObjectStorage {
    /// Wraps any object store; `prefix` ("" for none) is prepended to every object key.
    /// PUTs are create-only, so a key can never be written twice.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: Path::from(prefix),
            put_mode: PutMode::Create,
            hedge: None,
        }
    }

    /// Opens the storage named by a URL with default S3 settings; see [`Self::open`].
    pub fn from_url(url: &str) -> Result<ObjectStorage, StorageError> {
        Self::open(url, &S3Options::default())
    }

    /// Opens the storage named by a URL: `file://PATH` or `s3://BUCKET[/PREFIX]`.
    pub fn open(url: &str, s3: &S3Options) -> Result<ObjectStorage, StorageError> {
        match url.strip_prefix("s3://") {
            Some(rest) => Self::open_s3(url, rest, s3),
            None => Self::open_local(url),
        }
    }

    /// Opens `s3://BUCKET[/PREFIX]` (`rest` is the part after `s3://`).
    ///
    /// Retries and timeouts are explicit so that 5xx answers (S3's `SlowDown`) and slow or
    /// stalled responses are retried a bounded number of times, then surface as a failed
    /// flush, which the producer sees as an error and retries; nothing is acknowledged
    /// before its PUT succeeded. object_store does not retry a PUT that timed out mid-way
    /// (it counts PUTs as non-idempotent); the producer's retry writes a fresh object.
    fn open_s3(url: &str, rest: &str, s3: &S3Options) -> Result<ObjectStorage, StorageError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageError::UnsupportedUrl(url.to_owned()));
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 5,
            retry_timeout: Duration::from_secs(20),
        };
        let client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30));
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_client_options(client);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &s3.region {
            builder = builder.with_region(region);
        }
        // `false` keeps what the environment says (AWS_ALLOW_HTTP, ...).
        if s3.allow_http {
            builder = builder.with_allow_http(true);
        }
        if s3.virtual_hosted_style {
            builder = builder.with_virtual_hosted_style_request(true);
        }
        if let Some(credentials) = &s3.credentials {
            builder = builder
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(&credentials.secret_access_key);
        }
        // Create-only PUTs are sent with `If-None-Match: *` (object_store's default
        // conditional-put mode), which S3 has honoured since 2024, so a retried PUT whose
        // response was lost is detected by `put` rather than silently overwriting.
        Ok(Self {
            hedge: s3.put_hedging.then(Default::default),
            ..Self::new(Arc::new(builder.build()?), prefix.trim_matches('/'))
        })
    }

    /// Opens `file://PATH`; PATH may be relative (`file://shoal-data/objects`) or absolute
    /// (`file:///var/lib/shoal`).
    ///
    /// The directory is created and probed with a write and a delete, so a bad directory
    /// fails at startup rather than on the first flush. Writes are fsynced: an object is
    /// acknowledged only once durable.
    fn open_local(url: &str) -> Result<ObjectStorage, StorageError> {
        let dir = url
            .strip_prefix("file://")
            .filter(|path| !path.is_empty())
            .ok_or_else(|| StorageError::UnsupportedUrl(url.to_owned()))?;
        let dir = FsPath::new(dir);
        probe_dir(dir).map_err(|source| StorageError::LocalDir {
            path: dir.to_owned(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)?.with_fsync(true);
        // A create-only PUT on a local directory writes a staging file, hard-links it and
        // unlinks the staging name; on ext4 every flush then pays for a scan past recently
        // deleted inodes (a third of the agent's CPU at 200 flushes a second). Writing the
        // staging file and renaming it into place is as atomic, and needs no create-only
        // check here: object ids are fresh ULIDs, and a local write has no lost response to
        // retry.
        Ok(Self {
            put_mode: PutMode::Overwrite,
            ..Self::new(Arc::new(store), "")
        })
    }

    fn path(&self, object_id: &str) -> Path {
        self.prefix.clone().join(object_id)
    }

    /// The path of `key`, whose `/`-separated parts become directories.
    fn file_path(&self, key: &str) -> Path {
        match self.prefix.as_ref() {
            "" => Path::from(key),
            prefix => Path::from(format!("{prefix}/{key}")),
        }
    }

    /// Writes an object without concatenating its parts, refusing to overwrite; a slow PUT
    /// is hedged (see [`PutHedge`]) when the storage was opened with `put_hedging`.
    pub async fn put(&self, object_id: &str, parts: Vec<Bytes>) -> Result<(), StorageError> {
        let Some(hedge) = &self.hedge else {
            return self.put_once(object_id, parts).await;
        };
        let timed = |parts| async move {
            let start = std::time::Instant::now();
            let result = self.put_once(object_id, parts).await;
            if result.is_ok() {
                hedge.record(start.elapsed());
            }
            result
        };
        let first = timed(parts.clone());
        tokio::pin!(first);
        if let Some(delay) = hedge.delay() {
            tokio::select! {
                result = &mut first => return result,
                _ = tokio::time::sleep(delay) => {}
            }
            tracing::debug!(object_id, ?delay, "PUT slower than usual; hedging");
            let second = timed(parts);
            tokio::pin!(second);
            // The first copy to land answers; a failed copy defers to the other.
            return tokio::select! {
                result = &mut first => match result {
                    Ok(()) => Ok(()),
                    Err(_) => second.await,
                },
                result = &mut second => match result {
                    Ok(()) => Ok(()),
                    Err(_) => first.await,
                },
            };
        }
        first.await
    }

    /// One PUT, create-only where the store supports it.
    ///
    /// A retried PUT whose first response was lost finds its own object already there: that
    /// is accepted when the stored size matches, since object ids are never reused.
    async fn put_once(&self, object_id: &str, parts: Vec<Bytes>) -> Result<(), StorageError> {
        let expected: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let path = self.path(object_id);
        let options = PutOptions::from(self.put_mode.clone());
        let put = self
            .store
            .put_opts(&path, PutPayload::from_iter(parts), options);
        match observe("put", put, |_| expected).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = observe("head", self.store.head(&path), |_| 0).await?.size;
                if existing != expected {
                    return Err(StorageError::Conflict {
                        object_id: object_id.to_owned(),
                        existing,
                        expected,
                    });
                }
                tracing::warn!(object_id, "object already stored by an earlier attempt");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a file that is not an object (a Parquet export) at `key` under the storage's
    /// prefix, replacing what is there: an export rewritten after a crash holds the same
    /// records, so the last copy may win.
    pub async fn put_file(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let options = PutOptions::from(PutMode::Overwrite);
        let size = data.len() as u64;
        let path = self.file_path(key);
        let put = self.store.put_opts(&path, PutPayload::from(data), options);
        observe("put", put, |_| size).await?;
        Ok(())
    }

    /// Reads a byte range of an object.
    pub async fn get_range(
        &self,
        object_id: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        let path = self.path(object_id);
        let get = self.store.get_range(&path, range);
        Ok(observe("get", get, |data| data.len() as u64).await?)
    }

    /// Reads a whole object.
    pub async fn get(&self, object_id: &str) -> Result<Bytes, StorageError> {
        let path = self.path(object_id);
        let get = async { self.store.get(&path).await?.bytes().await };
        Ok(observe("get", get, |data| data.len() as u64).await?)
    }

    /// Whether the object store answers: a HEAD of a key that is never written, which
    /// succeeds as "not found". Readiness probes use it.
    pub async fn check(&self) -> Result<(), StorageError> {
        let path = self.file_path(".shoal-readiness-probe");
        match observe("head", self.store.head(&path), |_| 0).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object. Deleting a missing object succeeds, so retried deletes are
    /// harmless (S3 behaves this way; the local store would report NotFound).
    pub async fn delete(&self, object_id: &str) -> Result<(), StorageError> {
        let path = self.path(object_id);
        match observe("delete", self.store.delete(&path), |_| 0).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Creates `dir` and checks that files can be written and removed in it.
fn probe_dir(dir: &FsPath) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".shoal-probe-{}", new_object_id()));
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"hello "),
            Bytes::from_static(b"object "),
            Bytes::from_static(b"store"),
        ]
    }

    fn open(dir: &tempfile::TempDir) -> ObjectStorage {
        ObjectStorage::from_url(&format!("file://{}/objects", dir.path().display())).unwrap()
    }

    #[tokio::test]
    async fn put_get_range_delete() {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(&dir);
        let id = new_object_id();
        storage.put(&id, parts()).await.unwrap();
        assert!(dir.path().join("objects").join(&id).is_file());
        assert_eq!(&storage.get(&id).await.unwrap()[..], b"hello object store");
        assert_eq!(&storage.get_range(&id, 6..12).await.unwrap()[..], b"object");
        storage.delete(&id).await.unwrap();
        storage.delete(&id).await.unwrap();
        assert!(matches!(
            storage.get(&id).await,
            Err(StorageError::ObjectStore(
                object_store::Error::NotFound { .. }
            ))
        ));
    }

    #[tokio::test]
    async fn retried_put_is_accepted_only_if_same_size() {
        // Create-only, as on S3.
        let dir = tempfile::tempdir().unwrap();
        let local = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let storage = ObjectStorage::new(Arc::new(local), "");
        let id = new_object_id();
        storage.put(&id, parts()).await.unwrap();
        storage.put(&id, parts()).await.unwrap();
        let err = storage
            .put(&id, vec![Bytes::from_static(b"other")])
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StorageError::Conflict {
                existing: 18,
                expected: 5,
                ..
            }
        ));
        assert_eq!(&storage.get(&id).await.unwrap()[..], b"hello object store");
    }

    #[test]
    fn relative_urls_and_bad_urls() {
        // A relative path, resolved against the working directory (the crate's directory).
        let dir = tempfile::tempdir_in(".").unwrap();
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        ObjectStorage::from_url(&format!("file://{name}/shoal-data/objects")).unwrap();
        assert!(dir.path().join("shoal-data/objects").is_dir());

        for url in ["s3://", "s3:///prefix", "file://", "shoal-data"] {
            assert!(matches!(
                ObjectStorage::from_url(url),
                Err(StorageError::UnsupportedUrl(_))
            ));
        }
    }

    #[test]
    fn unusable_directory_fails_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = ObjectStorage::from_url(&format!("file://{}", file.display())).unwrap_err();
        assert!(matches!(err, StorageError::LocalDir { .. }), "{err}");
    }

    #[test]
    fn hedging_waits_for_the_95th_percentile_of_recent_puts() {
        let hedge = PutHedge::default();
        for ms in 1..PutHedge::MIN_SAMPLES as u64 {
            hedge.record(Duration::from_millis(ms * 100));
        }
        assert_eq!(hedge.delay(), None, "too few PUTs seen to judge");
        let hedge = PutHedge::default();
        for ms in 1..=1000u64 {
            hedge.record(Duration::from_millis(ms));
        }
        // The window keeps the last 200 (801..=1000 ms); their 95th percentile is 991 ms.
        assert_eq!(hedge.delay(), Some(Duration::from_millis(991)));
        let fast = PutHedge::default();
        for _ in 0..100 {
            fast.record(Duration::from_micros(300));
        }
        assert_eq!(fast.delay(), Some(PutHedge::FLOOR));
    }

    #[test]
    fn s3_urls() {
        let options = S3Options {
            region: Some("us-east-1".into()),
            ..S3Options::default()
        };
        for (url, prefix) in [
            ("s3://bucket", ""),
            ("s3://bucket/", ""),
            ("s3://bucket/a/b/", "a/b"),
        ] {
            let storage = ObjectStorage::open(url, &options).unwrap();
            assert_eq!(storage.prefix.as_ref(), prefix, "{url}");
            assert!(matches!(storage.put_mode, PutMode::Create));
        }
    }

    #[tokio::test]
    async fn prefix_is_prepended() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let storage = ObjectStorage::new(Arc::new(local), "cluster/a");
        storage.put("x", parts()).await.unwrap();
        assert!(dir.path().join("cluster/a/x").is_file());
    }
}
