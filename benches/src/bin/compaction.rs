//! `shoal-compaction-bench`: what the compactor buys and costs. One in-process agent on the
//! embedded SQLite sequencer and the in-process S3 endpoint (with added latency) takes a
//! backlog in many small objects; a catch-up consumer on a cold agent reads it all before and
//! after one compactor pass. Reports catch-up throughput, object-store GETs per GiB read,
//! index rows per partition and objects, and the CPU seconds of ingest and of compaction.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use shoal_compactor::{Compactor, CompactorConfig};
use shoal_metadata::MetadataStore;
use shoal_storage::ObjectStorage;
use shoal_tests::{TestAgent, TestS3};

#[derive(Debug, Parser)]
#[command(
    name = "shoal-compaction-bench",
    about = "Catch-up reads before and after compaction"
)]
struct Args {
    /// Backlog to produce.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    backlog: u64,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Record value size.
    #[arg(long, default_value = "1KiB", value_parser = parse_bytes)]
    record: u64,
    /// The agent's flush size: small objects stand for an hour of 250 ms flushes.
    #[arg(long, default_value = "256KiB", value_parser = parse_bytes)]
    flush_bytes: u64,
    /// Latency added to every object-store request.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    s3_latency: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| e.to_string())
}

#[derive(Debug, Serialize)]
struct Read {
    phase: &'static str,
    index_rows_per_partition: f64,
    objects: usize,
    seconds: f64,
    mib_per_second: f64,
    gets: u64,
    gets_per_gib: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    backlog_mib: f64,
    ingest_cpu_seconds: f64,
    compaction_seconds: f64,
    compaction_cpu_seconds: f64,
    compaction_puts: u64,
    reads: Vec<Read>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shoal-compaction-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print_table(&report);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-compaction-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

const TOPIC: &str = "backlog";

async fn run(args: &Args) -> Result<Report> {
    let s3 = TestS3::start().await;
    s3.set_latency(args.s3_latency);
    let flush_bytes = args.flush_bytes;
    let mut agent = TestAgent::start_with(|cfg| {
        cfg.objects_url = s3.url("bench");
        cfg.s3 = s3.options();
        cfg.flush_bytes = flush_bytes;
        cfg.flush_interval = Duration::from_millis(250);
    })
    .await;
    let config = agent.config().clone();
    let store = shoal_metadata::open(&config.metadata_url).await?;
    store
        .create_topic(
            TOPIC,
            args.partitions,
            [("retention.ms".to_string(), "-1".to_string())].into(),
        )
        .await?;

    let cpu = cpu_seconds();
    produce(&agent.bootstrap(), args).await?;
    let ingest_cpu = cpu_seconds() - cpu;

    let mut reads = Vec::new();
    agent = agent.restart().await;
    reads.push(read(&agent, &s3, store.as_ref(), args, "before compaction").await?);

    let storage = Arc::new(ObjectStorage::open(&config.objects_url, &config.s3)?);
    let compactor = Compactor::new(
        store.clone(),
        storage,
        CompactorConfig {
            merge_min_age: Duration::ZERO,
            ..CompactorConfig::default()
        },
    );
    let (puts, _) = s3.puts();
    let (cpu, start) = (cpu_seconds(), Instant::now());
    // Level 0 into level 1, then level 1 into level 2 until nothing is left to merge.
    for _ in 0..4 {
        let report = compactor.run_once().await?;
        if report.failures > 0 {
            bail!("compactor pass failed: {report:?}");
        }
        if report.merges == 0 {
            break;
        }
    }
    let compaction_seconds = start.elapsed().as_secs_f64();
    let compaction_cpu = cpu_seconds() - cpu;
    let compaction_puts = s3.puts().0 - puts;

    agent = agent.restart().await;
    reads.push(read(&agent, &s3, store.as_ref(), args, "after compaction").await?);
    agent.stop().await;
    Ok(Report {
        backlog_mib: args.backlog as f64 / (1 << 20) as f64,
        ingest_cpu_seconds: ingest_cpu,
        compaction_seconds,
        compaction_cpu_seconds: compaction_cpu,
        compaction_puts,
        reads,
    })
}

async fn produce(bootstrap: &str, args: &Args) -> Result<()> {
    use futures::StreamExt;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "none")
        .set("queue.buffering.max.messages", "100000")
        .set("acks", "all")
        .create()?;
    let value = vec![b'x'; args.record as usize];
    let count = args.backlog / args.record;
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..count {
        let key = format!("key-{i}");
        loop {
            let record = FutureRecord::to(TOPIC)
                .partition((i % args.partitions as u64) as i32)
                .key(&key)
                .payload(&value);
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Wait for some deliveries before queueing more.
                    for _ in 0..1000 {
                        match pending.next().await {
                            Some(Ok(Ok(_))) => {}
                            Some(Ok(Err((e, _)))) => bail!("produce failed: {e}"),
                            Some(Err(_)) => bail!("delivery report lost"),
                            None => break,
                        }
                    }
                }
                Err((e, _)) => bail!("produce failed: {e}"),
            }
        }
    }
    while let Some(result) = pending.next().await {
        match result {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => bail!("produce failed: {e}"),
            Err(_) => bail!("delivery report lost"),
        }
    }
    Ok(())
}

async fn read(
    agent: &TestAgent,
    s3: &TestS3,
    store: &dyn MetadataStore,
    args: &Args,
    phase: &'static str,
) -> Result<Read> {
    let topic = store.topic(TOPIC).await?.context("topic")?;
    let mut rows = 0;
    let mut objects = std::collections::BTreeSet::new();
    let mut ends = Vec::new();
    for p in 0..args.partitions {
        let entries = store.batches(topic.id, p, 0, u64::MAX).await?;
        rows += entries.len();
        ends.push(entries.last().map_or(0, |e| e.last_offset + 1));
        objects.extend(entries.into_iter().map(|e| e.object_id));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", agent.bootstrap())
        .set("group.id", "shoal-compaction-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.wait.max.ms", "500")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..args.partitions {
        assignment.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let gets = s3.gets();
    let want: i64 = ends.iter().sum();
    let (start, mut got, mut bytes) = (Instant::now(), 0i64, 0u64);
    let (consumer, _, bytes) =
        tokio::task::spawn_blocking(move || -> Result<(BaseConsumer, i64, u64)> {
            while got < want {
                if start.elapsed() > Duration::from_secs(600) {
                    bail!("read {got} of {want} records in 10 minutes");
                }
                match consumer.poll(Duration::from_millis(500)) {
                    Some(Ok(m)) => {
                        use rdkafka::Message;
                        got += 1;
                        bytes += m.payload().map_or(0, <[u8]>::len) as u64;
                    }
                    Some(Err(e)) => bail!("consume failed: {e}"),
                    None => {}
                }
            }
            Ok((consumer, got, bytes))
        })
        .await??;
    let seconds = start.elapsed().as_secs_f64();
    drop(consumer);
    let gets = s3.gets() - gets;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    Ok(Read {
        phase,
        index_rows_per_partition: rows as f64 / args.partitions as f64,
        objects: objects.len(),
        seconds,
        mib_per_second: bytes as f64 / (1 << 20) as f64 / seconds,
        gets,
        gets_per_gib: gets as f64 / gib.max(f64::MIN_POSITIVE),
    })
}

fn print_table(report: &Report) {
    println!(
        "backlog {:.0} MiB; ingest CPU {:.1} s (agent and producer); compaction {:.1} s, CPU {:.1} s, {} PUTs",
        report.backlog_mib,
        report.ingest_cpu_seconds,
        report.compaction_seconds,
        report.compaction_cpu_seconds,
        report.compaction_puts
    );
    println!(
        "{:<18} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "phase", "rows/part", "objects", "seconds", "MiB/s", "GETs", "GETs/GiB"
    );
    for r in &report.reads {
        println!(
            "{:<18} {:>10.1} {:>8} {:>8.1} {:>8.1} {:>8} {:>9.0}",
            r.phase,
            r.index_rows_per_partition,
            r.objects,
            r.seconds,
            r.mib_per_second,
            r.gets,
            r.gets_per_gib
        );
    }
}
