//! `shoal-load`: a load generator for Kafka-compatible brokers, driven through librdkafka as
//! real clients (e.g. Vector) are, reporting throughput, latency and the broker's cost.

mod cli;
mod consume;
mod proc_stats;
mod produce;
mod report;
mod topic;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, ScopedJoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use clap::Parser;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use cli::Args;
use consume::{ConsumeStats, Reader};
use proc_stats::AgentSampler;
use produce::{ProduceStats, Workload};
use report::{Percentiles, Report};

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let printed = run(&args).and_then(|report| report.print(args.json, &mut std::io::stdout()));
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        // One line with the causes, without the backtrace RUST_BACKTRACE would add.
        Err(err) => {
            eprintln!("shoal-load: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<Report> {
    let partitions = topic::ensure(&args.bootstrap, &args.topic, args.partitions)?;
    info!(topic = %args.topic, partitions, bootstrap = %args.bootstrap, "topic ready");
    let readers = if args.consumers > 0 {
        readers(args, partitions)?
    } else {
        Vec::new()
    };

    let produce_stats = Arc::new(ProduceStats::new(partitions));
    let consume_stats = ConsumeStats::new(partitions);
    // Unix nanos when producing starts; until then no consumed record counts for latency.
    let since = AtomicU64::new(u64::MAX);
    let stop = AtomicBool::new(false);
    let mut report = Report {
        topic: args.topic.clone(),
        profile: args.profile.as_str(),
        compression: args.compression.as_str(),
        record_size: args.record_size,
        producers: args.producers,
        consumers: args.consumers,
        ..Report::default()
    };

    thread::scope(|scope| {
        let consumers: Vec<ScopedJoinHandle<Result<()>>> = readers
            .into_iter()
            .map(|reader| {
                let (since, stats, stop) = (&since, &consume_stats, &stop);
                scope.spawn(move || reader.run(since, stats, stop))
            })
            .collect();
        let produced = drive(
            args,
            !consumers.is_empty(),
            &produce_stats,
            &consume_stats,
            &since,
            &mut report,
        );
        stop.store(true, Ordering::Relaxed);
        for consumer in consumers {
            consumer
                .join()
                .map_err(|_| anyhow!("consumer thread panicked"))??;
        }
        produced
    })?;

    if args.consumers > 0 {
        report.records_consumed = Some(consume_stats.consumed());
        let e2e = Percentiles::of(&consume_stats.latency_us());
        (report.e2e_p50_ms, report.e2e_p99_ms, report.e2e_p999_ms) = (e2e.p50, e2e.p99, e2e.p999);
    }
    Ok(report)
}

/// Creates the consumers, each assigned its share of the partitions from where they start:
/// their current end, read now before anything is produced, or --from-beginning.
fn readers(args: &Args, partitions: usize) -> Result<Vec<Reader>> {
    let count = args.consumers as usize;
    if count > partitions {
        warn!(
            consumers = count,
            partitions, "more consumers than partitions; the extra ones stay idle"
        );
    }
    let starts = topic::start_offsets(
        &args.bootstrap,
        &args.topic,
        partitions,
        args.from_beginning,
    )?;
    let config = args.consumer_config();
    (0..count)
        .map(|index| Reader::assigned(index, count, &config, &args.topic, &starts))
        .collect()
}

/// Produces and waits for consumers (if `consuming`) to catch up, filling in everything but
/// the consumer totals (known once consumer threads have stopped).
fn drive(
    args: &Args,
    consuming: bool,
    produce_stats: &Arc<ProduceStats>,
    consume_stats: &ConsumeStats,
    since: &AtomicU64,
    report: &mut Report,
) -> Result<()> {
    let sampler = args.agent_pid.map(AgentSampler::start).transpose()?;
    let producer_config = args.producer_config();
    let workload = Workload::new(args.record_size as usize);
    let drain: Duration = args.drain_timeout.into();
    since.store(produce::unix_nanos(), Ordering::Relaxed);
    let start = Instant::now();
    let deadline = args.time_limit().map(|limit| start + limit);
    info!(profile = args.profile.as_str(), "producing");
    let sent: u64 = thread::scope(|scope| {
        let producers: Vec<_> = (0..args.producers)
            .map(|index| {
                let plan = produce::Plan {
                    first_seq: index * 1_000_003,
                    records: args.records.map(|n| share(n, args.producers, index)),
                    deadline,
                    rate: args.rate as f64 / args.producers as f64,
                    drain,
                };
                let (config, workload) = (&producer_config, &workload);
                let stats = Arc::clone(produce_stats);
                scope.spawn(move || produce::run(config, &args.topic, workload, &plan, stats))
            })
            .collect();
        producers
            .into_iter()
            .map(|p| p.join().map_err(|_| anyhow!("producer thread panicked"))?)
            .sum::<Result<u64>>()
    })?;
    let elapsed = start.elapsed().as_secs_f64();

    let delivered = produce_stats.delivered();
    let bytes = produce_stats.bytes();
    report.set_throughput(delivered, bytes, elapsed);
    report.delivery_errors = sent.saturating_sub(delivered);
    report.first_delivery_error = produce_stats.first_error();
    let produce = Percentiles::of(&produce_stats.latency_us());
    (
        report.produce_p50_ms,
        report.produce_p99_ms,
        report.produce_p999_ms,
        report.produce_max_ms,
    ) = (produce.p50, produce.p99, produce.p999, produce.max);

    if consuming {
        info!(delivered, "waiting for consumers to catch up");
        let lag = consume_stats.wait_caught_up(&produce_stats.next_offsets(), drain);
        if lag > 0 {
            warn!(lag, "consumers did not catch up within the drain timeout");
        }
        report.consumer_lag = Some(lag);
    }
    if let Some(sampler) = sampler {
        // A broker that died mid-run still leaves a report worth printing.
        match sampler.finish() {
            Ok(usage) => report.set_agent_usage(usage.cpu_seconds, usage.peak_rss_bytes, bytes),
            Err(err) => warn!("agent figures omitted: {err:#}"),
        }
    }
    Ok(())
}

/// Producer `index`'s share of `total` split over `parts`; the first ones take the remainder.
fn share(total: u64, parts: u64, index: u64) -> u64 {
    total / parts + u64::from(index < total % parts)
}
