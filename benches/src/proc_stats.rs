//! CPU time and peak memory of the broker process, read from /proc (Linux only).

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// RSS is sampled this often; peaks shorter than this can be missed.
const RSS_INTERVAL: Duration = Duration::from_millis(250);

/// What the broker process used between [`AgentSampler::start`] and [`AgentSampler::finish`].
pub struct AgentUsage {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// Reads the process's CPU time at start and finish, and samples its RSS in between.
pub struct AgentSampler {
    pid: u32,
    ticks_per_second: f64,
    cpu_start: u64,
    peak_rss: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<()>,
}

impl AgentSampler {
    pub fn start(pid: u32) -> Result<Self> {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks <= 0 {
            bail!("sysconf(_SC_CLK_TCK) failed");
        }
        let cpu_start = cpu_ticks(pid)?;
        let peak_rss = Arc::new(AtomicU64::new(rss_bytes(pid)?));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak_rss, stop) = (Arc::clone(&peak_rss), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(rss) = rss_bytes(pid) {
                        peak_rss.fetch_max(rss, Ordering::Relaxed);
                    }
                    thread::park_timeout(RSS_INTERVAL);
                }
            })
        };
        Ok(AgentSampler {
            pid,
            ticks_per_second: ticks as f64,
            cpu_start,
            peak_rss,
            stop,
            sampler,
        })
    }

    pub fn finish(self) -> Result<AgentUsage> {
        let cpu_end = cpu_ticks(self.pid);
        let rss_end = rss_bytes(self.pid);
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.thread().unpark();
        // The sampler cannot panic; a failed join would only lose RSS samples.
        let _ = self.sampler.join();
        let cpu_ticks = cpu_end?.saturating_sub(self.cpu_start);
        Ok(AgentUsage {
            cpu_seconds: cpu_ticks as f64 / self.ticks_per_second,
            peak_rss_bytes: self.peak_rss.load(Ordering::Relaxed).max(rss_end?),
        })
    }
}

/// utime + stime of the process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let after_name = stat
        .rsplit_once(')')
        .with_context(|| format!("unexpected {path}"))?
        .1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {n} of {path}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Resident set size from the VmRSS line of /proc/PID/status.
fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}
