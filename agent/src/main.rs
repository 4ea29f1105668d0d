//! `shoal`: the command line of the Shoal agent.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use shoal_agent::admin::AdminArgs;
use shoal_agent::{Agent, AgentArgs, AgentConfig, CompactorArgs, StartError};
use shoal_compactor::Compactor;
use tracing_subscriber::EnvFilter;

/// jemalloc reserves huge allocations lazily, so a frame that claims billions of array
/// elements costs address space, not memory, before its decode fails.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc serves allocations above `oversize_threshold` (8 MiB by default) from an arena
/// that returns pages to the kernel at once, so every multi-megabyte request frame would be
/// page-faulted and zeroed anew. Produce frames are routinely that large: keep them in the
/// normal arenas, whose dirty pages are reused and returned after a few seconds.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] =
    b"oversize_threshold:1073741824,background_thread:true,dirty_decay_ms:2000\0";

/// Shoal: a diskless, Kafka-compatible streaming agent. Records are stored as immutable
/// objects; their order is committed to a metadata sequencer.
#[derive(Parser)]
#[command(name = "shoal", version, about, long_about = None)]
struct Cli {
    /// Log line format: `human` (default) or `json` (one object per line, for collectors).
    #[arg(long, global = true, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run an agent: a Kafka endpoint that stores records in an object store.
    Agent(AgentArgs),
    /// Run the compactor: merge small objects, apply retention, clean compacted topics,
    /// export Parquet, delete unreferenced objects.
    Compactor(CompactorArgs),
    /// Manage topics, consumer groups and agents over the Kafka protocol.
    Admin(AdminArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shoal: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Agent(args) => runtime.block_on(run_agent(args.into())),
        Command::Compactor(args) => runtime.block_on(run_compactor(args)),
        Command::Admin(args) => runtime.block_on(run_admin(args)),
    }
}

/// Logs go to stderr, filtered by `SHOAL_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours only on a terminal: log files and collectors get plain text.
        LogFormat::Human => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

async fn run_compactor(args: CompactorArgs) -> ExitCode {
    let storage = &args.storage;
    let objects = match shoal_storage::ObjectStorage::open(&storage.objects, &storage.s3_options())
    {
        Ok(objects) => Arc::new(objects),
        Err(e) => {
            eprintln!("shoal: --objects {}: {e}", storage.objects);
            return ExitCode::from(2);
        }
    };
    let store = match shoal_metadata::open(&storage.metadata).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("shoal: --metadata {}: {e}", storage.metadata);
            return ExitCode::from(2);
        }
    };
    let compactor = Compactor::new(store.clone(), objects.clone(), args.config());
    if args.once {
        return match compactor.run_once().await {
            Ok(report) => {
                tracing::info!(?report, "compactor pass done");
                if report.failures == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("shoal: compactor pass failed: {e}");
                ExitCode::from(1)
            }
        };
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(addr) = args.http.0 {
        match shoal_agent::serve_compactor(addr, store, objects, stopped.clone()).await {
            Ok(bound) => tracing::info!(http = %bound, "serving /metrics, /healthz and /readyz"),
            Err(e) => {
                eprintln!("shoal: --http {addr}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    tracing::info!(interval = ?args.interval, "shoal compactor running");
    let running = tokio::spawn(async move { compactor.run(stopped).await });
    wait_for_signal().await;
    tracing::info!("stopping the compactor");
    let _ = stop.send(true);
    running.abort();
    ExitCode::SUCCESS
}

/// Exit codes: 1 when the cluster refused, 2 when the command could not be carried out.
async fn run_admin(args: AdminArgs) -> ExitCode {
    match shoal_agent::admin::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal admin: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run_agent(config: AgentConfig) -> ExitCode {
    let agent = match Agent::start(config).await {
        Ok(agent) => agent,
        Err(e @ StartError::Config(_)) => {
            eprintln!("shoal: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("shoal: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(listen = %agent.local_addr(), "shoal agent ready");
    wait_for_signal().await;
    tracing::info!("stopping: draining");
    agent.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
