//! The containers of a Kubernetes manifest, as far as the container test
//! runs them: image, command, environment, ports, mounts, probes and limits.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

/// Where an environment variable's value comes from.
#[derive(Clone, Debug)]
pub enum EnvSource {
    Value(String),
    /// A key of a Secret (`valueFrom.secretKeyRef.key`).
    Secret(String),
}

#[derive(Clone, Debug)]
pub struct Mount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
}

/// A probe as the kubelet runs it, its port resolved to a number.
#[derive(Clone, Debug)]
pub enum Probe {
    Grpc { port: u16, service: String },
    Http { port: u16, path: String },
}

#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// `command` (the entrypoint, replaced), empty when the image's is kept.
    pub command: Vec<String>,
    pub env: Vec<(String, EnvSource)>,
    /// containerPort by port name.
    pub ports: BTreeMap<String, u16>,
    pub mounts: Vec<Mount>,
    /// (readiness or liveness, probe).
    pub probes: Vec<(&'static str, Probe)>,
    /// `resources.limits` as Docker takes them (`--memory 256m`, `--cpus 0.5`).
    pub memory_limit: Option<String>,
    pub cpu_limit: Option<String>,
}

/// The pod template of a Deployment.
#[derive(Clone, Debug)]
pub struct Pod {
    pub containers: Vec<ContainerSpec>,
    pub init_containers: Vec<ContainerSpec>,
}

impl Pod {
    /// The container named `name`.
    ///
    /// # Errors
    /// There is none.
    pub fn container(&self, name: &str) -> anyhow::Result<&ContainerSpec> {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no container '{name}'"))
    }
}

/// The pod of the first Deployment or Job in `path` with a container named `container`.
///
/// # Errors
/// The file is unreadable, or a container is not as this test understands it.
pub fn pod_with(path: &Path, container: &str) -> anyhow::Result<Pod> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    for document in serde_norway::Deserializer::from_str(&text) {
        let document = Value::deserialize(document).with_context(|| format!("{} is not YAML", path.display()))?;
        if document["kind"] != "Deployment" && document["kind"] != "Job" {
            continue;
        }
        let spec = &document["spec"]["template"]["spec"];
        let pod = Pod {
            containers: containers(&spec["containers"])?,
            init_containers: containers(&spec["initContainers"])?,
        };
        if pod.containers.iter().any(|c| c.name == container) {
            return Ok(pod);
        }
    }
    bail!("no Deployment in {} runs a container '{container}'", path.display())
}

fn containers(list: &Value) -> anyhow::Result<Vec<ContainerSpec>> {
    list.as_array()
        .map(|list| list.iter().map(container).collect())
        .unwrap_or_else(|| Ok(Vec::new()))
}

fn container(c: &Value) -> anyhow::Result<ContainerSpec> {
    let name = text(&c["name"])?;
    let ports: BTreeMap<String, u16> = items(&c["ports"])
        .map(|p| Ok((text(&p["name"]).unwrap_or_default(), number(&p["containerPort"])?)))
        .collect::<anyhow::Result<_>>()?;
    let env = items(&c["env"])
        .map(|e| {
            let source = match (&e["value"], &e["valueFrom"]["secretKeyRef"]["key"]) {
                (Value::String(value), _) => EnvSource::Value(value.clone()),
                (_, Value::String(key)) => EnvSource::Secret(key.clone()),
                _ => bail!("env {} of {name}: neither a value nor a secret key", e["name"]),
            };
            Ok((text(&e["name"])?, source))
        })
        .collect::<anyhow::Result<_>>()?;
    let mounts = items(&c["volumeMounts"])
        .map(|m| {
            Ok(Mount {
                volume: text(&m["name"])?,
                path: text(&m["mountPath"])?,
                read_only: m["readOnly"] == true,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut probes = Vec::new();
    for kind in ["readiness", "liveness"] {
        let probe = &c[format!("{kind}Probe")];
        if probe.is_null() {
            continue;
        }
        probes.push((
            kind,
            self::probe(probe, &ports).with_context(|| format!("{kind} probe of {name}"))?,
        ));
    }
    let limits = &c["resources"]["limits"];
    Ok(ContainerSpec {
        image: text(&c["image"])?,
        command: items(&c["command"]).map(text).collect::<anyhow::Result<_>>()?,
        env,
        ports,
        mounts,
        probes,
        memory_limit: limits["memory"].as_str().map(docker_memory).transpose()?,
        cpu_limit: limits["cpu"].as_str().map(docker_cpus).transpose()?,
        name,
    })
}

fn probe(probe: &Value, ports: &BTreeMap<String, u16>) -> anyhow::Result<Probe> {
    let port = |value: &Value| match value {
        Value::String(name) => ports
            .get(name)
            .copied()
            .with_context(|| format!("no port named {name}")),
        number => self::number(number),
    };
    if probe["grpc"].is_object() {
        Ok(Probe::Grpc {
            port: port(&probe["grpc"]["port"])?,
            service: probe["grpc"]["service"].as_str().unwrap_or_default().to_owned(),
        })
    } else if probe["httpGet"].is_object() {
        Ok(Probe::Http {
            port: port(&probe["httpGet"]["port"])?,
            path: text(&probe["httpGet"]["path"])?,
        })
    } else {
        bail!("neither grpc nor httpGet: {probe}")
    }
}

/// A Kubernetes memory quantity (`256Mi`, `2Gi`) as Docker's `--memory` takes it.
fn docker_memory(quantity: &str) -> anyhow::Result<String> {
    let (number, unit) = quantity.split_at(quantity.find(|c: char| c.is_alphabetic()).unwrap_or(quantity.len()));
    let suffix = match unit {
        "Ki" => "k",
        "Mi" => "m",
        "Gi" => "g",
        "" => "b",
        other => bail!("memory unit {other} of {quantity}"),
    };
    Ok(format!("{number}{suffix}"))
}

/// A Kubernetes CPU quantity (`1`, `500m`) as Docker's `--cpus` takes it.
fn docker_cpus(quantity: &str) -> anyhow::Result<String> {
    match quantity.strip_suffix('m') {
        Some(milli) => Ok(format!("{}", milli.parse::<f64>()? / 1000.0)),
        None => Ok(quantity.to_owned()),
    }
}

fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn text(value: &Value) -> anyhow::Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("not a string: {value}"))
}

fn number(value: &Value) -> anyhow::Result<u16> {
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .with_context(|| format!("not a port: {value}"))
}
