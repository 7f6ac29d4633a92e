//! Containers of DNet's images, run by the Docker engine on the host's
//! network and removed on `Drop`; their logs read as a process's are.
//!
//! Only `--network host`: every call stays on loopback (bridge networks use
//! private address ranges that must not carry test traffic). The engine is
//! driven with its command-line client (`DNET_DOCKER`, default
//! `/usr/bin/docker`, Debian's).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// The Docker client.
fn docker_program() -> String {
    std::env::var("DNET_DOCKER").unwrap_or_else(|_| "/usr/bin/docker".to_owned())
}

/// Runs `docker ARGS` and returns its stdout.
///
/// # Errors
/// The client cannot run, or the command fails (the error carries its stderr).
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(docker_program())
        .args(args)
        .output()
        .with_context(|| format!("cannot run {} (scripts/setup.sh docker)", docker_program()))?;
    if !output.status.success() {
        bail!(
            "docker {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A container started in the background.
#[derive(Debug)]
pub struct Container {
    /// Its unique name (what `docker` commands address it by).
    pub name: String,
    pub image: String,
}

impl Container {
    /// `docker run --detach --network host OPTIONS IMAGE ARGS`, named
    /// `<prefix>-<pid>-<n>`.
    ///
    /// # Errors
    /// The engine refused to start it (e.g. the image is missing).
    pub fn run(prefix: &str, image: &str, options: &[String], args: &[String]) -> anyhow::Result<Container> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::SeqCst)
        );
        let mut command: Vec<&str> = vec!["run", "--detach", "--network", "host", "--name", &name];
        command.extend(options.iter().map(String::as_str));
        command.push(image);
        command.extend(args.iter().map(String::as_str));
        docker(&command)?;
        Ok(Container {
            name,
            image: image.to_owned(),
        })
    }

    /// Everything it has written (stdout, then stderr: DNet programs log to stderr).
    #[must_use]
    pub fn log(&self) -> String {
        Command::new(docker_program())
            .args(["logs", &self.name])
            .output()
            .map(|output| {
                String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
            })
            .unwrap_or_default()
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

    /// `docker inspect` of its state (`Running`, `ExitCode`, `Pid`, ...).
    ///
    /// # Errors
    /// The engine does not know it.
    pub fn state(&self) -> anyhow::Result<Value> {
        let state = docker(&["inspect", "--format", "{{json .State}}", &self.name])?;
        Ok(serde_json::from_str(&state)?)
    }

    /// Waits up to `limit` for a JSON log line with `message`, and returns it.
    ///
    /// # Errors
    /// The container stopped first, or the line did not come in time; the
    /// error carries the log.
    pub async fn wait_for_event(&self, message: &str, limit: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(event) = self.events(message).into_iter().next() {
                return Ok(event);
            }
            let state = self.state()?;
            if state["Running"] != true {
                bail!(
                    "{} ({}) stopped (exit code {}) before logging '{message}'; its log:\n{}",
                    self.name,
                    self.image,
                    state["ExitCode"],
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
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The effective uid of its main process, as the host's kernel sees it.
    ///
    /// # Errors
    /// It is not running.
    pub fn uid(&self) -> anyhow::Result<u32> {
        let pid = self.state()?["Pid"].as_u64().filter(|pid| *pid > 0);
        let pid = pid.with_context(|| format!("{} is not running", self.name))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        // "Uid:\treal\teffective\tsaved\tfs"
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|uid| uid.parse().ok())
            .with_context(|| format!("no Uid line in /proc/{pid}/status"))
    }

    /// `docker stop --time GRACE` (SIGTERM, SIGKILL after `grace`) in the
    /// background; `wait_exit` then gives its exit code.
    ///
    /// # Errors
    /// The client cannot run.
    pub fn stop_in_background(&self, grace: Duration) -> anyhow::Result<std::process::Child> {
        Command::new(docker_program())
            .args(["stop", "--time", &grace.as_secs().to_string(), &self.name])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("docker stop")
    }

    /// Waits up to `limit` for it to stop, and returns its exit code.
    ///
    /// # Errors
    /// Still running after `limit`.
    pub async fn wait_exit(&self, limit: Duration) -> anyhow::Result<i64> {
        crate::wait_for(&format!("{} to stop", self.name), limit, || async {
            let state = self.state().ok()?;
            (state["Running"] == false)
                .then(|| state["ExitCode"].as_i64())
                .flatten()
        })
        .await
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("[testkit] last lines of container {} ({}):", self.name, self.image);
            for line in tail.into_iter().rev() {
                eprintln!("  {line}");
            }
        }
        let _ = docker(&["rm", "--force", "--volumes", &self.name]);
    }
}

/// Every path in `image`'s file system (`docker export` of a container
/// created from it, never started), without the leading `./`.
///
/// # Errors
/// The image is missing, or the listing fails.
pub fn files_of(image: &str) -> anyhow::Result<Vec<String>> {
    let created = docker(&["create", image])?;
    let id = created.trim();
    let listing = Command::new("sh")
        .args(["-c", "\"$0\" export \"$1\" | tar -t", &docker_program(), id])
        .output();
    let _ = docker(&["rm", id]);
    let listing = listing.context("docker export | tar -t")?;
    if !listing.status.success() {
        bail!(
            "cannot list the files of {image}: {}",
            String::from_utf8_lossy(&listing.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|path| path.trim_start_matches("./").to_owned())
        .filter(|path| !path.is_empty())
        .collect())
}
