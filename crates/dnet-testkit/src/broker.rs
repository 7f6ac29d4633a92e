//! The RabbitMQ a suite talks to, and `rabbitmqctl` against it.
//!
//! Tests use the machine's broker, which other work shares: nothing here
//! stops or restarts it. A suite that needs a broker to die starts a
//! [`PrivateBroker`]: its own node name, ports and data folder, stopped and
//! removed on `Drop`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The default broker of the tests: the machine's RabbitMQ with guest/guest.
const LOCAL_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A RabbitMQ node: the URI programs connect to and the node name
/// `rabbitmqctl` addresses.
#[derive(Clone, Debug)]
pub struct Broker {
    /// What programs are given with `-a`.
    pub uri: String,
    /// `rabbitmqctl -n` of this node; `None` is rabbitmqctl's default node
    /// (the machine's broker).
    node: Option<String>,
}

impl Broker {
    /// The machine's broker: `DNET_TEST_AMQP`, else guest@127.0.0.1:5672.
    #[must_use]
    pub fn local() -> Broker {
        Broker {
            uri: std::env::var("DNET_TEST_AMQP").unwrap_or_else(|_| LOCAL_URI.to_owned()),
            node: None,
        }
    }

    /// `host:port` of the node's AMQP listener, from the URI.
    #[must_use]
    pub fn host_port(&self) -> Option<String> {
        let authority = self.uri.split_once("://")?.1.split('/').next()?;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        Some(if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5672")
        })
    }

    /// Runs `rabbitmqctl` against this node (blocking) and returns its output.
    ///
    /// # Errors
    /// rabbitmqctl is missing or fails; the error holds what it printed.
    pub fn rabbitmqctl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.tool("rabbitmqctl", args)
    }

    /// Runs one of RabbitMQ's command-line tools (`rabbitmqctl`,
    /// `rabbitmq-queues`, ...) against this node (blocking).
    ///
    /// # Errors
    /// The tool is missing or fails; the error holds what it printed.
    pub fn tool(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new(program);
        if let Some(node) = &self.node {
            command.args(["-n", node]);
        }
        let output = command
            .args(args)
            .output()
            .with_context(|| format!("cannot run {program} (the test broker must be local)"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "{program} {} failed: {}{}",
                args.join(" "),
                stdout,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(stdout)
    }

    /// Deletes a queue whatever it holds (blocking).
    ///
    /// # Errors
    /// See [`Broker::rabbitmqctl`].
    pub fn delete_queue(&self, name: &str) -> anyhow::Result<()> {
        self.rabbitmqctl(&["delete_queue", name]).map(drop)
    }

    /// (ready, unacknowledged, consumers) of a queue, as the broker counts
    /// them (blocking); `None` when the queue does not exist.
    ///
    /// # Errors
    /// See [`Broker::rabbitmqctl`]; a listing that cannot be read.
    pub fn queue_counts(&self, name: &str) -> anyhow::Result<Option<(u64, u64, u64)>> {
        let listing = self.rabbitmqctl(&[
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ])?;
        for line in listing.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            if let [queue, ready, unacked, consumers] = fields[..] {
                if queue == name {
                    let number = |text: &str| text.trim().parse::<u64>().context("a count in list_queues");
                    return Ok(Some((number(ready)?, number(unacked)?, number(consumers)?)));
                }
            }
        }
        Ok(None)
    }

    /// Asks the broker to close the connection whose client-provided name is
    /// `connection_name` (blocking).
    ///
    /// # Errors
    /// No such connection, or rabbitmqctl fails.
    pub fn close_connection(&self, connection_name: &str) -> anyhow::Result<()> {
        let listing = self.rabbitmqctl(&[
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])?;
        let pid = listing
            .lines()
            .filter(|line| line.contains(&format!("\"{connection_name}\"")))
            .find_map(|line| line.split('\t').next().map(str::to_owned))
            .with_context(|| format!("no connection named {connection_name} in:\n{listing}"))?;
        self.rabbitmqctl(&["close_connection", &pid, "closed by a test"])
            .map(drop)
    }

    /// The operating-system process id of the node (blocking), to prove it
    /// was not restarted.
    ///
    /// # Errors
    /// The node does not answer.
    pub fn os_pid(&self) -> anyhow::Result<u32> {
        let status = self.rabbitmqctl(&["status"])?;
        status
            .lines()
            .find_map(|line| line.trim().strip_prefix("OS PID: "))
            .and_then(|pid| pid.trim().parse().ok())
            .context("no OS PID in rabbitmqctl status")
    }
}

/// A RabbitMQ node of the suite's own, on its own ports and data folder,
/// stopped and removed on `Drop`. Starting takes a few seconds.
#[derive(Debug)]
pub struct PrivateBroker {
    broker: Broker,
    node: String,
    /// Its Erlang distribution port (kept across restarts).
    dist_port: u16,
    /// Config, data and logs; kept until the node has stopped.
    dir: tempfile::TempDir,
}

impl PrivateBroker {
    /// Starts the node and waits (up to 60 s) until it accepts connections.
    ///
    /// # Errors
    /// rabbitmq-server is missing, or the node does not come up.
    pub fn start() -> anyhow::Result<PrivateBroker> {
        PrivateBroker::start_with_config("")
    }

    /// [`PrivateBroker::start`] with more `rabbitmq.conf` lines (e.g.
    /// `max_message_size = 1048576`).
    ///
    /// # Errors
    /// rabbitmq-server is missing, or the node does not come up.
    pub fn start_with_config(config: &str) -> anyhow::Result<PrivateBroker> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let count = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let node = format!("dnet-test-{}-{count}@localhost", std::process::id());
        let (amqp_port, dist_port) = (crate::free_port(), crate::free_port());
        let dir = tempfile::Builder::new().prefix("dnet-rabbitmq-").tempdir()?;
        let path = dir.path().to_owned();
        // Our own config file, so the machine's (which names port 5672) is not read.
        std::fs::write(
            path.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{amqp_port}\n{config}\n"),
        )?;
        std::fs::write(path.join("enabled_plugins"), "[].\n")?;
        let private = PrivateBroker {
            broker: Broker {
                uri: format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"),
                node: Some(node.clone()),
            },
            node,
            dist_port,
            dir,
        };
        give_to_rabbitmq_user(&path)?;
        private.launch()?;
        // A node starts in about 5 s here, but the first start on a fresh
        // machine reads Erlang and RabbitMQ from a cold disk cache: once, on a
        // new machine, the bench's first node was not up within 60 s.
        private.wait_until_up(Duration::from_secs(120))?;
        Ok(private)
    }

    /// Starts the node's server process (detached), with its data as it was.
    fn launch(&self) -> anyhow::Result<()> {
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .envs(self.environment(self.dist_port))
            .status()
            .context("cannot run rabbitmq-server")?;
        if !status.success() {
            bail!("rabbitmq-server -detached failed for {}", self.node);
        }
        Ok(())
    }

    /// The Erlang node name (`name@localhost`).
    #[must_use]
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The operating-system pid of the node, from its pid file.
    ///
    /// # Errors
    /// No readable pid file (the node is not running).
    pub fn pid(&self) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("pid"))?;
        text.trim().parse().context("a pid in the node's pid file")
    }

    /// Kills the node's process with SIGKILL (no goodbye to its clients or
    /// its cluster) and waits until it is gone.
    ///
    /// # Errors
    /// No pid, or the process does not end within 10 s.
    pub fn kill(&self) -> anyhow::Result<()> {
        let pid = self.pid()?;
        // A stale pid file must not kill a process that reused the number.
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&command).contains("beam") {
            let _ = std::fs::remove_file(self.dir.path().join("pid"));
            return Ok(());
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status()?;
        let gone = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() {
            if gone.elapsed() > Duration::from_secs(10) {
                bail!("node {} (pid {pid}) did not end after SIGKILL", self.node);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.dir.path().join("pid"));
        Ok(())
    }

    /// Stops the node (its process ends; its data stays for a restart).
    ///
    /// # Errors
    /// rabbitmqctl fails.
    pub fn stop(&self) -> anyhow::Result<()> {
        let pid_file = self.dir.path().join("pid").display().to_string();
        self.broker.rabbitmqctl(&["stop", &pid_file]).map(drop)
    }

    /// Starts the node again after [`PrivateBroker::kill`] or
    /// [`PrivateBroker::stop`], on the same ports and data (a cluster member
    /// rejoins its cluster), and waits until it is up (`limit`).
    ///
    /// # Errors
    /// It does not come up in time.
    pub fn restart(&self, limit: Duration) -> anyhow::Result<()> {
        self.launch()?;
        self.wait_until_up(limit)
    }

    /// Whether the node answers rabbitmqctl now.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.broker.rabbitmqctl(&["await_startup", "--timeout", "1"]).is_ok()
    }

    /// The node, for programs and rabbitmqctl.
    #[must_use]
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    fn environment(&self, dist_port: u16) -> Vec<(&'static str, String)> {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_DIST_PORT", dist_port.to_string()),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_PID_FILE", path("pid")),
            ("RABBITMQ_PLUGINS_EXPAND_DIR", path("plugins-expand")),
        ]
    }

    fn wait_until_up(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if self.broker.rabbitmqctl(&["await_startup", "--timeout", "5"]).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        bail!(
            "private RabbitMQ node {} did not start within {limit:?}; its logs are in {}",
            self.node,
            self.dir.path().join("log").display()
        )
    }

    /// Stops the RabbitMQ application (connections drop, the node stays).
    ///
    /// # Errors
    /// rabbitmqctl fails.
    pub fn stop_app(&self) -> anyhow::Result<()> {
        self.broker.rabbitmqctl(&["stop_app"]).map(drop)
    }

    /// Starts the application again after [`PrivateBroker::stop_app`].
    ///
    /// # Errors
    /// rabbitmqctl fails.
    pub fn start_app(&self) -> anyhow::Result<()> {
        self.broker.rabbitmqctl(&["start_app"]).map(drop)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if !self.dir.path().join("pid").exists() {
            return; // killed and not started again
        }
        // `stop PIDFILE` returns once the node's process has exited.
        if let Err(error) = self.stop() {
            eprintln!("[testkit] could not stop private RabbitMQ node {}: {error}", self.node);
            let _ = self.kill();
        }
    }
}

/// The broker runs as the `rabbitmq` user (rabbitmq-server switches to it
/// when started as root): let it write the node's folder.
fn give_to_rabbitmq_user(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if is_root {
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(path)
            .status()?;
        if !status.success() {
            bail!("cannot give {} to the rabbitmq user", path.display());
        }
    }
    Ok(())
}
