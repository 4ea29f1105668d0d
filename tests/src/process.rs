//! Real `shoal agent` processes, for tests that kill agents with signals.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

/// The `shoal` binary of this build profile: next to the running executable (benchmark
/// binaries) or one level up (test executables live in `target/<profile>/deps`). A lone test
/// run that has not built it yet builds it first.
pub fn shoal_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("executable path");
            let dir = exe.parent().expect("executable directory");
            let beside = dir.join("shoal");
            if beside.exists() {
                return beside;
            }
            let profile_dir = dir.parent().expect("target directory");
            let binary = profile_dir.join("shoal");
            if !binary.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut build = Command::new(cargo);
                build.args(["build", "-p", "shoal-agent", "--bin", "shoal"]);
                if profile_dir
                    .file_name()
                    .is_some_and(|name| name == "release")
                {
                    build.arg("--release");
                }
                let status = build.status().expect("cargo runs");
                assert!(status.success(), "building the shoal binary failed");
            }
            binary
        })
        .clone()
}

/// A running agent process; killed when dropped so a failing test leaves nothing behind.
pub struct AgentProcess {
    child: Child,
    addr: String,
    /// The operations HTTP listener's address, when it is on.
    http: Option<String>,
    node_id: i32,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// How many of an agent's latest log lines are kept.
const LOG_LINES: usize = 10_000;

impl AgentProcess {
    /// Starts `shoal agent` with `args` (free loopback ports unless `--listen` or `--http` is
    /// given) and `env`, and waits until it has registered and listens.
    pub fn start(args: &[String], env: &[(String, String)]) -> AgentProcess {
        let mut command = Command::new(shoal_binary());
        command.arg("agent");
        if !args.iter().any(|a| a == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        // Agents side by side cannot share the default operations port.
        if !args.iter().any(|a| a == "--http") {
            command.args(["--http", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("SHOAL_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("shoal starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut node_id = None;
        let mut http = None;
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let status = child.wait().expect("agent exit status");
                panic!("agent exited before listening ({status})");
            };
            if let Some(rest) = line.split("node_id=").nth(1) {
                node_id = rest
                    .split_whitespace()
                    .next()
                    .and_then(|id| id.parse().ok());
            }
            if let Some(rest) = line.split(" http=").nth(1) {
                http = rest.split_whitespace().next().map(str::to_string);
            }
            if let Some(rest) = line.split("listen=").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        // Keep draining the log so the agent never blocks on a full pipe, and keep its tail.
        let log = Arc::new(Mutex::new(VecDeque::new()));
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in lines.map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            }
        });
        AgentProcess {
            child,
            addr,
            http,
            node_id: node_id.expect("the agent logs its node id before listening"),
            log,
        }
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> String {
        self.addr.clone()
    }

    /// The operations HTTP listener's address (`/metrics`, `/healthz`, `/readyz`).
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http
            .as_deref()
            .and_then(|addr| addr.parse().ok())
            .expect("the agent logs its HTTP address")
    }

    /// The node id the agent registered under.
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// Whether one of the agent's latest log lines contains every one of `words`.
    pub fn logged(&self, words: &[&str]) -> bool {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .any(|line| words.iter().all(|w| line.contains(w)))
    }

    /// The process id, for CPU and memory readings.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the agent gets no chance to flush, commit or deregister.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, then waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.sigterm();
        self.wait()
    }

    /// SIGTERM, without waiting: the agent drains, then exits.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit: its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().expect("exit status").code()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
