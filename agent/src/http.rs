//! The operations HTTP listener: `/metrics` for Prometheus, `/healthz` for liveness and
//! `/readyz` for readiness probes, on a port of its own so scrapes never queue behind Kafka
//! traffic. Agents and the standalone compactor serve it alike; what differs is behind
//! [`Probes`].

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use shoal_metadata::{MetadataError, MetadataStore};
use shoal_storage::ObjectStorage;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::Context;
use crate::groups::GroupError;
use crate::index::RecentIndex;
use crate::metrics::{self as m, UPKEEP_INTERVAL};

/// How long a client may take to send its request headers before the connection is closed,
/// so idle or stalled connections do not pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a readiness check waits for the sequencer or the object store; kept below the
/// usual probe timeout so a hung dependency reads as "not ready", not as a probe timeout.
const CHECK_TIMEOUT: Duration = Duration::from_millis(2500);

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

const LAG_METRIC: &str = "shoal_consumer_group_lag";

/// What a process's listener knows beyond the recorder's series.
pub trait Probes: Send + Sync + 'static {
    /// Why the process should get no new clients now; empty when it is ready.
    fn unready(&self) -> impl Future<Output = Vec<String>> + Send;

    /// Appends the series computed at each scrape; an error fails the scrape.
    fn render(&self, out: &mut String) -> impl Future<Output = Result<(), String>> + Send;
}

/// An agent's probes.
pub struct AgentProbes {
    pub ctx: Arc<Context>,
    /// High watermarks come from the recent index, as Fetch's do, so a scrape seldom queries
    /// the sequencer for them.
    pub index: Arc<RecentIndex>,
    pub store: Arc<dyn MetadataStore>,
    pub storage: Arc<ObjectStorage>,
}

impl Probes for AgentProbes {
    async fn unready(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.ctx.fleet.is_leaving() {
            reasons.push("draining: this agent is stopping".to_string());
        } else if !self.ctx.fleet.is_registered() {
            reasons.push(
                "not registered: the sequencer has not renewed this agent's lease lately"
                    .to_string(),
            );
        }
        reasons.extend(dependencies(&self.store, &self.storage).await);
        reasons
    }

    async fn render(&self, out: &mut String) -> Result<(), String> {
        metrics::gauge!(m::CACHE_BYTES).set(self.ctx.reader.cache_bytes() as f64);
        let lags = consumer_lags(self).await.map_err(|e| e.to_string())?;
        render_lags(out, &lags);
        Ok(())
    }
}

/// The standalone compactor's probes: it is ready when it can reach what it works on.
struct CompactorProbes {
    store: Arc<dyn MetadataStore>,
    storage: Arc<ObjectStorage>,
}

impl Probes for CompactorProbes {
    async fn unready(&self) -> Vec<String> {
        dependencies(&self.store, &self.storage).await
    }

    async fn render(&self, _out: &mut String) -> Result<(), String> {
        Ok(())
    }
}

/// Starts the standalone compactor's listener on `addr`: its metrics (object-store requests
/// and the compactor's own), liveness and readiness. Returns the bound address.
pub async fn serve_compactor(
    addr: std::net::SocketAddr,
    store: Arc<dyn MetadataStore>,
    storage: Arc<ObjectStorage>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let probes = Arc::new(CompactorProbes { store, storage });
    tokio::spawn(serve(listener, probes, m::prometheus(), shutdown));
    Ok(bound)
}

/// Whether the sequencer and the object store answer, checked at once.
async fn dependencies(store: &Arc<dyn MetadataStore>, storage: &ObjectStorage) -> Vec<String> {
    let (sequencer, objects) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, store.cluster_id()),
        tokio::time::timeout(CHECK_TIMEOUT, storage.check()),
    );
    let mut reasons = Vec::new();
    match sequencer {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => reasons.push(format!("sequencer unreachable: {e}")),
        Err(_) => reasons.push(format!(
            "sequencer unreachable: no answer in {CHECK_TIMEOUT:?}"
        )),
    }
    match objects {
        Ok(Ok(())) => {}
        Ok(Err(e)) => reasons.push(format!("object store unreachable: {e}")),
        Err(_) => reasons.push(format!(
            "object store unreachable: no answer in {CHECK_TIMEOUT:?}"
        )),
    }
    reasons
}

/// Why `/metrics` could not be rendered.
#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("cannot read committed offsets: {0}")]
    Groups(#[from] GroupError),
    #[error("cannot read topics or high watermarks: {0}")]
    Metadata(#[from] MetadataError),
}

/// Serves until `shutdown` turns true; connections still open then are dropped, since a
/// scrape or a probe has nothing to finish.
pub async fn serve<P: Probes>(
    listener: TcpListener,
    probes: Arc<P>,
    prometheus: &'static PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, probes.clone(), prometheus));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = upkeep.tick() => prometheus.run_upkeep(),
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}

async fn serve_connection<P: Probes>(
    stream: TcpStream,
    probes: Arc<P>,
    prometheus: &'static PrometheusHandle,
) {
    let service = service_fn(move |request| {
        let probes = probes.clone();
        async move { Ok::<_, Infallible>(route(&*probes, prometheus, &request).await) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

async fn route<P: Probes>(
    probes: &P,
    prometheus: &'static PrometheusHandle,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    }
    match request.uri().path() {
        "/metrics" => metrics(probes, prometheus).await,
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => ready(probes).await,
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// 200 when ready, else 503 with one reason per line.
async fn ready<P: Probes>(probes: &P) -> Response<Full<Bytes>> {
    let reasons = probes.unready().await;
    if reasons.is_empty() {
        return text(StatusCode::OK, "ready\n".into());
    }
    let mut body = String::new();
    for reason in reasons {
        body.push_str(&reason);
        body.push('\n');
    }
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The recorder's series, then those computed at scrape time (consumer lag). Lag is computed
/// at every scrape rather than recorded as a gauge: the recorder cannot drop a series, and a
/// group that moved to another agent must vanish from this agent's output instead of
/// repeating its last value.
async fn metrics<P: Probes>(probes: &P, prometheus: &PrometheusHandle) -> Response<Full<Bytes>> {
    let mut computed = String::new();
    if let Err(e) = probes.render(&mut computed).await {
        // A failed scrape shows as down in Prometheus; a partial one would hide the lag.
        tracing::warn!(error = %e, "cannot render /metrics");
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
    }
    let mut body = prometheus.render();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    body.push_str(&computed);
    let mut response = text(StatusCode::OK, body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
    response
}

/// One consumer group's lag on one partition.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Lag {
    group: String,
    topic: String,
    partition: i32,
    records: i64,
}

/// The lag of every group this agent coordinates on every partition it committed an offset
/// for, ordered by group, topic and partition.
async fn consumer_lags(ops: &AgentProbes) -> Result<Vec<Lag>, ScrapeError> {
    let mut lags = Vec::new();
    for (group, offsets) in ops.ctx.groups.coordinated_offsets().await? {
        for committed in offsets {
            // A negative offset marks no position, which has no lag to speak of.
            if committed.offset < 0 {
                continue;
            }
            // Offsets of a deleted topic or partition linger until the group drops them.
            let Some(topic) = ops.ctx.catalog.by_id(committed.topic).await? else {
                continue;
            };
            let high_watermark = match ops
                .index
                .offsets(committed.topic, committed.partition, 0)
                .await
            {
                Ok(offsets) => offsets.high_watermark,
                Err(MetadataError::UnknownTopic(_) | MetadataError::UnknownPartition { .. }) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            lags.push(Lag {
                group: group.clone(),
                topic: topic.topic.name.clone(),
                partition: committed.partition,
                records: (high_watermark - committed.offset).max(0),
            });
        }
    }
    lags.sort();
    Ok(lags)
}

fn render_lags(out: &mut String, lags: &[Lag]) {
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP {LAG_METRIC} Records a consumer group has not consumed yet: the partition's \
         high watermark minus the group's committed offset."
    );
    let _ = writeln!(out, "# TYPE {LAG_METRIC} gauge");
    for lag in lags {
        let _ = writeln!(
            out,
            "{LAG_METRIC}{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
            escape_label(&lag.group),
            escape_label(&lag.topic),
            lag.partition,
            lag.records
        );
    }
}

/// A label value as the text format needs it: backslash, double quote and line feed escaped.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_lines_escape_label_values() {
        let mut out = String::new();
        let lag = Lag {
            group: "a\"b\\c\nd".into(),
            topic: "t".into(),
            partition: 3,
            records: 7,
        };
        render_lags(&mut out, &[lag]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("# HELP shoal_consumer_group_lag "));
        assert_eq!(lines[1], "# TYPE shoal_consumer_group_lag gauge");
        assert_eq!(
            lines[2],
            r#"shoal_consumer_group_lag{group="a\"b\\c\nd",topic="t",partition="3"} 7"#
        );
    }
}
