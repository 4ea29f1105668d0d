//! `shoal-sequencer-bench`: the metadata sequencer alone, without agents or object storage.
//!
//! For each (committers, partitions per object) cell it creates a fresh topic with that many
//! partitions; every committer then loops committing objects with one chunk per partition
//! (so all committers contend for the same partition rows, the worst case) and records the
//! latency of each `commit_object`. Without `--url` it starts a throwaway local PostgreSQL
//! with its durability settings on.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use shoal_metadata::testing::TestPostgres;
use shoal_metadata::{ChunkCommit, MetadataStore, ObjectCommit};
use sqlx::{Connection, PgConnection, Row};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Bytes of one benchmark object, split evenly over its chunks.
const OBJECT_BYTES: u64 = 4 << 20;
/// Records per chunk.
const OFFSET_COUNT: i64 = 10;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-sequencer-bench",
    about = "Commits per second and commit latency of Shoal's metadata sequencer"
)]
struct Args {
    /// Database to bench (`postgres://...` or `sqlite://...`). Default: a throwaway local
    /// PostgreSQL with fsync, synchronous_commit and full_page_writes on.
    #[arg(long)]
    url: Option<String>,
    /// Concurrent committers, one cell per value.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    committers: Vec<usize>,
    /// Partitions per object (one chunk each), one cell per value.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    partitions: Vec<i32>,
    /// Measured time per cell.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time per cell before measuring (fills the connection pool).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    /// Durability settings in effect (PostgreSQL only).
    settings: BTreeMap<String, String>,
    duration_s: f64,
    object_bytes: u64,
    cells: Vec<Cell>,
}

#[derive(Debug, Serialize)]
struct Cell {
    committers: usize,
    partitions: i32,
    commits: u64,
    commits_per_s: f64,
    chunks_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    errors: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        // sqlx's slow-statement warnings repeat the whole commit query; the table has the
        // latencies.
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx::query=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("shoal-sequencer-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(err) => {
                        eprintln!("shoal-sequencer-bench: {err}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print_table(&report);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("shoal-sequencer-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<Report> {
    // Kept alive until the end: dropping it stops the throwaway cluster.
    let mut _harness = None;
    let (url, backend) = match &args.url {
        Some(url) => (url.clone(), backend_of(url)?),
        None => {
            let harness = tokio::task::spawn_blocking(TestPostgres::start_durable)
                .await?
                .context("starting a throwaway PostgreSQL")?;
            let url = harness.create_database().await?;
            _harness = Some(harness);
            (url, "postgres (throwaway, local)".to_string())
        }
    };
    let settings = if backend.starts_with("postgres") {
        pg_settings(&url).await?
    } else {
        BTreeMap::new()
    };
    info!(%backend, ?settings, "benchmarking the sequencer");
    let store = shoal_metadata::open(&url).await?;
    let mut cells = Vec::new();
    for &partitions in &args.partitions {
        for &committers in &args.committers {
            let cell = bench_cell(&store, committers, partitions, args).await?;
            info!(
                committers,
                partitions,
                commits_per_s = format!("{:.0}", cell.commits_per_s),
                p50_ms = cell.p50_ms,
                p99_ms = cell.p99_ms,
                errors = cell.errors,
                "cell done"
            );
            cells.push(cell);
        }
    }
    Ok(Report {
        backend,
        settings,
        duration_s: args.duration.as_secs_f64(),
        object_bytes: OBJECT_BYTES,
        cells,
    })
}

fn backend_of(url: &str) -> Result<String> {
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("postgres" | "postgresql") => Ok("postgres".to_string()),
        Some("sqlite") => Ok("sqlite".to_string()),
        _ => bail!("unsupported --url `{url}` (expected postgres:// or sqlite://)"),
    }
}

/// The settings that decide what a commit costs.
async fn pg_settings(url: &str) -> Result<BTreeMap<String, String>> {
    let mut conn = PgConnection::connect(url).await?;
    let mut settings = BTreeMap::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_sync_method",
    ] {
        let value: String = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
        settings.insert(name.to_string(), value);
    }
    conn.close().await?;
    Ok(settings)
}

struct CommitterResult {
    histogram: Histogram<u64>,
    commits: u64,
    errors: u64,
}

async fn bench_cell(
    store: &Arc<dyn MetadataStore>,
    committers: usize,
    partitions: i32,
    args: &Args,
) -> Result<Cell> {
    let name = format!(
        "seqbench-c{committers}-p{partitions}-{}",
        uuid::Uuid::new_v4().simple()
    );
    let topic = store
        .create_topic(&name, partitions, BTreeMap::new())
        .await?
        .id;
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let measure_until = measure_from + args.duration;
    let mut tasks = Vec::with_capacity(committers);
    for _ in 0..committers {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            committer(store, topic, partitions, measure_from, measure_until).await
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut commits, mut errors) = (0, 0);
    for task in tasks {
        let result = task.await??;
        histogram.add(&result.histogram)?;
        commits += result.commits;
        errors += result.errors;
    }
    let secs = args.duration.as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Cell {
        committers,
        partitions,
        commits,
        commits_per_s: commits as f64 / secs,
        chunks_per_s: commits as f64 * f64::from(partitions) / secs,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: histogram.max() as f64 / 1000.0,
        errors,
    })
}

/// Commits objects until `until`; counts only commits that start at or after `from`.
async fn committer(
    store: Arc<dyn MetadataStore>,
    topic: shoal_metadata::TopicId,
    partitions: i32,
    from: Instant,
    until: Instant,
) -> Result<CommitterResult> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut commits, mut errors) = (0, 0);
    let chunk_size = (OBJECT_BYTES / partitions.max(1) as u64).max(1);
    loop {
        let began = Instant::now();
        if began >= until {
            break;
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
        let chunks = (0..partitions)
            .map(|partition| ChunkCommit {
                topic,
                partition,
                offset_count: OFFSET_COUNT,
                max_timestamp: now_ms,
                position: partition as u64 * chunk_size,
                size: chunk_size,
            })
            .collect();
        let object = ObjectCommit {
            object_id: uuid::Uuid::new_v4().simple().to_string(),
            size: chunk_size * partitions as u64,
            chunks,
        };
        let outcome = store.commit_object(&object).await;
        let latency = began.elapsed();
        if began < from {
            continue;
        }
        match outcome {
            Ok(_) => {
                commits += 1;
                histogram.saturating_record((latency.as_micros() as u64).max(1));
            }
            Err(err) => {
                errors += 1;
                if errors <= 3 {
                    warn!(%err, "commit failed");
                }
            }
        }
    }
    Ok(CommitterResult {
        histogram,
        commits,
        errors,
    })
}

fn print_table(report: &Report) {
    println!("backend: {}", report.backend);
    for (name, value) in &report.settings {
        println!("  {name} = {value}");
    }
    println!(
        "{} s per cell, {} MiB objects, {} records per chunk",
        report.duration_s,
        report.object_bytes >> 20,
        OFFSET_COUNT
    );
    println!();
    println!(
        "| committers | partitions/object | commits/s | chunks/s | p50 ms | p99 ms | p999 ms | max ms | errors |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for c in &report.cells {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            c.committers,
            c.partitions,
            c.commits_per_s,
            c.chunks_per_s,
            c.p50_ms,
            c.p99_ms,
            c.p999_ms,
            c.max_ms,
            c.errors
        );
    }
}
