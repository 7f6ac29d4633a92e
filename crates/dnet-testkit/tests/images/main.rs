//! The images of `make images`, run as the Kubernetes examples configure
//! them, answer as the host's binaries do.
//!
//! The demo's cascade 8 -> 12 -> 16 of `example/distrib/` (a transmission
//! unit and a computation unit per exit), once as containers of the images
//! (`--network host`, the manifests' environment, mounts and resource
//! limits) and once as the host's binaries with the same environment; the
//! test-unit image and binary send the demo's requests. Then: the same
//! answers; every container runs as its image's non-root user; the probes
//! the manifests declare answer; `docker stop` drains a call in flight and
//! every container exits 0; the images hold no shell history, build tools,
//! sources or secrets.
//!
//! What the test changes in a manifest's configuration, and nothing else:
//! - `0.0.0.0:P` of a declared containerPort P: a free loopback port (the
//!   host's network is shared by all); `DNET_NEXT_ADDRESS`: the next unit's;
//!   the broker's `amqp://` address: the machine's RabbitMQ;
//! - `DNET_QUEUE_NAME`: a queue of this test; the Secret's keys: the broker's
//!   user and password;
//! - volumes: `weights` is a folder that the pod's initContainer (the
//!   weights image) fills, as an emptyDir; `thresholds` a folder holding the
//!   demo's thresholds, as the ConfigMap. The binaries read the same files.
//!
//! `make test-images` runs it (part of `make test`): it needs the images and
//! a Docker engine, so plain `cargo test` skips it.

mod closure;
mod manifest;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use dnet_testkit::container::{docker, files_of, Container};
use dnet_testkit::grpc::health;
use dnet_testkit::metrics::http_status;
use dnet_testkit::programs::{bin_dir, binary};
use dnet_testkit::{free_port, wait_for, Broker, Metrics, Process, TestQueue};
use manifest::{ContainerSpec, EnvSource, Probe};
use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;

/// Time budget of each wait: a unit loads its model in seconds on a quiet
/// machine; a busy 2-core one with six programs starting may take minutes.
const PATIENCE: Duration = Duration::from_secs(300);
/// The demo's requests (scripts/demo.sh): its number, one caller, in order.
const REQUEST_ARGS: [&str; 5] = ["-n", "8", "-c", "1", "--each"];
/// The demo's thresholds of exits 8 and 12 (scripts/cascade.sh): inside the
/// confidences of random weights, so that answers come from every exit.
const DEMO_THRESHOLDS: [(usize, f64); 2] = [(8, 0.10682), (12, 0.10888)];
/// What `make images` puts in the weights image without a trained file.
const DEMO_WEIGHTS: &str = "random, seed 1";
/// The weights image this test runs in place of the manifests' `:epoch53`
/// (the original's trained model, which `make images` builds only from
/// that file): `DNET_WEIGHTS_IMAGE`, else what `make images` tags the
/// random weights of seed 1.
const RANDOM_WEIGHTS_IMAGE: &str = "dnet/inception-weights:random-seed1";
/// What the logs say when a program is ready.
const TU_READY: &str = "ready: publishing to the computation queue";
const CU_READY: &str = "consuming";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the images and a Docker engine: make test-images"]
async fn the_images_answer_as_the_binaries_do_as_their_manifests_configure_them() {
    let setting = Setting::new().expect("the manifests, weights and thresholds");

    let started = Instant::now();
    let binaries = Cascade::start(Runtime::Binaries, &setting)
        .await
        .expect("the binaries' cascade");
    println!("binaries: ready {:.1} s after start", started.elapsed().as_secs_f64());
    binaries.check_probes().await.expect("the binaries' probes");
    let expected = binaries.demo_requests(&setting).await.expect("the binaries answer");
    drop(binaries);

    let started = Instant::now();
    let images = Cascade::start(Runtime::Images, &setting)
        .await
        .expect("the images' cascade");
    let ready = started.elapsed();
    let answers = images.demo_requests(&setting).await.expect("the images answer");
    println!(
        "images: ready {:.1} s after the first container started; first answer {:.1} ms after that",
        ready.as_secs_f64(),
        answers.first_latency_ms
    );
    assert_eq!(
        answers.answers, expected.answers,
        "the images' cascade answers (exit, category) as the binaries' does"
    );
    let exits: BTreeSet<u64> = answers.answers.iter().filter_map(|a| a.0).collect();
    println!("answers by exit: {exits:?} ({})", setting.weights_origin);
    if setting.weights_origin == DEMO_WEIGHTS {
        // The demo's thresholds on the demo's weights answer at every exit:
        // every hop between containers carried a request.
        assert_eq!(exits, BTreeSet::from([8, 12, 16]), "{answers:?}");
    }

    images.check_users().expect("non-root users");
    images.check_probes().await.expect("the images' probes");
    images.stop_draining_a_call(&setting).await.expect("docker stop drains");
    images.stop_all().await.expect("every container exits 0");
    for image in setting.images() {
        check_hygiene(&image).unwrap_or_else(|e| panic!("{image}: {e:#}"));
    }
}

/// The manifests, and the files the pods mount.
struct Setting {
    broker: Broker,
    /// Per exit (8, 12, 16): the transmission unit's and the computation unit's specs.
    units: Vec<(u8, ContainerSpec, ContainerSpec)>,
    test_unit: ContainerSpec,
    /// Host folders by volume name.
    volumes: BTreeMap<String, PathBuf>,
    /// The weights image's `org.dnet.weights` label.
    weights_origin: String,
    _folders: Vec<tempfile::TempDir>,
}

impl Setting {
    fn new() -> anyhow::Result<Setting> {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../example");
        let mut units = Vec::new();
        let mut init = None;
        for exit in [8, 12, 16] {
            let manifest = examples.join(format!("distrib/dnet-unit-{exit}.yaml"));
            let tu = manifest::pod_with(&manifest, "transmission-unit")?;
            let cu = manifest::pod_with(&manifest, "computation-unit")?;
            init = cu.init_containers.first().cloned().map(|mut init| {
                init.image = weights_image();
                init
            });
            units.push((
                exit,
                tu.container("transmission-unit")?.clone(),
                cu.container("computation-unit")?.clone(),
            ));
        }
        let test_unit = manifest::pod_with(&examples.join("dnet-testunit.yaml"), "test-unit")?
            .container("test-unit")?
            .clone();
        let init = init.context("the computation unit's pod has no initContainer for its weights")?;

        // An emptyDir is world-writable: the initContainer writes as its own user.
        let weights = folder(0o777)?;
        let thresholds = folder(0o755)?;
        let mut values = vec!["1.0".to_owned(); 15];
        for (exit, value) in DEMO_THRESHOLDS {
            values[exit - 1] = value.to_string();
        }
        std::fs::write(thresholds.path().join("thresholds"), values.join(",") + "\n")?;
        let volumes = BTreeMap::from([
            ("weights".to_owned(), weights.path().to_owned()),
            ("thresholds".to_owned(), thresholds.path().to_owned()),
        ]);
        fetch_weights(&init, &volumes)?;
        let weights_origin = docker(&[
            "image",
            "inspect",
            "--format",
            r#"{{index .Config.Labels "org.dnet.weights"}}"#,
            &init.image,
        ])?
        .trim()
        .to_owned();
        Ok(Setting {
            broker: Broker::local(),
            units,
            test_unit,
            volumes,
            weights_origin,
            _folders: vec![weights, thresholds],
        })
    }

    /// Every image the manifests name: what `make images` builds.
    fn images(&self) -> BTreeSet<String> {
        let mut images: BTreeSet<String> = self
            .units
            .iter()
            .flat_map(|(_, tu, cu)| [tu.image.clone(), cu.image.clone()])
            .collect();
        images.insert(self.test_unit.image.clone());
        images.insert(weights_image());
        images
    }
}

fn weights_image() -> String {
    std::env::var("DNET_WEIGHTS_IMAGE").unwrap_or_else(|_| RANDOM_WEIGHTS_IMAGE.to_owned())
}

/// A temporary folder with `mode`, readable by the containers' users.
fn folder(mode: u32) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("dnet-images-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode))?;
    Ok(dir)
}

/// Runs the pod's initContainer (the weights image's copy into the emptyDir)
/// as the kubelet would, and waits for it to succeed.
fn fetch_weights(init: &ContainerSpec, volumes: &BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    let (options, args) = docker_options(init, &[], volumes)?;
    let container = Container::run("dnet-fetch-weights", &init.image, &options, &args)?;
    let code = docker(&["wait", &container.name])?;
    if code.trim() != "0" {
        bail!("the initContainer exited {}: {}", code.trim(), container.log());
    }
    Ok(())
}

/// `docker run` options and arguments for `spec` with `env`: its mounts
/// (host folders), resource limits and command.
fn docker_options(
    spec: &ContainerSpec,
    env: &[(String, String)],
    volumes: &BTreeMap<String, PathBuf>,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let mut options = Vec::new();
    for (name, value) in env {
        options.extend(["--env".to_owned(), format!("{name}={value}")]);
    }
    for mount in &spec.mounts {
        let source = volumes
            .get(&mount.volume)
            .with_context(|| format!("{}: the test has no volume {}", spec.name, mount.volume))?;
        let read_only = if mount.read_only { ",readonly" } else { "" };
        options.extend([
            "--mount".to_owned(),
            format!("type=bind,source={},target={}{read_only}", source.display(), mount.path),
        ]);
    }
    if let Some(memory) = &spec.memory_limit {
        options.extend(["--memory".to_owned(), memory.clone()]);
    }
    if let Some(cpus) = &spec.cpu_limit {
        options.extend(["--cpus".to_owned(), cpus.clone()]);
    }
    let mut args = Vec::new();
    if let Some((entrypoint, rest)) = spec.command.split_first() {
        options.extend(["--entrypoint".to_owned(), entrypoint.clone()]);
        args = rest.to_vec();
    }
    Ok((options, args))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Runtime {
    Binaries,
    Images,
}

/// A program of the cascade, as a host process or a container.
enum Running {
    Process(Process),
    Container(Container),
}

/// One program: its manifest's spec and where its declared ports are.
struct Program {
    exit: u8,
    spec: ContainerSpec,
    /// Host address by declared containerPort.
    ports: BTreeMap<u16, SocketAddr>,
    running: Running,
}

impl Program {
    async fn start(
        runtime: Runtime,
        exit: u8,
        spec: &ContainerSpec,
        env: Configured,
        setting: &Setting,
    ) -> anyhow::Result<Program> {
        let running = match runtime {
            Runtime::Binaries => {
                // The same variables; a path under a mount point is the host folder mounted there.
                let env: Vec<(String, String)> = env
                    .env
                    .into_iter()
                    .map(|(name, value)| (name, host_path(&value, spec, &setting.volumes)))
                    .collect();
                let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                Running::Process(Process::start(&binary(&bin_dir(), &spec.name)?, &[], &env)?)
            }
            Runtime::Images => {
                let (options, args) = docker_options(spec, &env.env, &setting.volumes)?;
                Running::Container(Container::run(
                    &format!("dnet-{}", spec.name),
                    &spec.image,
                    &options,
                    &args,
                )?)
            }
        };
        Ok(Program {
            exit,
            spec: spec.clone(),
            ports: env.ports,
            running,
        })
    }

    async fn wait_for_event(&mut self, message: &str) -> anyhow::Result<Value> {
        match &mut self.running {
            Running::Process(process) => process.wait_for_event(message, PATIENCE).await,
            Running::Container(container) => container.wait_for_event(message, PATIENCE).await,
        }
    }

    fn container(&self) -> anyhow::Result<&Container> {
        match &self.running {
            Running::Container(container) => Ok(container),
            Running::Process(_) => bail!("{} runs as a host process", self.spec.name),
        }
    }

    fn port(&self, container_port: u16) -> anyhow::Result<SocketAddr> {
        self.ports
            .get(&container_port)
            .copied()
            .with_context(|| format!("{}: no port {container_port}", self.spec.name))
    }
}

/// `value` with a mount path prefix replaced by the host folder mounted there.
fn host_path(value: &str, spec: &ContainerSpec, volumes: &BTreeMap<String, PathBuf>) -> String {
    for mount in &spec.mounts {
        if let (Some(rest), Some(folder)) = (value.strip_prefix(&mount.path), volumes.get(&mount.volume)) {
            return format!("{}{rest}", folder.display());
        }
    }
    value.to_owned()
}

/// A spec's environment for this test, and where its ports went.
struct Configured {
    env: Vec<(String, String)>,
    ports: BTreeMap<u16, SocketAddr>,
}

/// The manifest's environment with the changes listed in the module's doc.
fn configure(
    spec: &ContainerSpec,
    broker: &Broker,
    queue: &str,
    next: Option<SocketAddr>,
) -> anyhow::Result<Configured> {
    let (user, password) = credentials(&broker.uri)?;
    let broker_address = broker.host_port().context("the broker's host:port")?;
    let declared: BTreeSet<u16> = spec.ports.values().copied().collect();
    let mut ports = BTreeMap::new();
    let mut env = Vec::new();
    for (name, source) in &spec.env {
        let value = match source {
            EnvSource::Secret(key) if key == "username" => user.clone(),
            EnvSource::Secret(key) if key == "password" => password.clone(),
            EnvSource::Secret(key) => bail!("{}: {name} reads secret key {key}, unknown to the test", spec.name),
            EnvSource::Value(_) if name == "DNET_QUEUE_NAME" => queue.to_owned(),
            EnvSource::Value(_) if name == "DNET_NEXT_ADDRESS" => next
                .with_context(|| format!("{}: a next unit where the test has none", spec.name))?
                .to_string(),
            EnvSource::Value(uri) if uri.starts_with("amqp://") => {
                let path = uri["amqp://".len()..]
                    .find('/')
                    .map_or("", |i| &uri["amqp://".len() + i..]);
                format!("amqp://{broker_address}{path}")
            }
            EnvSource::Value(value) => {
                let port = value.strip_prefix("0.0.0.0:").and_then(|p| p.parse::<u16>().ok());
                match port.filter(|p| declared.contains(p)) {
                    Some(port) => {
                        let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
                        ports.insert(port, address);
                        address.to_string()
                    }
                    None => value.clone(),
                }
            }
        };
        env.push((name.clone(), value));
    }
    if let Some(port) = declared.iter().find(|port| !ports.contains_key(port)) {
        bail!("{}: port {port} is declared but no DNET_* variable binds it", spec.name);
    }
    if next.is_some() && !env.iter().any(|(name, _)| name == "DNET_NEXT_ADDRESS") {
        bail!("{}: no DNET_NEXT_ADDRESS, yet a unit follows", spec.name);
    }
    Ok(Configured { env, ports })
}

/// (user, password) of an `amqp://user:password@host/...` URI.
fn credentials(uri: &str) -> anyhow::Result<(String, String)> {
    let userinfo = uri
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo)
        .with_context(|| format!("no credentials in the broker URI {uri}"))?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    Ok((user.to_owned(), password.to_owned()))
}

/// The cascade 8 -> 12 -> 16, each exit a transmission unit and a computation unit.
struct Cascade {
    runtime: Runtime,
    /// Declared before the queues: programs stop before their queues go.
    programs: Vec<Program>,
    _queues: Vec<TestQueue>,
}

/// The demo's requests as test-unit printed them.
#[derive(Debug)]
struct Answers {
    /// Per request in order: (exit, category), or (None, how it failed).
    answers: Vec<(Option<u64>, String)>,
    first_latency_ms: f64,
}

impl Cascade {
    async fn start(runtime: Runtime, setting: &Setting) -> anyhow::Result<Cascade> {
        let mut cascade = Cascade {
            runtime,
            programs: Vec::new(),
            _queues: Vec::new(),
        };
        let mut next = None;
        for (exit, tu, cu) in setting.units.iter().rev() {
            let queue = TestQueue::new(&setting.broker);
            // The computation unit answers its transmission unit; only that one forwards.
            for (spec, next) in [(cu, None), (tu, next)] {
                let env = configure(spec, &setting.broker, queue.name(), next)?;
                cascade
                    .programs
                    .push(Program::start(runtime, *exit, spec, env, setting).await?);
            }
            let grpc = tu
                .ports
                .get("grpc")
                .context("the transmission unit has no port 'grpc'")?;
            next = Some(cascade.programs.last().context("started")?.port(*grpc)?);
            cascade._queues.push(queue);
        }
        for program in &mut cascade.programs {
            let ready = if program.spec.name == "transmission-unit" {
                TU_READY
            } else {
                CU_READY
            };
            program.wait_for_event(ready).await?;
        }
        Ok(cascade)
    }

    fn program(&self, exit: u8, name: &str) -> anyhow::Result<&Program> {
        self.programs
            .iter()
            .find(|p| p.exit == exit && p.spec.name == name)
            .with_context(|| format!("no {name} of exit {exit}"))
    }

    /// The first unit's gRPC address.
    fn first_unit(&self, setting: &Setting) -> anyhow::Result<SocketAddr> {
        let first = self.program(setting.units[0].0, "transmission-unit")?;
        first.port(*first.spec.ports.get("grpc").context("no port 'grpc'")?)
    }

    /// test-unit (the binary or the image, as the cascade) sends the demo's requests.
    async fn demo_requests(&self, setting: &Setting) -> anyhow::Result<Answers> {
        let mut args = vec!["-a".to_owned(), self.first_unit(setting)?.to_string()];
        args.extend(REQUEST_ARGS.map(str::to_owned));
        let printed = match self.runtime {
            Runtime::Binaries => {
                let output = std::process::Command::new(binary(&bin_dir(), "test-unit")?)
                    .args(&args)
                    .output()?;
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
            Runtime::Images => {
                let client = Container::run("dnet-test-unit", &setting.test_unit.image, &[], &args)?;
                client.wait_exit(PATIENCE).await?;
                client.log()
            }
        };
        parse_answers(&printed)
    }

    /// Every program's probes, as its manifest declares them, say it is
    /// serving (readiness: once its broker session and model are up).
    async fn check_probes(&self) -> anyhow::Result<()> {
        for program in &self.programs {
            for (kind, probe) in &program.spec.probes {
                let what = format!("the {kind} probe of {} {}: {probe:?}", program.spec.name, program.exit);
                match probe {
                    Probe::Grpc { port, service } => {
                        let address = program.port(*port)?;
                        wait_for(&what, PATIENCE, || async {
                            (health(address, service).await == Some(ServingStatus::Serving)).then_some(())
                        })
                        .await?;
                    }
                    Probe::Http { port, path } => {
                        let address = program.port(*port)?;
                        wait_for(&what, PATIENCE, || async {
                            (http_status(address, path).await.ok() == Some(200)).then_some(())
                        })
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every container's process runs as its image's user, which is not root.
    fn check_users(&self) -> anyhow::Result<()> {
        for program in &self.programs {
            let container = program.container()?;
            let user = docker(&["image", "inspect", "--format", "{{.Config.User}}", &container.image])?;
            let user: u32 = user
                .trim()
                .split(':')
                .next()
                .and_then(|uid| uid.parse().ok())
                .with_context(|| {
                    format!(
                        "{}: USER is not a numeric uid ({user:?}): runAsNonRoot cannot verify it",
                        container.image
                    )
                })?;
            let uid = container.uid()?;
            if uid == 0 || uid != user {
                bail!("{} runs as uid {uid}; its image says USER {user}", container.name);
            }
        }
        Ok(())
    }

    /// `docker stop` of the first transmission unit while a call is in
    /// flight: it stops taking calls, answers the one in flight, exits 0.
    async fn stop_draining_a_call(&self, setting: &Setting) -> anyhow::Result<()> {
        let exit = setting.units[0].0;
        let tu = self.program(exit, "transmission-unit")?;
        let cu = self.program(exit, "computation-unit")?.container()?;
        let metrics = tu.port(*tu.spec.ports.get("tu-metrics").context("no port 'tu-metrics'")?)?;
        // The computation unit is frozen, so the call stays in flight until it thaws.
        docker(&["pause", &cu.name])?;
        let mut args = vec!["-a".to_owned(), self.first_unit(setting)?.to_string()];
        args.extend(["-n", "1", "--each", "--timeout", "300s"].map(str::to_owned));
        let client = Container::run("dnet-test-unit", &setting.test_unit.image, &[], &args)?;
        wait_for("a call in flight at the first unit", PATIENCE, || async {
            let in_flight = Metrics::scrape(metrics).await.ok()?.ordinary("dnet_in_flight").ok()?;
            (in_flight >= 1.0).then_some(())
        })
        .await?;
        let stopping = tu.container()?;
        let mut stop = stopping.stop_in_background(PATIENCE)?;
        let draining = stopping
            .wait_for_event("no longer accepting calls, draining the calls in flight", PATIENCE)
            .await?;
        if draining["in_flight"] != 1 {
            bail!("it should drain the one call in flight: {draining}");
        }
        docker(&["unpause", &cu.name])?;
        let code = client.wait_exit(PATIENCE).await?;
        let answered = parse_answers(&client.log())?;
        if code != 0 || answered.answers.first().and_then(|a| a.0).is_none() {
            bail!(
                "the call in flight was not answered (test-unit exited {code}): {}",
                client.log()
            );
        }
        stop.wait()?;
        let code = stopping.wait_exit(PATIENCE).await?;
        if code != 0 || stopping.events("drained").is_empty() {
            bail!("{} exited {code}; its log:\n{}", stopping.name, stopping.log());
        }
        Ok(())
    }

    /// `docker stop` of the others: each exits 0 within the grace.
    async fn stop_all(&self) -> anyhow::Result<()> {
        let mut stops = Vec::new();
        for program in &self.programs {
            let container = program.container()?;
            if container.state()?["Running"] == true {
                stops.push((container, container.stop_in_background(PATIENCE)?));
            }
        }
        for (container, mut stop) in stops {
            stop.wait()?;
            let code = container.wait_exit(PATIENCE).await?;
            if code != 0 {
                bail!(
                    "{} exited {code} on docker stop; its log:\n{}",
                    container.name,
                    container.log()
                );
            }
        }
        Ok(())
    }
}

/// test-unit's `--each` lines: `#i: exit E (category C) in L ms; hops: ...`
/// or `#i: failed: KIND after L ms`.
fn parse_answers(printed: &str) -> anyhow::Result<Answers> {
    let mut answers = Vec::new();
    let mut first_latency_ms = None;
    for line in printed.lines().filter(|line| line.starts_with('#')) {
        let (_, answer) = line
            .split_once(": ")
            .with_context(|| format!("not an answer: {line}"))?;
        let latency = answer
            .split_once(" in ")
            .or_else(|| answer.split_once(" after "))
            .and_then(|(_, rest)| rest.split(' ').next()?.parse::<f64>().ok());
        first_latency_ms = first_latency_ms.or(latency);
        let answer = match answer.strip_prefix("exit ") {
            Some(rest) => {
                let (exit, rest) = rest.split_once(' ').with_context(|| format!("no exit in {line}"))?;
                let category = rest
                    .strip_prefix("(category ")
                    .and_then(|c| c.split_once(')'))
                    .map(|(c, _)| c.to_owned())
                    .with_context(|| format!("no category in {line}"))?;
                (Some(exit.parse()?), category)
            }
            None => (None, answer.split(" after ").next().unwrap_or(answer).to_owned()),
        };
        answers.push(answer);
    }
    if answers.is_empty() {
        bail!("test-unit printed no answers:\n{printed}");
    }
    Ok(Answers {
        answers,
        first_latency_ms: first_latency_ms.unwrap_or(f64::NAN),
    })
}

/// A path a runtime image must not hold: shell history, build tools and
/// toolchains, sources, credentials.
fn forbidden(path: &str) -> bool {
    const HISTORY: [&str; 6] = [
        ".bash_history",
        ".ash_history",
        ".sh_history",
        ".python_history",
        ".lesshst",
        ".viminfo",
    ];
    const TOOLS: [&str; 11] = [
        "gcc", "cc", "c++", "g++", "make", "ld", "as", "cargo", "rustc", "rustup", "git",
    ];
    const FOLDERS: [&str; 4] = [".git", ".ssh", ".cargo", ".rustup"];
    const CREDENTIALS: [&str; 5] = [".netrc", ".pypirc", "credentials.toml", "id_rsa", "id_ed25519"];
    let path = path.trim_start_matches("./").trim_end_matches('/');
    let name = path.rsplit('/').next().unwrap_or(path);
    let tool = path
        .strip_prefix("usr/bin/")
        .or_else(|| path.strip_prefix("usr/local/bin/"));
    HISTORY.contains(&name)
        || CREDENTIALS.contains(&name)
        || tool.is_some_and(|tool| TOOLS.contains(&tool) || tool.starts_with("gcc-"))
        || path == "src"
        || path.starts_with("src/")
        || path.split('/').any(|part| FOLDERS.contains(&part))
}

/// No shell history, build tools, sources or secrets: in the image's history
/// (its build commands), its environment, and its files.
fn check_hygiene(image: &str) -> anyhow::Result<()> {
    let secret = |text: &str| {
        let text = text.to_lowercase();
        ["password", "secret", "token", "private"]
            .iter()
            .any(|word| text.contains(word))
    };
    let history = docker(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", image])?;
    if let Some(line) = history.lines().find(|line| secret(line)) {
        bail!("its history names a secret: {line}");
    }
    let env = docker(&["image", "inspect", "--format", "{{json .Config.Env}}", image])?;
    if secret(&env) {
        bail!("its environment names a secret: {env}");
    }
    let files = files_of(image)?;
    let found: Vec<&String> = files.iter().filter(|path| forbidden(path)).collect();
    if !found.is_empty() {
        bail!("it holds {found:?}");
    }
    Ok(())
}
