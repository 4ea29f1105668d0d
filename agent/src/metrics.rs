//! The process's metrics recorder: what code records through the `metrics` macros is
//! rendered in the Prometheus text format by the HTTP listener's `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often histogram samples are folded into their summaries, so they do not pile up
/// between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The handle of the recorder this module installed, installing it on first use. Agents call
/// it only when their HTTP listener is on: without a listener nothing would ever render or
/// drain what is recorded.
///
/// The `metrics` facade takes one global recorder per process and several agents may run in
/// one process (tests), so installation happens once and never fails the caller: if another
/// recorder was installed first, `/metrics` shows only the series its handler computes itself.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(
                error = %e,
                "another metrics recorder is installed; /metrics shows consumer lag only"
            );
        }
        handle
    })
}
