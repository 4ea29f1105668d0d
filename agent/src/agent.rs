//! An agent's lifecycle: open the sequencer and the object store, listen, serve, and stop
//! without losing what producers were told is stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_storage::{ChunkCache, ObjectStorage};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use shoal_compactor::{Compactor, CompactorConfig};
use shoal_metadata::AgentRegistration;

use crate::announce::{self, Announcer};
use crate::api::Context;
use crate::batcher::{Batcher, BatcherConfig, FlushContext};
use crate::catalog::Catalog;
use crate::config::AgentConfig;
use crate::connection;
use crate::fleet::Fleet;
use crate::groups::{GroupConfig, Groups};
use crate::http::{self, AgentProbes};
use crate::index::RecentIndex;
use crate::metrics;
use crate::reader::Reader;
use crate::uploads::UploadKeys;

/// A draining agent considers its clients moved once none has been redirected for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(1);

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot work (bad URL, unusable directory, port in use).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

/// A running agent.
pub struct Agent {
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    fleet: Arc<Fleet>,
    server: JoinHandle<()>,
    http_server: Option<JoinHandle<()>>,
    batcher: JoinHandle<()>,
    compactor: Option<JoinHandle<()>>,
    drain_timeout: Duration,
}

impl Agent {
    /// Opens storage and metadata, binds the listener and starts serving.
    pub async fn start(config: AgentConfig) -> Result<Agent, StartError> {
        let storage = Arc::new(
            ObjectStorage::open(&config.objects_url, &config.s3).map_err(|e| {
                StartError::Config(format!("--objects {}: {e}", config.objects_url))
            })?,
        );
        let store = shoal_metadata::open(&config.metadata_url)
            .await
            .map_err(|e| StartError::Config(format!("--metadata {}: {e}", config.metadata_url)))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Config(format!("--listen {}: {e}", config.listen)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::Runtime(format!("listener address: {e}")))?;
        let http_listener = match config.http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| StartError::Config(format!("--http {addr}: {e}")))?,
            ),
            None => None,
        };
        let http_addr = http_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(|e| StartError::Runtime(format!("HTTP listener address: {e}")))?;
        let registration = advertised(&config, local_addr)?;

        let cluster_id = store
            .cluster_id()
            .await
            .map_err(|e| StartError::Runtime(format!("cannot read the cluster id: {e}")))?;
        let catalog = Catalog::new(store.clone());
        catalog
            .reload()
            .await
            .map_err(|e| StartError::Runtime(format!("cannot load topics: {e}")))?;
        let fleet = Fleet::join(store.clone(), registration)
            .await
            .map_err(|e| StartError::Runtime(format!("cannot register this agent: {e}")))?;
        let me = fleet.me().id;
        tracing::info!(
            node_id = me,
            zone = fleet.me().zone.as_deref().unwrap_or("-"),
            advertised = %format!("{}:{}", fleet.me().host, fleet.me().port),
            "registered"
        );
        let cache = Arc::new(ChunkCache::new(config.cache_bytes));
        let (commits_tx, commits) = watch::channel(0u64);
        let commits_tx = Arc::new(commits_tx);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let index = Arc::new(RecentIndex::new(store.clone()));
        tokio::spawn(announce::follow(
            store.clone(),
            me,
            index.clone(),
            commits_tx.clone(),
            shutdown_rx.clone(),
        ));
        let (batcher, batcher_task) = Batcher::start(
            BatcherConfig {
                flush_interval: config.flush_interval,
                flush_bytes: config.flush_bytes,
            },
            FlushContext {
                storage: storage.clone(),
                store: store.clone(),
                cache: cache.clone(),
                index: index.clone(),
                commits: commits_tx,
                announcer: Announcer::start(store.clone(), me),
                uploads: Arc::new(UploadKeys::new(store.clone(), me)),
            },
            shutdown_rx.clone(),
        );
        let groups = Groups::start(
            store.clone(),
            fleet.clone(),
            GroupConfig {
                initial_rebalance_delay: config.group_initial_rebalance_delay,
                min_session_timeout: config.group_min_session_timeout,
                max_session_timeout: Duration::from_secs(30 * 60),
            },
            shutdown_rx.clone(),
        );
        let compactor = config.compaction_interval.map(|interval| {
            tracing::info!(?interval, "running the compactor in this agent");
            let compactor = Compactor::new(
                store.clone(),
                storage.clone(),
                CompactorConfig {
                    interval,
                    ..CompactorConfig::default()
                },
            );
            let shutdown = shutdown_rx.clone();
            tokio::spawn(async move { compactor.run(shutdown).await })
        });
        let drain_timeout = config.drain_timeout;
        let ctx = Arc::new(Context {
            reader: Reader::new(store.clone(), index.clone(), storage.clone(), cache),
            config,
            catalog,
            batcher,
            commits,
            shutdown: shutdown_rx,
            fleet: fleet.clone(),
            groups,
            cluster_id,
        });
        let http_server = http_listener.zip(http_addr).map(|(listener, addr)| {
            tracing::info!(http = %addr, "serving /metrics, /healthz and /readyz");
            let prometheus = metrics::prometheus();
            metrics::register_gauges();
            let probes = AgentProbes {
                ctx: ctx.clone(),
                index,
                store,
                storage,
            };
            let shutdown = ctx.shutdown.clone();
            tokio::spawn(http::serve(
                listener,
                Arc::new(probes),
                prometheus,
                shutdown,
            ))
        });
        let server = tokio::spawn(accept_loop(listener, ctx));
        Ok(Agent {
            local_addr,
            http_addr,
            shutdown,
            fleet,
            server,
            http_server,
            batcher: batcher_task,
            compactor,
            drain_timeout,
        })
    }

    /// The address the Kafka listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the operations HTTP listener is bound to, if it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Drains, then stops: turns readiness off and leaves the fleet, so other agents stop
    /// listing this one; sends producers and consumers to other agents until they have moved
    /// (at most half the drain timeout); then stops accepting, answers in-flight requests
    /// (the other half), flushes and commits pending batches.
    pub async fn shutdown(self) {
        ::metrics::gauge!(metrics::DRAINING).set(1.0);
        self.fleet.leave().await;
        tracing::info!("draining: sending clients to other agents");
        self.fleet
            .clients_moved(DRAIN_QUIET, self.drain_timeout / 2)
            .await;
        let _ = self.shutdown.send(true);
        let _ = self.server.await;
        if let Some(http_server) = self.http_server {
            let _ = http_server.await;
        }
        let _ = self.batcher.await;
        // A pass cut short leaves nothing half done (see `shoal_compactor`), so a stopping
        // agent does not wait for it.
        if let Some(compactor) = self.compactor {
            compactor.abort();
        }
    }
}

fn advertised(config: &AgentConfig, local: SocketAddr) -> Result<AgentRegistration, StartError> {
    let (host, port) = match &config.advertise {
        Some(advertise) => {
            let (host, port) = advertise.rsplit_once(':').ok_or_else(|| {
                StartError::Config(format!("--advertise {advertise}: expected HOST:PORT"))
            })?;
            let port = port.parse::<u16>().map_err(|_| {
                StartError::Config(format!("--advertise {advertise}: `{port}` is not a port"))
            })?;
            (host.trim_matches(['[', ']']).to_string(), port)
        }
        None => {
            if local.ip().is_unspecified() {
                tracing::warn!(
                    %local,
                    "listening on all interfaces without --advertise; clients are told 127.0.0.1"
                );
                ("127.0.0.1".to_string(), local.port())
            } else {
                (local.ip().to_string(), local.port())
            }
        }
    };
    Ok(AgentRegistration {
        zone: config.zone.clone(),
        host,
        port: i32::from(port),
    })
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Context>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection::serve(stream, ctx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(ctx.config.drain_timeout / 2, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections still busy after the drain timeout; closing them");
        connections.abort_all();
    }
}
