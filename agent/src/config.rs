//! The agent's configuration: flags with environment fallbacks, parsed once at start.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use shoal_storage::S3Options;

/// Default flush interval on object stores, where each PUT costs tens of milliseconds.
pub const DEFAULT_FLUSH_INTERVAL_OBJECT_STORE: Duration = Duration::from_millis(250);
/// Default flush interval for a local directory, where a write costs little and a laptop user
/// expects low latency.
pub const DEFAULT_FLUSH_INTERVAL_LOCAL: Duration = Duration::from_millis(5);

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
}

impl AgentConfig {
    /// A single-node configuration storing everything under `dir`, listening on `listen`,
    /// without the HTTP listener (several such agents share a host in tests).
    pub fn local(dir: &std::path::Path, listen: SocketAddr) -> Self {
        AgentArgs {
            listen,
            advertise: None,
            http: HttpListen(None),
            metadata: format!("sqlite://{}/metadata.db", dir.display()),
            objects: format!("file://{}/objects", dir.display()),
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: false,
            s3_virtual_hosted_style: false,
            s3_put_hedging: true,
            zone: None,
            flush_interval: None,
            flush_bytes: 4 << 20,
            auto_create_topics: true,
            num_partitions: 1,
            max_request_bytes: 100 << 20,
            cache_bytes: 128 << 20,
            group_initial_rebalance_delay: Duration::from_secs(3),
            group_min_session_timeout: Duration::from_secs(6),
        }
        .into()
    }
}

impl From<AgentArgs> for AgentConfig {
    fn from(args: AgentArgs) -> Self {
        let flush_interval = args
            .flush_interval
            .unwrap_or(if args.objects.starts_with("file:") {
                DEFAULT_FLUSH_INTERVAL_LOCAL
            } else {
                DEFAULT_FLUSH_INTERVAL_OBJECT_STORE
            });
        AgentConfig {
            listen: args.listen,
            advertise: args.advertise,
            http: args.http.0,
            metadata_url: args.metadata,
            objects_url: args.objects,
            s3: S3Options {
                endpoint: args.s3_endpoint,
                region: args.s3_region,
                allow_http: args.s3_allow_http,
                virtual_hosted_style: args.s3_virtual_hosted_style,
                credentials: None,
                put_hedging: args.s3_put_hedging,
            },
            zone: args.zone,
            flush_interval,
            flush_bytes: args.flush_bytes.max(1),
            auto_create_topics: args.auto_create_topics,
            num_partitions: args.num_partitions,
            max_request_bytes: args.max_request_bytes,
            cache_bytes: args.cache_bytes,
            group_initial_rebalance_delay: args.group_initial_rebalance_delay,
            group_min_session_timeout: args.group_min_session_timeout,
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
