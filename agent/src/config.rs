//! The agent's configuration: flags with environment fallbacks, parsed once at start.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use shoal_compactor::CompactorConfig;
use shoal_storage::S3Options;

/// Default flush interval on object stores, where each PUT costs tens of milliseconds.
pub const DEFAULT_FLUSH_INTERVAL_OBJECT_STORE: Duration = Duration::from_millis(250);
/// Default flush interval for a local directory, where a write costs little and a laptop user
/// expects low latency.
pub const DEFAULT_FLUSH_INTERVAL_LOCAL: Duration = Duration::from_millis(5);

/// Default period of the compactor inside a single-node agent.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(30);

/// `shoal agent` flags.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Kafka listener address (in a container: 0.0.0.0:9092).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:9092")]
    pub listen: SocketAddr,

    /// HOST:PORT that Metadata tells clients to connect to (default: the listen address).
    #[arg(long, env = "SHOAL_ADVERTISE")]
    pub advertise: Option<String>,

    /// Operations HTTP listener serving /metrics and /healthz (in a container:
    /// 0.0.0.0:9093); `off` or an empty value turns it off.
    #[arg(long, env = "SHOAL_HTTP", value_name = "ADDR", default_value = "127.0.0.1:9093",
          value_parser = parse_http)]
    pub http: HttpListen,

    #[command(flatten)]
    pub storage: StorageArgs,

    /// Availability zone of this agent.
    #[arg(long, env = "SHOAL_ZONE")]
    pub zone: Option<String>,

    /// Longest time a produced batch waits before its object is flushed (e.g. 250ms).
    /// Default: 5ms for a local directory, 250ms for object stores.
    #[arg(long, env = "SHOAL_FLUSH_INTERVAL", value_parser = humantime::parse_duration)]
    pub flush_interval: Option<Duration>,

    /// Object size that triggers a flush at once (e.g. 4MiB).
    #[arg(long, env = "SHOAL_FLUSH_BYTES", default_value = "4MiB", value_parser = parse_bytes)]
    pub flush_bytes: u64,

    /// Create unknown topics on Metadata requests that ask for it, as Kafka's
    /// auto.create.topics.enable.
    #[arg(long, env = "SHOAL_AUTO_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_create_topics: bool,

    /// Partition count of auto-created topics and of CreateTopics without one (num.partitions).
    #[arg(long, env = "SHOAL_NUM_PARTITIONS", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..=100_000))]
    pub num_partitions: i32,

    /// Largest request frame accepted (socket.request.max.bytes); larger frames close the
    /// connection.
    #[arg(long, env = "SHOAL_MAX_REQUEST_BYTES", default_value = "100MiB", value_parser = parse_bytes)]
    pub max_request_bytes: u64,

    /// How long the first rebalance of an empty consumer group waits for more members
    /// (group.initial.rebalance.delay.ms).
    #[arg(long, env = "SHOAL_GROUP_INITIAL_REBALANCE_DELAY", default_value = "3s",
          value_parser = humantime::parse_duration)]
    pub group_initial_rebalance_delay: Duration,

    /// Shortest session timeout a consumer may ask for (group.min.session.timeout.ms).
    #[arg(long, env = "SHOAL_GROUP_MIN_SESSION_TIMEOUT", default_value = "6s",
          value_parser = humantime::parse_duration)]
    pub group_min_session_timeout: Duration,

    /// Memory for recently written and read chunks.
    #[arg(long, env = "SHOAL_CACHE_BYTES", default_value = "128MiB", value_parser = parse_bytes)]
    pub cache_bytes: u64,

    /// Longest a stopping agent (SIGTERM) drains: half to move clients to other agents, half
    /// to answer in-flight requests; then it flushes and exits. Keep Kubernetes'
    /// terminationGracePeriodSeconds above the preStop delay plus this plus a few seconds.
    #[arg(long, env = "SHOAL_DRAIN_TIMEOUT", default_value = "20s",
          value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Run the compactor inside this agent every DURATION (e.g. 30s), or `off`. Default: every
    /// 30s on the embedded SQLite + local directory, off otherwise (a fleet runs
    /// `shoal compactor`).
    #[arg(long, env = "SHOAL_COMPACTION_INTERVAL", value_name = "DURATION|off",
          value_parser = parse_interval)]
    pub compaction_interval: Option<Interval>,
}

/// Where the sequencer and the objects are: the flags every subcommand that touches them
/// shares.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Metadata sequencer URL: sqlite://PATH (created if missing) or
    /// postgres://USER@HOST:PORT/DB (migrated on start).
    #[arg(
        long,
        env = "SHOAL_METADATA",
        default_value = "sqlite://shoal-data/metadata.db"
    )]
    pub metadata: String,

    /// Object storage URL: file://DIRECTORY (created if missing) or s3://BUCKET[/PREFIX]
    /// (credentials from the standard AWS environment).
    #[arg(
        long,
        env = "SHOAL_OBJECTS",
        default_value = "file://shoal-data/objects"
    )]
    pub objects: String,

    /// Endpoint URL of an S3-compatible store (default: AWS, or AWS_ENDPOINT).
    #[arg(long, env = "SHOAL_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region (default: AWS_REGION or AWS_DEFAULT_REGION, else us-east-1).
    #[arg(long, env = "SHOAL_S3_REGION")]
    pub s3_region: Option<String>,

    /// Allow an http:// S3 endpoint.
    #[arg(long, env = "SHOAL_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,

    /// Address S3 buckets as BUCKET.ENDPOINT instead of ENDPOINT/BUCKET.
    #[arg(long, env = "SHOAL_S3_VIRTUAL_HOSTED_STYLE")]
    pub s3_virtual_hosted_style: bool,

    /// Send a second copy of a PUT slower than 95% of recent ones, so the object store's
    /// latency tail does not become the producers' (about 5% more PUT requests).
    #[arg(long, env = "SHOAL_S3_PUT_HEDGING", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_put_hedging: bool,
}

impl StorageArgs {
    /// The embedded default: everything under `dir`.
    pub fn local(dir: &std::path::Path) -> Self {
        StorageArgs {
            metadata: format!("sqlite://{}/metadata.db", dir.display()),
            objects: format!("file://{}/objects", dir.display()),
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: false,
            s3_virtual_hosted_style: false,
            s3_put_hedging: true,
        }
    }

    /// Settings for `s3://` object URLs.
    pub fn s3_options(&self) -> S3Options {
        S3Options {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            allow_http: self.s3_allow_http,
            virtual_hosted_style: self.s3_virtual_hosted_style,
            credentials: None,
            put_hedging: self.s3_put_hedging,
        }
    }

    /// The embedded single-node default: SQLite and a local directory.
    pub fn is_embedded(&self) -> bool {
        self.metadata.starts_with("sqlite:") && self.objects.starts_with("file:")
    }
}

/// `shoal compactor` flags.
#[derive(Debug, Clone, Args)]
pub struct CompactorArgs {
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Time between passes.
    #[arg(long, env = "SHOAL_COMPACTOR_INTERVAL", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub interval: Duration,

    /// Run one full pass, then exit (for cron jobs and tests).
    #[arg(long)]
    pub once: bool,

    /// Operations HTTP listener serving /metrics, /healthz and /readyz (in a container:
    /// 0.0.0.0:9094); `off` or an empty value turns it off. Not opened with --once.
    #[arg(long, env = "SHOAL_COMPACTOR_HTTP", value_name = "ADDR", default_value = "127.0.0.1:9094",
          value_parser = parse_http)]
    pub http: HttpListen,

    /// Size merged objects aim for; objects of half of it or more are left alone.
    #[arg(long, env = "SHOAL_MERGE_TARGET_BYTES", default_value = "32MiB", value_parser = parse_bytes)]
    pub merge_target_bytes: u64,

    /// Largest batch index row a merge writes (a fetch reads whole rows).
    #[arg(long, env = "SHOAL_MERGE_ROW_BYTES", default_value = "4MiB", value_parser = parse_bytes)]
    pub merge_row_bytes: u64,

    /// Objects younger than this are not merged yet.
    #[arg(long, env = "SHOAL_MERGE_MIN_AGE", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub merge_min_age: Duration,

    /// How long an object nothing refers to (or an upload never committed) is kept before it
    /// is deleted; longer than any read.
    #[arg(long, env = "SHOAL_GC_GRACE", default_value = "10m",
          value_parser = humantime::parse_duration)]
    pub gc_grace: Duration,

    /// Retention of topics that do not set retention.ms (Kafka's log.retention.ms; -1: forever).
    #[arg(long, env = "SHOAL_LOG_RETENTION_MS", default_value_t = 604_800_000,
          allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub log_retention_ms: i64,

    /// Size limit of partitions of topics that do not set retention.bytes (-1: none).
    #[arg(long, env = "SHOAL_LOG_RETENTION_BYTES", default_value_t = -1,
          allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-1..))]
    pub log_retention_bytes: i64,

    /// Where Parquet exports are written, under the object storage URL.
    #[arg(long, env = "SHOAL_EXPORT_PREFIX", default_value = "exports")]
    pub export_prefix: String,

    /// A partition's pending records are exported once they reach this size...
    #[arg(long, env = "SHOAL_EXPORT_MIN_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub export_min_bytes: u64,

    /// ...or once the oldest of them waited this long.
    #[arg(long, env = "SHOAL_EXPORT_MAX_WAIT", default_value = "1h",
          value_parser = humantime::parse_duration)]
    pub export_max_wait: Duration,
}

impl CompactorArgs {
    pub fn config(&self) -> CompactorConfig {
        CompactorConfig {
            interval: self.interval,
            merge_target_bytes: self.merge_target_bytes.max(1),
            merge_row_bytes: self.merge_row_bytes.max(1),
            merge_min_age: self.merge_min_age,
            gc_grace: self.gc_grace,
            default_retention_ms: self.log_retention_ms,
            default_retention_bytes: self.log_retention_bytes,
            export_prefix: self.export_prefix.trim_matches('/').to_string(),
            export_min_bytes: self.export_min_bytes,
            export_max_wait: self.export_max_wait,
            ..CompactorConfig::default()
        }
    }
}

/// A period, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Option<Duration>);

fn parse_interval(s: &str) -> Result<Interval, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(Interval(None));
    }
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Interval(Some(d))),
        Ok(_) => Err("an interval must be longer than zero (or `off`)".to_string()),
        Err(e) => Err(format!("`{s}` is not a duration like 30s or `off`: {e}")),
    }
}

/// The `--http` value: an address, or `None` when the listener is turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpListen(pub Option<SocketAddr>);

fn parse_http(s: &str) -> Result<HttpListen, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(HttpListen(None));
    }
    s.parse()
        .map(|addr| HttpListen(Some(addr)))
        .map_err(|e| format!("`{s}` is not an address like 127.0.0.1:9093 or `off`: {e}"))
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("`{s}` is not a size like 4MiB: {e}"))
}

/// The configuration an agent runs with, resolved from [`AgentArgs`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    /// Where the operations HTTP listener binds; `None` opens no HTTP port.
    pub http: Option<SocketAddr>,
    pub metadata_url: String,
    pub objects_url: String,
    /// Settings for `s3://` object URLs.
    pub s3: S3Options,
    pub zone: Option<String>,
    pub flush_interval: Duration,
    pub flush_bytes: u64,
    pub auto_create_topics: bool,
    pub num_partitions: i32,
    pub max_request_bytes: u64,
    pub cache_bytes: u64,
    pub group_initial_rebalance_delay: Duration,
    pub group_min_session_timeout: Duration,
    /// How often the compactor runs inside this agent; `None`: not here.
    pub compaction_interval: Option<Duration>,
    /// Longest a stop drains (see [`AgentArgs::drain_timeout`]).
    pub drain_timeout: Duration,
}

impl AgentConfig {
    /// A single-node configuration storing everything under `dir`, listening on `listen`,
    /// without the HTTP listener (several such agents share a host in tests).
    pub fn local(dir: &std::path::Path, listen: SocketAddr) -> Self {
        AgentArgs {
            listen,
            advertise: None,
            http: HttpListen(None),
            storage: StorageArgs::local(dir),
            zone: None,
            flush_interval: None,
            flush_bytes: 4 << 20,
            auto_create_topics: true,
            num_partitions: 1,
            max_request_bytes: 100 << 20,
            cache_bytes: 128 << 20,
            group_initial_rebalance_delay: Duration::from_secs(3),
            group_min_session_timeout: Duration::from_secs(6),
            compaction_interval: Some(Interval(None)),
            drain_timeout: Duration::from_secs(20),
        }
        .into()
    }
}

impl From<AgentArgs> for AgentConfig {
    fn from(args: AgentArgs) -> Self {
        let flush_interval =
            args.flush_interval
                .unwrap_or(if args.storage.objects.starts_with("file:") {
                    DEFAULT_FLUSH_INTERVAL_LOCAL
                } else {
                    DEFAULT_FLUSH_INTERVAL_OBJECT_STORE
                });
        AgentConfig {
            listen: args.listen,
            advertise: args.advertise,
            http: args.http.0,
            compaction_interval: match args.compaction_interval {
                Some(Interval(interval)) => interval,
                None if args.storage.is_embedded() => Some(DEFAULT_COMPACTION_INTERVAL),
                None => None,
            },
            s3: args.storage.s3_options(),
            metadata_url: args.storage.metadata,
            objects_url: args.storage.objects,
            zone: args.zone,
            flush_interval,
            flush_bytes: args.flush_bytes.max(1),
            auto_create_topics: args.auto_create_topics,
            num_partitions: args.num_partitions,
            max_request_bytes: args.max_request_bytes,
            cache_bytes: args.cache_bytes,
            group_initial_rebalance_delay: args.group_initial_rebalance_delay,
            group_min_session_timeout: args.group_min_session_timeout,
            drain_timeout: args.drain_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    fn http(args: &[&str]) -> Result<Option<SocketAddr>, clap::Error> {
        let args = std::iter::once("shoal").chain(args.iter().copied());
        Cli::try_parse_from(args).map(|cli| AgentConfig::from(cli.agent).http)
    }

    #[test]
    fn http_takes_an_address_or_off() {
        assert_eq!(
            http(&["--http", "0.0.0.0:9093"]).ok(),
            Some("0.0.0.0:9093".parse().ok())
        );
        assert_eq!(http(&["--http", "off"]).ok(), Some(None));
        assert_eq!(http(&["--http", ""]).ok(), Some(None));
        assert!(http(&["--http", "localhost"]).is_err());
        if std::env::var_os("SHOAL_HTTP").is_none() {
            assert_eq!(http(&[]).ok(), Some("127.0.0.1:9093".parse().ok()));
        }
    }
}
