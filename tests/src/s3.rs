//! An in-process S3 endpoint for tests of `s3://` object storage: `s3s-fs` (objects as files
//! in a temporary directory) served over hyper on loopback, with fault hooks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::dto::{
    DeleteObjectsInput, DeleteObjectsOutput, GetObjectInput, GetObjectOutput, HeadObjectInput,
    HeadObjectOutput, PutObjectInput, PutObjectOutput,
};
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use shoal_storage::{S3Credentials, S3Options};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The one bucket the endpoint serves.
const BUCKET: &str = "shoal-test";
const ACCESS_KEY: &str = "shoal-test-key";
const SECRET_KEY: &str = "shoal-test-secret";

/// A running test endpoint; stops when dropped. Requests must be signed with its fixed
/// credentials, which [`TestS3::options`] hands to the agent through
/// [`S3Options::credentials`] (each test has its own endpoint, so the process environment
/// cannot carry them).
pub struct TestS3 {
    addr: SocketAddr,
    faults: Arc<Faults>,
    server: JoinHandle<()>,
    dir: tempfile::TempDir,
}

#[derive(Default)]
struct Faults {
    latency_ms: AtomicU64,
    /// Median and 99th percentile of PUT latency in µs (0: none), drawn log-normally.
    put_p50_us: AtomicU64,
    put_p99_us: AtomicU64,
    /// State of the generator the PUT latencies are drawn from.
    rng: AtomicU64,
    puts: AtomicU64,
    put_bytes: AtomicU64,
    gets: AtomicU64,
    put_ack_delay_ms: AtomicU64,
    fail_puts: AtomicBool,
    failed_puts: AtomicU64,
}

impl TestS3 {
    /// Starts an endpoint with an empty bucket on a free loopback port.
    pub async fn start() -> TestS3 {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(dir.path().join(BUCKET)).expect("bucket directory");
        let faults = Arc::new(Faults::default());
        let fs = FileSystem::new(dir.path()).expect("s3s-fs root");
        let mut builder = S3ServiceBuilder::new(FaultyFs {
            fs,
            faults: faults.clone(),
        });
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(conn);
            }
        });
        TestS3 {
            addr,
            faults,
            server,
            dir,
        }
    }

    /// `--objects` URL for objects under `prefix` in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// Settings that reach this endpoint.
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(format!("http://{}", self.addr)),
            region: Some("us-east-1".into()),
            allow_http: true,
            virtual_hosted_style: false,
            put_hedging: false,
            credentials: Some(S3Credentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
            }),
        }
    }

    /// `shoal agent` flags that store objects under `prefix` on this endpoint.
    pub fn agent_args(&self, prefix: &str) -> Vec<String> {
        [
            "--objects".to_string(),
            self.url(prefix),
            "--s3-endpoint".to_string(),
            format!("http://{}", self.addr),
            "--s3-region".to_string(),
            "us-east-1".to_string(),
            "--s3-allow-http".to_string(),
        ]
        .into()
    }

    /// The credentials an agent process signs its requests with, as AWS environment variables.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// Where objects under `prefix` are stored as files.
    pub fn dir(&self, prefix: &str) -> PathBuf {
        self.dir.path().join(BUCKET).join(prefix)
    }

    /// Delays every request by `latency` before serving it.
    pub fn set_latency(&self, latency: Duration) {
        let ms = latency.as_millis().try_into().unwrap_or(u64::MAX);
        self.faults.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Delays each PUT by a log-normal draw with median `p50` and 99th percentile `p99`, the
    /// shape object-store latencies have (a steady body and a long tail).
    pub fn set_put_latency(&self, p50: Duration, p99: Duration) {
        let us = |d: Duration| d.as_micros().try_into().unwrap_or(u64::MAX);
        self.faults.put_p50_us.store(us(p50), Ordering::Relaxed);
        self.faults
            .put_p99_us
            .store(us(p99.max(p50)), Ordering::Relaxed);
    }

    /// PUT requests served (refused ones included) and bytes they carried.
    pub fn puts(&self) -> (u64, u64) {
        (
            self.faults.puts.load(Ordering::Relaxed),
            self.faults.put_bytes.load(Ordering::Relaxed),
        )
    }

    /// GET requests served.
    pub fn gets(&self) -> u64 {
        self.faults.gets.load(Ordering::Relaxed)
    }

    /// Stores each PUT's object at once but answers only after `delay`: a writer that dies
    /// meanwhile leaves an object it never learned was stored.
    pub fn delay_put_answers(&self, delay: Duration) {
        let ms = delay.as_millis().try_into().unwrap_or(u64::MAX);
        self.faults.put_ack_delay_ms.store(ms, Ordering::Relaxed);
    }

    /// While on, every PUT fails with 503 Service Unavailable and stores nothing.
    pub fn fail_puts(&self, on: bool) {
        self.faults.fail_puts.store(on, Ordering::SeqCst);
    }

    /// PUTs refused so far.
    pub fn failed_puts(&self) -> u64 {
        self.faults.failed_puts.load(Ordering::SeqCst)
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// `s3s_fs::FileSystem` behind the fault hooks; only the operations object_store's
/// put/get/head/delete use are served.
struct FaultyFs {
    fs: FileSystem,
    faults: Arc<Faults>,
}

impl FaultyFs {
    async fn delay(&self) {
        let ms = self.faults.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// One draw of the PUT latency distribution.
    fn put_latency(&self) -> Duration {
        let p50 = self.faults.put_p50_us.load(Ordering::Relaxed) as f64;
        let p99 = self.faults.put_p99_us.load(Ordering::Relaxed) as f64;
        if p50 <= 0.0 {
            return Duration::ZERO;
        }
        // ln(latency) is normal with mean ln(p50); z(0.99) = 2.326 fixes the spread.
        let sigma = (p99 / p50).ln() / 2.326;
        let (u1, u2) = (self.uniform(), self.uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Duration::from_micros((p50 * (sigma * z).exp()) as u64)
    }

    /// A uniform draw in (0, 1] from a shared SplitMix64 sequence.
    fn uniform(&self) -> f64 {
        let mut z = self
            .faults
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

#[async_trait::async_trait]
impl S3 for FaultyFs {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.faults.puts.fetch_add(1, Ordering::Relaxed);
        let size = req.input.content_length.unwrap_or_default().max(0) as u64;
        self.faults.put_bytes.fetch_add(size, Ordering::Relaxed);
        self.delay().await;
        tokio::time::sleep(self.put_latency()).await;
        if self.faults.fail_puts.load(Ordering::SeqCst) {
            self.faults.failed_puts.fetch_add(1, Ordering::SeqCst);
            return Err(s3_error!(ServiceUnavailable, "test endpoint refuses PUTs"));
        }
        let stored = self.fs.put_object(req).await;
        let ack_delay = self.faults.put_ack_delay_ms.load(Ordering::Relaxed);
        if ack_delay > 0 {
            tokio::time::sleep(Duration::from_millis(ack_delay)).await;
        }
        stored
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.faults.gets.fetch_add(1, Ordering::Relaxed);
        self.delay().await;
        self.fs.get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.delay().await;
        self.fs.head_object(req).await
    }

    /// object_store deletes through the bulk API, even one object at a time.
    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.delay().await;
        self.fs.delete_objects(req).await
    }
}
