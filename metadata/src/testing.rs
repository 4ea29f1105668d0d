//! A throwaway PostgreSQL for tests, so the PostgreSQL backend is tested on every machine
//! that has the server binaries, with no setup.
//!
//! [`TestPostgres::start`] uses `SHOAL_TEST_DATABASE_URL` when set; otherwise it runs the
//! system's `initdb` and `pg_ctl` (from `PATH` or `/usr/lib/postgresql/*/bin`) in a temp dir,
//! listening on a free loopback port, and stops the cluster when dropped. PostgreSQL refuses
//! to run as root, so under uid 0 the cluster runs as the `postgres` user (via `runuser`).

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sqlx::Connection;

/// Why no test PostgreSQL could be had.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(
        "no PostgreSQL for tests: set SHOAL_TEST_DATABASE_URL, or install PostgreSQL \
         (initdb and pg_ctl on PATH or in /usr/lib/postgresql/*/bin); \
         SHOAL_SKIP_POSTGRES=1 skips these tests"
    )]
    NotFound,
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("test PostgreSQL I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("test PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    #[error("bad SHOAL_TEST_DATABASE_URL: {0}")]
    Url(#[from] url::ParseError),
}

/// A PostgreSQL server for tests; hands out a fresh database per test.
pub struct TestPostgres {
    /// URL of a database the harness may connect to for `CREATE DATABASE`.
    admin_url: url::Url,
    /// The local cluster, when the harness started one (none with `SHOAL_TEST_DATABASE_URL`).
    _cluster: Option<Cluster>,
}

impl TestPostgres {
    /// Like [`TestPostgres::start`], but `Ok(None)` when no PostgreSQL exists and
    /// `SHOAL_SKIP_POSTGRES=1` is set, so a test can return early on purpose.
    pub fn start_unless_skipped() -> Result<Option<Self>, HarnessError> {
        match Self::start() {
            Err(HarnessError::NotFound)
                if std::env::var("SHOAL_SKIP_POSTGRES").as_deref() == Ok("1") =>
            {
                eprintln!("SHOAL_SKIP_POSTGRES=1 and no PostgreSQL found: skipping");
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Uses `SHOAL_TEST_DATABASE_URL` or starts a local cluster (blocks for a second or two).
    /// The local cluster trades durability for speed (fsync off): right for tests.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(false)
    }

    /// Like [`TestPostgres::start`], but a local cluster keeps PostgreSQL's durability
    /// settings (fsync, synchronous_commit, full_page_writes on), as benchmarks need.
    pub fn start_durable() -> Result<Self, HarnessError> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Self, HarnessError> {
        if let Ok(url) = std::env::var("SHOAL_TEST_DATABASE_URL") {
            return Ok(Self {
                admin_url: url::Url::parse(&url)?,
                _cluster: None,
            });
        }
        let bin = find_binaries().ok_or(HarnessError::NotFound)?;
        let cluster = Cluster::start(bin, durable)?;
        Ok(Self {
            admin_url: url::Url::parse(&format!(
                "postgres://postgres@127.0.0.1:{}/postgres",
                cluster.port
            ))?,
            _cluster: Some(cluster),
        })
    }

    /// Stops the server (fast shutdown: connections are cut), waits `pause`, and starts it
    /// again on the same port. `false` when the server is not ours to restart
    /// (`SHOAL_TEST_DATABASE_URL`).
    pub fn restart(&self, pause: std::time::Duration) -> Result<bool, HarnessError> {
        let Some(cluster) = &self._cluster else {
            return Ok(false);
        };
        let data = cluster.data();
        cluster.run(
            "pg_ctl",
            &["stop", "-m", "fast", "-w", "-D", path_str(&data)?],
        )?;
        std::thread::sleep(pause);
        cluster.start_server()?;
        Ok(true)
    }

    /// Creates an empty database with a unique name and returns its URL.
    pub async fn create_database(&self) -> Result<String, HarnessError> {
        let name = format!("shoal_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(self.admin_url.as_str()).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let mut url = self.admin_url.clone();
        url.set_path(&name);
        Ok(url.into())
    }
}

/// A cluster in a temp dir, stopped (`pg_ctl stop -m immediate`) and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Run the server tools as `postgres` (we are root).
    as_postgres: bool,
    /// Keep fsync and synchronous commits on.
    durable: bool,
}

impl Cluster {
    fn start(bin: PathBuf, durable: bool) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new().prefix("shoal-pg-").tempdir()?;
        let as_postgres = std::fs::metadata("/proc/self")?.uid() == 0;
        if as_postgres {
            let uid = id_of("-u")?;
            let gid = id_of("-g")?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let mut cluster = Self {
            bin,
            dir,
            port: 0,
            as_postgres,
            durable,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        // The port is free when we look; another process may take it before the server
        // binds, so try a few.
        let mut last = None;
        for _ in 0..3 {
            cluster.port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts were made"))
    }

    /// Starts the server of an initialized cluster on `self.port`.
    fn start_server(&self) -> Result<(), HarnessError> {
        let data = self.data();
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='{}' \
             -c max_connections=200",
            self.port,
            path_str(self.dir.path())?
        );
        if !self.durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = self.dir.path().join("postgres.log");
        let args = [
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            path_str(&data)?,
            "-l",
            path_str(&log)?,
            "-o",
            &options,
        ];
        self.run("pg_ctl", &args).map_err(|e| {
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            match e {
                HarnessError::Command { command, detail } => HarnessError::Command {
                    command,
                    detail: format!("{detail}\nserver log:\n{server_log}"),
                },
                other => other,
            }
        })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a server tool from the temp dir (the tool may not be able to read our cwd).
    fn run(&self, tool: &str, args: &[&str]) -> Result<(), HarnessError> {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let output = command.args(args).current_dir(self.dir.path()).output()?;
        if output.status.success() {
            return Ok(());
        }
        Err(HarnessError::Command {
            command: format!("{} {}", program.display(), args.join(" ")),
            detail: format!(
                "{}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(data) = path_str(&self.data()) {
            let data = data.to_string();
            if let Err(e) = self.run("pg_ctl", &["stop", "-m", "immediate", "-w", "-D", &data]) {
                eprintln!("stopping the test PostgreSQL: {e}");
            }
        }
    }
}

fn path_str(path: &Path) -> Result<&str, HarnessError> {
    path.to_str().ok_or_else(|| {
        HarnessError::Io(std::io::Error::other(format!(
            "non-UTF-8 path {}",
            path.display()
        )))
    })
}

/// The `postgres` user's uid (`-u`) or gid (`-g`).
fn id_of(flag: &str) -> Result<u32, HarnessError> {
    let output = Command::new("id").args([flag, "postgres"]).output()?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| HarnessError::Command {
            command: format!("id {flag} postgres"),
            detail: format!(
                "running as root needs a `postgres` user: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
        })
}

/// The directory holding `initdb` and `pg_ctl`: from `PATH`, else the newest Debian install.
fn find_binaries() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_tools(dir))
    {
        return Some(dir);
    }
    let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .collect();
    installed.sort();
    installed.pop().map(|(_, bin)| bin)
}
