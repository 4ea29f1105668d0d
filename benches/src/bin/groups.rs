//! `shoal-group-bench`: what consumer groups cost on the agent. One in-process agent on
//! each metadata backend (the embedded SQLite, and a local PostgreSQL with its durability
//! settings on); a librdkafka consumer commits offsets synchronously in a loop, as a
//! consumer committing after every poll does, and the bench reports commit latency
//! percentiles and commits per second for commits of 1 and of 100 partitions.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use shoal_metadata::testing::TestPostgres;
use shoal_tests::TestAgent;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-group-bench",
    about = "Offset commit latency of Shoal's consumer groups"
)]
struct Args {
    /// Measured time per cell.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Partitions per commit, one cell per value.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    partitions: Vec<i32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Cell {
    backend: &'static str,
    partitions: i32,
    commits: u64,
    commits_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shoal-group-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(cells) => {
            if args.json {
                match serde_json::to_string_pretty(&cells) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("shoal-group-bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                println!("backend     partitions  commits/s   p50 ms   p99 ms   max ms");
                for c in &cells {
                    println!(
                        "{:<11} {:>10} {:>10.0} {:>8.2} {:>8.2} {:>8.2}",
                        c.backend, c.partitions, c.commits_per_second, c.p50_ms, c.p99_ms, c.max_ms
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-group-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for backend in ["sqlite", "postgres"] {
        let postgres = match backend {
            "postgres" => Some(
                tokio::task::spawn_blocking(TestPostgres::start_durable)
                    .await?
                    .context("a local PostgreSQL (initdb, pg_ctl)")?,
            ),
            _ => None,
        };
        let url = match &postgres {
            Some(pg) => Some(pg.create_database().await?),
            None => None,
        };
        let agent = TestAgent::start_with(|cfg| {
            if let Some(url) = url {
                cfg.metadata_url = url;
            }
        })
        .await;
        let bootstrap = agent.bootstrap();
        for &partitions in &args.partitions {
            let topic = format!("bench-{partitions}");
            create_topic(&bootstrap, &topic, partitions).await?;
            let bootstrap = bootstrap.clone();
            let duration = args.duration;
            let cell = tokio::task::spawn_blocking(move || {
                commit_loop(&bootstrap, &topic, partitions, duration)
            })
            .await??;
            cells.push(Cell { backend, ..cell });
        }
        agent.stop().await;
    }
    Ok(cells)
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?;
    for result in results {
        if let Err((name, code)) = result {
            bail!("creating {name}: {code}");
        }
    }
    Ok(())
}

/// Commits every partition of `topic` at increasing offsets, one synchronous commit at a
/// time, for `duration` after a one-second warm-up (the first commit loads the group).
fn commit_loop(bootstrap: &str, topic: &str, partitions: i32, duration: Duration) -> Result<Cell> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{topic}"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut offset = 0;
    let warm_until = Instant::now() + Duration::from_secs(1);
    let mut started = None;
    loop {
        offset += 1;
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(topic, p, Offset::Offset(offset))?;
        }
        let sent = Instant::now();
        consumer.commit(&list, CommitMode::Sync)?;
        let took = sent.elapsed();
        if sent < warm_until {
            continue;
        }
        let start = *started.get_or_insert(sent);
        histogram.record(took.as_micros().max(1) as u64)?;
        if start.elapsed() >= duration {
            break;
        }
    }
    let elapsed = started.map(|s| s.elapsed()).unwrap_or(duration);
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Cell {
        backend: "",
        partitions,
        commits: histogram.len(),
        commits_per_second: histogram.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    })
}
