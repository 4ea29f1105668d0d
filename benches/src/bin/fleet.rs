//! `shoal-fleet-bench`: the whole produce path of a small fleet on a realistic object store.
//!
//! Starts a throwaway durable PostgreSQL, an in-process S3 endpoint whose PUTs take a
//! log-normal time (median `--put-p50`, 99th percentile `--put-p99`), and two agent processes
//! in two zones. `shoal-load` then produces through the agent of zone a and consumes through
//! the agent of zone b, so end-to-end latency includes the hop between agents (the commit
//! announcement that wakes the consumer's long-poll). One run per `--flush-interval`.

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::Value;
use shoal_metadata::testing::TestPostgres;
use shoal_tests::{AgentProcess, TestS3};

#[derive(Debug, Parser)]
#[command(
    name = "shoal-fleet-bench",
    about = "Produce and end-to-end latency of a Shoal fleet on a slow object store"
)]
struct Args {
    /// Flush intervals to run with, one run each.
    #[arg(long, value_delimiter = ',', default_value = "250ms,25ms")]
    flush_interval: Vec<humantime::Duration>,

    /// Median PUT latency of the S3 endpoint.
    #[arg(long, default_value = "30ms")]
    put_p50: humantime::Duration,

    /// 99th percentile PUT latency of the S3 endpoint.
    #[arg(long, default_value = "150ms")]
    put_p99: humantime::Duration,

    /// Records per second produced (0: as fast as possible).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,

    /// Length of each run.
    #[arg(long, default_value = "30s")]
    duration: humantime::Duration,

    /// Payload bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_size: u64,

    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,

    /// Consumers reading through the agent of zone b (0: produce only).
    #[arg(long, default_value_t = 1)]
    consumers: u64,

    /// Producer settings passed to shoal-load (`default` or `tuned`).
    #[arg(long, default_value = "default")]
    profile: String,
}

/// One run's figures.
struct Row {
    flush: String,
    report: Value,
    puts_per_gib: f64,
    gets_per_gib: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("shoal-fleet-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(rows) => {
            print_table(&args, &rows);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("shoal-fleet-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<Vec<Row>> {
    let pg = tokio::task::spawn_blocking(TestPostgres::start_durable)
        .await?
        .context("starting a throwaway PostgreSQL")?;
    let mut rows = Vec::new();
    for flush in &args.flush_interval {
        let s3 = TestS3::start().await;
        s3.set_put_latency(args.put_p50.into(), args.put_p99.into());
        let metadata = pg.create_database().await?;
        let agent = |zone: &str| {
            let mut agent_args = vec![
                "--metadata".to_string(),
                metadata.clone(),
                "--zone".to_string(),
                zone.to_string(),
                "--flush-interval".to_string(),
                flush.to_string(),
            ];
            agent_args.extend(s3.agent_args("bench"));
            AgentProcess::start(&agent_args, &s3.agent_env())
        };
        let (a, b) = tokio::task::block_in_place(|| (agent("zone-a"), agent("zone-b")));
        tracing::info!(flush = %flush, a = %a.bootstrap(), b = %b.bootstrap(), "fleet up");
        // Both agents must list each other before clients ask (the next lease renewal).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let report = tokio::task::block_in_place(|| load(args, &a, &b))?;
        let (puts, _) = s3.puts();
        let gib = report["mib_produced"].as_f64().unwrap_or_default() / 1024.0;
        rows.push(Row {
            flush: flush.to_string(),
            report,
            puts_per_gib: puts as f64 / gib.max(f64::MIN_POSITIVE),
            gets_per_gib: s3.gets() as f64 / gib.max(f64::MIN_POSITIVE),
        });
    }
    Ok(rows)
}

/// Runs `shoal-load` (built next to this binary) against the fleet and returns its report.
fn load(args: &Args, a: &AgentProcess, b: &AgentProcess) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let shoal_load = exe.with_file_name("shoal-load");
    let output = Command::new(&shoal_load)
        .args([
            "--bootstrap",
            &a.bootstrap(),
            "--consumer-bootstrap",
            &b.bootstrap(),
            "--client-id",
            "shoal_az=zone-a",
            "--consumer-client-id",
            "shoal_az=zone-b",
            "--topic",
            "fleet-bench",
            "--partitions",
            &args.partitions.to_string(),
            "--rate",
            &args.rate.to_string(),
            "--duration",
            &args.duration.to_string(),
            "--record-size",
            &args.record_size.to_string(),
            "--profile",
            &args.profile,
            "--consumers",
            &args.consumers.to_string(),
            "--agent-pid",
            &a.pid().to_string(),
            "--json",
        ])
        .output()
        .with_context(|| format!("running {}", shoal_load.display()))?;
    if !output.status.success() {
        bail!(
            "shoal-load failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn print_table(args: &Args, rows: &[Row]) {
    println!(
        "PUT latency p50 {} / p99 {}, {} records/s of {} B, {} partitions, {} producer, {} per run",
        args.put_p50,
        args.put_p99,
        args.rate,
        args.record_size,
        args.partitions,
        args.profile,
        args.duration
    );
    println!();
    println!(
        "| flush | MiB/s | produce p50 ms | p99 ms | p999 ms | e2e p50 ms | e2e p99 ms | \
         PUTs/GiB | GETs/GiB | agent CPU s/GiB | errors |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let r = &row.report;
        let num = |key: &str| {
            r[key]
                .as_f64()
                .map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
            row.flush,
            num("mib_per_s"),
            num("produce_p50_ms"),
            num("produce_p99_ms"),
            num("produce_p999_ms"),
            num("e2e_p50_ms"),
            num("e2e_p99_ms"),
            row.puts_per_gib,
            row.gets_per_gib,
            num("agent_cpu_s_per_gib"),
            r["delivery_errors"].as_u64().unwrap_or_default(),
        );
    }
}
