//! Command-line flags and the librdkafka settings they imply.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use rdkafka::ClientConfig;

/// Drives a Kafka-compatible broker with librdkafka producers and consumers and prints
/// throughput, latency percentiles and (with --agent-pid) the broker's CPU and memory cost.
#[derive(Debug, Parser)]
#[command(name = "shoal-load", version)]
pub struct Args {
    /// Broker address(es), comma-separated, as librdkafka's bootstrap.servers.
    #[arg(long, env = "SHOAL_LOAD_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,

    /// Broker address(es) the consumers bootstrap from (default: --bootstrap), e.g. an agent
    /// of another zone.
    #[arg(long)]
    pub consumer_bootstrap: Option<String>,

    /// client.id of the producers, e.g. `shoal_az=zone-a` to stay in one zone.
    #[arg(long)]
    pub client_id: Option<String>,

    /// client.id of the consumers.
    #[arg(long)]
    pub consumer_client_id: Option<String>,

    /// Topic to write and read; created if missing.
    #[arg(long, default_value = "shoal-load")]
    pub topic: String,

    /// Partition count used when the topic has to be created.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// Payload size of each record in bytes (at least 8: the send time is embedded).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(8..=16 << 20))]
    pub record_size: u64,

    /// Stop producing after this many records (combined with --duration, whichever comes first).
    #[arg(long)]
    pub records: Option<u64>,

    /// Stop producing after this long, e.g. 30s or 5m (default 30s unless only --records is given).
    #[arg(long)]
    pub duration: Option<humantime::Duration>,

    /// Target records per second across all producers; 0 sends as fast as the client accepts.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,

    /// Compression codec set on the producers.
    #[arg(long, value_enum, default_value_t = Compression::Lz4)]
    pub compression: Compression,

    /// Producer settings: `tuned` (large batches, long linger, acks=all) or librdkafka `default`s.
    #[arg(long, value_enum, default_value_t = Profile::Tuned)]
    pub profile: Profile,

    /// Producer linger.ms; the tuned profile uses 50 when unset, the default profile librdkafka's 5.
    #[arg(long)]
    pub linger_ms: Option<u64>,

    /// Producer acks (0, 1 or all); the tuned profile uses all when unset.
    #[arg(long, value_parser = ["0", "1", "all", "-1"])]
    pub acks: Option<String>,

    /// Number of producers, each its own client and thread; --rate and --records are split evenly.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub producers: u64,

    /// Consumers reading the topic, consumer i of N assigned partitions p % N == i (no
    /// consumer group); 0 only produces.
    #[arg(long, default_value_t = 1)]
    pub consumers: u64,

    /// Consumers start at each partition's beginning instead of its end when the run starts.
    #[arg(long)]
    pub from_beginning: bool,

    /// How long to wait for outstanding deliveries and for consumers to catch up at the end.
    #[arg(long, default_value = "60s")]
    pub drain_timeout: humantime::Duration,

    /// PID of the broker process on this machine, to report its CPU time and peak RSS.
    #[arg(long)]
    pub agent_pid: Option<u32>,

    /// Print the report as one JSON object instead of one metric per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Profile {
    /// Settings diskless peers publish: batches of 1 MiB, linger 50 ms, acks=all.
    Tuned,
    /// Only bootstrap.servers and compression.type: what most clients run with.
    Default,
}

impl Args {
    /// The production time limit: --duration, else none if --records bounds the run, else 30s.
    pub fn time_limit(&self) -> Option<Duration> {
        match (self.duration, self.records) {
            (Some(d), _) => Some(d.into()),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(30)),
        }
    }

    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("compression.type", self.compression.as_str());
        if let Profile::Tuned = self.profile {
            config
                .set("linger.ms", "50")
                .set("batch.size", (1 << 20).to_string())
                .set("batch.num.messages", "10000")
                // One request may then carry a full batch for every partition of a broker.
                .set("message.max.bytes", (16 << 20).to_string())
                // Bounded at 256 MiB so memory stays bounded; the message-count limit would
                // otherwise bind first (100k records).
                .set("queue.buffering.max.kbytes", (256 << 10).to_string())
                .set("queue.buffering.max.messages", "1000000")
                .set("acks", "all");
        }
        if let Some(linger) = self.linger_ms {
            config.set("linger.ms", linger.to_string());
        }
        if let Some(acks) = &self.acks {
            config.set("acks", acks);
        }
        if let Some(client_id) = &self.client_id {
            config.set("client.id", client_id);
        }
        config
    }

    /// Consumer settings diskless peers publish: large fetches and a long fetch wait.
    /// Partitions are assigned by hand from explicit offsets and nothing is committed, so no
    /// group is joined; librdkafka still refuses assign() without a group.id, hence a label.
    pub fn consumer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set(
                "bootstrap.servers",
                self.consumer_bootstrap.as_ref().unwrap_or(&self.bootstrap),
            )
            .set("group.id", "shoal-load")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.max.bytes", (50 << 20).to_string())
            .set("max.partition.fetch.bytes", (8 << 20).to_string())
            .set("fetch.wait.max.ms", "500");
        if let Some(client_id) = &self.consumer_client_id {
            config.set("client.id", client_id);
        }
        config
    }
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Tuned => "tuned",
            Profile::Default => "default",
        }
    }
}
