//! A child process whose stderr (its log) goes to a file, killed on `Drop`.
//!
//! DNet programs log one JSON object per line with `--log-format json`; the
//! kit reads those lines to learn what a program did (the addresses it bound,
//! that it is ready, what it counted when it stopped).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// Where logs are kept after their process ends; unset: a temporary folder
/// per process, removed with it.
static KEEP_LOGS_IN: OnceLock<PathBuf> = OnceLock::new();

/// Keeps every later process's log in `dir` (e.g. the chaos suite, whose
/// logs are read after the run).
pub fn keep_logs_in(dir: PathBuf) {
    let _ = KEEP_LOGS_IN.set(dir);
}

/// A running program.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    /// The temporary folder of the log, when logs are not kept.
    _log_dir: Option<tempfile::TempDir>,
}

impl Process {
    /// Starts `program` with `args` and, besides this process's environment,
    /// `env`; stdout is discarded, stderr goes to the log.
    ///
    /// # Errors
    /// The program cannot be started.
    pub fn start(program: &Path, args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Process> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let name = program
            .file_name()
            .map_or_else(|| "program".to_owned(), |n| n.to_string_lossy().into_owned());
        let (log, log_dir) = match KEEP_LOGS_IN.get() {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let n = STARTED.fetch_add(1, Ordering::SeqCst);
                (dir.join(format!("{n:03}-{name}.log")), None)
            }
            None => {
                let dir = tempfile::Builder::new().prefix("dnet-test-log-").tempdir()?;
                (dir.path().join(format!("{name}.log")), Some(dir))
            }
        };
        let child = Command::new(program)
            .args(args)
            // A tester's shell setting must not make every test's programs
            // export traces; a test that wants them passes --otlp-endpoint.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Process {
            name,
            child,
            log,
            _log_dir: log_dir,
        })
    }

    /// The operating-system process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, STOP, CONT, KILL).
    ///
    /// # Errors
    /// `kill` fails (e.g. the process is gone).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {} ({}) failed", self.id(), self.name);
        }
        Ok(())
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status once the process has ended, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the process to end.
    ///
    /// # Errors
    /// Still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let name = self.name.clone();
        crate::wait_for(&format!("{name} to exit"), limit, || {
            let exited = self.exited();
            async move { exited }
        })
        .await
    }

    /// Everything the program has logged so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines whose `message` is `message`, in order.
    #[must_use]
    pub fn events(&self, message: &str) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["message"] == message)
            .collect()
    }

    /// Waits up to `limit` for a JSON log line with `message`, and returns it.
    ///
    /// # Errors
    /// The process ended first, or the line did not come in time; the error
    /// carries the log.
    pub async fn wait_for_event(&mut self, message: &str, limit: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(event) = self.events(message).into_iter().next() {
                return Ok(event);
            }
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) before logging '{message}'; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} did not log '{message}' within {limit:?}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("[testkit] last lines of {} ({}):", self.name, self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("  {line}");
            }
        }
    }
}
