//! The workspace's dependency rules (docs/architecture.md, "Layout"), read
//! from `cargo tree` of each crate (its normal and build dependencies, with
//! the features it asks for): a crate that gains a forbidden dependency,
//! directly or through another, fails here.

use std::process::Command;

/// (crate, dependencies it must not link, why).
const RULES: [(&str, &[&str], &str); 6] = [
    (
        "dnet-calibration",
        &["tch", "torch-sys", "tonic", "lapin", "prometheus-client"],
        "choosing thresholds is arithmetic: the offline tool and every unit's edge share it",
    ),
    (
        "dnet-edge",
        &["lapin", "tch", "torch-sys"],
        "the gRPC edge serves any backend: the broker and the model are the backends' business",
    ),
    (
        "transmission-unit",
        &["tch", "torch-sys"],
        "a transmission unit never decodes tensors: it runs where libtorch is not installed",
    ),
    (
        "dnet-model",
        &["lapin", "tonic", "hyper", "clap", "prometheus-client"],
        "the model library runs anywhere (tests, tools, benchmarks): no broker, network, command line or metrics library",
    ),
    (
        "test-unit",
        &["lapin"],
        "the end device talks gRPC only",
    ),
    (
        "computation-unit",
        &["transmission-unit"],
        "a direct unit is built on the edge, not on the broker unit",
    ),
];

/// (crate, dependencies it must link): the positive control. An empty or
/// reformatted `cargo tree` output would pass every rule above; it cannot
/// show these.
const REQUIRED: [(&str, &[&str]); 4] = [
    ("dnet-edge", &["tonic", "h2"]),
    ("transmission-unit", &["lapin", "dnet-edge"]),
    ("computation-unit", &["tch", "lapin", "dnet-edge"]),
    ("dnet-model", &["tch", "safetensors"]),
];

/// The names of every package `package` depends on, as cargo resolves it alone.
fn dependencies(package: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--quiet", "--package", package, "--edges", "normal,build"])
        .args(["--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn each_crate_links_only_what_its_layer_may() {
    let mut broken = Vec::new();
    for (package, required) in REQUIRED {
        let linked = dependencies(package);
        for name in required {
            if !linked.iter().any(|dependency| dependency == name) {
                broken.push(format!(
                    "{package} does not link {name}, which it needs: is `cargo tree`'s output read right?"
                ));
            }
        }
    }
    for (package, forbidden, why) in RULES {
        let linked = dependencies(package);
        assert!(
            linked.first().is_some_and(|root| root == package),
            "cargo tree -p {package} starts with {:?}",
            linked.first()
        );
        for name in forbidden {
            if linked.iter().any(|dependency| dependency == name) {
                broken.push(format!("{package} links {name}: {why}"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
