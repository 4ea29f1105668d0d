//! Test harness: starts real agents on loopback for tests that drive them with real clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use shoal_agent::{Agent, AgentConfig};

mod process;
mod s3;
mod watchdog;
pub use process::{AgentProcess, shoal_binary};
pub use s3::TestS3;
pub use watchdog::Watchdog;

/// The agent binary's allocator, so in-process agents survive frames that claim huge arrays
/// the same way the `shoal` binary does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// An agent on the embedded default (SQLite + local directory) in a temporary directory,
/// listening on a free loopback port.
pub struct TestAgent {
    agent: Option<Agent>,
    config: AgentConfig,
    dir: DataDir,
    _watchdog: Watchdog,
}

enum DataDir {
    Owned(tempfile::TempDir),
    Borrowed(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Owned(dir) => dir.path(),
            DataDir::Borrowed(path) => path,
        }
    }
}

impl TestAgent {
    /// Starts an agent with default settings in a fresh directory.
    pub async fn start() -> TestAgent {
        Self::start_with(|_| {}).await
    }

    /// Starts an agent in a fresh directory after `tweak` adjusts its configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut AgentConfig)) -> TestAgent {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::start_in(DataDir::Owned(dir), tweak).await
    }

    async fn start_in(dir: DataDir, tweak: impl FnOnce(&mut AgentConfig)) -> TestAgent {
        watchdog::init_logging();
        let watchdog = Watchdog::arm("an in-process agent".into());
        let mut config = AgentConfig::local(dir.path(), "127.0.0.1:0".parse().unwrap());
        tweak(&mut config);
        let agent = Agent::start(config.clone()).await.expect("agent starts");
        // Restarts bind the same port, so clients keep their bootstrap address.
        config.listen = agent.local_addr();
        TestAgent {
            agent: Some(agent),
            config,
            dir,
            _watchdog: watchdog,
        }
    }

    /// The Kafka listener address.
    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    /// The operations HTTP listener's address, when the test turned it on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.agent.as_ref().and_then(Agent::http_addr)
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> String {
        self.addr().to_string()
    }

    /// The configuration the agent runs with (its metadata and object URLs among it).
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The directory holding the agent's metadata and objects.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the agent gracefully and starts it again on the same data and port.
    pub async fn restart(mut self) -> TestAgent {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
        let config = self.config.clone();
        let dir = std::mem::replace(&mut self.dir, DataDir::Borrowed(PathBuf::new()));
        let agent = Agent::start(config.clone()).await.expect("agent restarts");
        TestAgent {
            agent: Some(agent),
            config,
            dir,
            _watchdog: Watchdog::arm("an in-process agent".into()),
        }
    }

    /// Stops the agent gracefully.
    pub async fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.shutdown().await;
        }
    }
}
