//! The run's results, printed as `name value` lines or as one JSON object.

use std::io::Write;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// Field names carry their unit; `None` means not measured (no consumers, no --agent-pid).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub topic: String,
    pub profile: &'static str,
    pub compression: &'static str,
    pub record_size: u64,
    pub producers: u64,
    pub consumers: u64,
    pub records_produced: u64,
    pub delivery_errors: u64,
    pub first_delivery_error: Option<String>,
    pub mib_produced: f64,
    pub elapsed_s: f64,
    pub records_per_s: f64,
    pub mib_per_s: f64,
    pub produce_p50_ms: Option<f64>,
    pub produce_p99_ms: Option<f64>,
    pub produce_p999_ms: Option<f64>,
    pub produce_max_ms: Option<f64>,
    pub records_consumed: Option<u64>,
    pub consumer_lag: Option<u64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub e2e_p999_ms: Option<f64>,
    pub agent_cpu_s: Option<f64>,
    pub agent_cpu_s_per_gib: Option<f64>,
    pub agent_gib_per_cpu_s: Option<f64>,
    pub agent_peak_rss_mib: Option<f64>,
}

/// Latency percentiles in milliseconds, `None` for an empty histogram.
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    pub fn of(micros: &Histogram<u64>) -> Self {
        let ms = |v: u64| (!micros.is_empty()).then(|| round(v as f64 / 1000.0));
        Percentiles {
            p50: ms(micros.value_at_quantile(0.5)),
            p99: ms(micros.value_at_quantile(0.99)),
            p999: ms(micros.value_at_quantile(0.999)),
            max: ms(micros.max()),
        }
    }
}

impl Report {
    /// Fills the throughput figures from what was delivered in `elapsed_s`.
    pub fn set_throughput(&mut self, records: u64, bytes: u64, elapsed_s: f64) {
        self.records_produced = records;
        self.mib_produced = round(bytes as f64 / MIB);
        self.elapsed_s = round(elapsed_s);
        self.records_per_s = round(records as f64 / elapsed_s);
        self.mib_per_s = round(bytes as f64 / MIB / elapsed_s);
    }

    /// Fills the broker cost figures, relative to the bytes delivered.
    pub fn set_agent_usage(&mut self, cpu_s: f64, peak_rss_bytes: u64, bytes: u64) {
        let gib = bytes as f64 / GIB;
        self.agent_cpu_s = Some(round(cpu_s));
        self.agent_cpu_s_per_gib = (gib > 0.0).then(|| round(cpu_s / gib));
        self.agent_gib_per_cpu_s = (cpu_s > 0.0).then(|| round(gib / cpu_s));
        self.agent_peak_rss_mib = Some(round(peak_rss_bytes as f64 / MIB));
    }

    pub fn print(&self, json: bool, out: &mut impl Write) -> Result<()> {
        let value = serde_json::to_value(self)?;
        if json {
            writeln!(out, "{value}")?;
            return Ok(());
        }
        let Value::Object(fields) = value else {
            unreachable!("a struct serializes to an object")
        };
        for (name, value) in fields {
            match value {
                Value::Null => {}
                Value::String(text) => writeln!(out, "{name:<22} {text}")?,
                other => writeln!(out, "{name:<22} {other}")?,
            }
        }
        Ok(())
    }
}

/// Three decimals are plenty for every figure and keep the output readable.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
