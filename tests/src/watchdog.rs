//! A hung test must fail, not hold the suite until CI gives up on it: every agent a test
//! starts arms a watchdog that ends the test process if the agent is still up long after
//! any test should have finished.

use std::sync::mpsc;
use std::time::Duration;

/// How long one test may keep an agent. The slowest tests take about a minute.
const LIMIT: Duration = Duration::from_secs(300);

/// Disarmed when dropped.
pub struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    /// Arms a watchdog for whatever `what` names in the message it dies with.
    pub fn arm(what: String) -> Watchdog {
        let (disarm, armed) = mpsc::channel::<()>();
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed test")
            .to_string();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(LIMIT) {
                eprintln!(
                    "{test}: {what} still running after {}s; the test hangs, aborting",
                    LIMIT.as_secs()
                );
                std::process::abort();
            }
        });
        Watchdog { _disarm: disarm }
    }
}

/// Logs of in-process agents on stderr when `SHOAL_TEST_LOG` holds a filter (for example
/// `SHOAL_TEST_LOG=info,shoal_agent=debug`), for debugging a test with `--nocapture`.
pub(crate) fn init_logging() {
    if let Ok(filter) = std::env::var("SHOAL_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}
