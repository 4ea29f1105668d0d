//! The operations HTTP listener: `/metrics` for Prometheus and `/healthz` for liveness
//! probes, on a port of its own so scrapes never queue behind Kafka traffic.

use std::convert::Infallible;
use std::fmt::Write as _;
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
use shoal_metadata::MetadataError;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::api::Context;
use crate::groups::GroupError;
use crate::index::RecentIndex;
use crate::metrics::UPKEEP_INTERVAL;

/// How long a client may take to send its request headers before the connection is closed,
/// so idle or stalled connections do not pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

const LAG_METRIC: &str = "shoal_consumer_group_lag";

/// What the handlers read.
pub struct Ops {
    pub ctx: Arc<Context>,
    /// High watermarks come from the recent index, as Fetch's do, so a scrape seldom queries
    /// the sequencer for them.
    pub index: Arc<RecentIndex>,
    pub prometheus: &'static PrometheusHandle,
}

/// Why `/metrics` could not be rendered.
#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("cannot read committed offsets: {0}")]
    Groups(#[from] GroupError),
    #[error("cannot read topics or high watermarks: {0}")]
    Metadata(#[from] MetadataError),
}

/// Serves until the agent stops; connections still open then are dropped, since a scrape or
/// a probe has nothing to finish.
pub async fn serve(listener: TcpListener, ops: Arc<Ops>) {
    let mut shutdown = ops.ctx.shutdown.clone();
    let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, ops.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = upkeep.tick() => ops.prometheus.run_upkeep(),
            _ = shutdown.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.abort_all();
}

async fn serve_connection(stream: TcpStream, ops: Arc<Ops>) {
    let service = service_fn(move |request| {
        let ops = ops.clone();
        async move { Ok::<_, Infallible>(route(&ops, &request).await) }
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

async fn route(ops: &Ops, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::NOT_FOUND, "not found\n".into());
    }
    match request.uri().path() {
        "/metrics" => metrics(ops).await,
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
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

/// The recorder's series, then consumer lag. Lag is computed here at every scrape rather than
/// recorded as a gauge: the recorder cannot drop a series, and a group that moved to another
/// agent must vanish from this agent's output instead of repeating its last value.
async fn metrics(ops: &Ops) -> Response<Full<Bytes>> {
    let lags = match consumer_lags(ops).await {
        Ok(lags) => lags,
        Err(e) => {
            // A failed scrape shows as down in Prometheus; a partial one would hide the lag.
            tracing::warn!(error = %e, "cannot render /metrics");
            return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
        }
    };
    let mut body = ops.prometheus.render();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    render_lags(&mut body, &lags);
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
async fn consumer_lags(ops: &Ops) -> Result<Vec<Lag>, ScrapeError> {
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
