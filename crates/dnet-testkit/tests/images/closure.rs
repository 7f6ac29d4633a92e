//! The images that link libtorch hold their program and exactly the shared
//! libraries it loads: every file under `/opt` is one the loader resolves
//! for the program (`ldd` inside the image), none it needs is missing, and
//! the CPU images' link has no CUDA (`libtorch_cuda.so`).

use std::collections::BTreeSet;

use anyhow::bail;
use dnet_testkit::container::docker;

/// The goal for the CPU images of programs that link libtorch.
const MOST_BYTES: u64 = 1_200_000_000;

#[test]
#[ignore = "needs the images and a Docker engine: make test-images"]
fn the_cpu_images_hold_exactly_what_their_programs_load() {
    for (image, program) in [
        ("dnet/computation-unit:0.1.0-cpu", "computation-unit"),
        ("dnet/test-unit:0.1.0", "test-unit"),
    ] {
        check(image, program).unwrap_or_else(|e| panic!("{image}: {e:#}"));
    }
}

fn check(image: &str, program: &str) -> anyhow::Result<()> {
    let listing = in_image(image, &format!("ldd /usr/local/bin/{program}"))?;
    if listing.contains("not found") {
        bail!("the loader misses libraries: {listing}");
    }
    // `name => path (address)`: the path as the loader found it.
    let loaded: BTreeSet<String> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|path| path.starts_with("/opt/"))
        .map(without_dot_dot)
        .collect();
    let held = in_image(image, "find /opt -type f")?;
    let held: BTreeSet<String> = held.lines().map(str::to_owned).collect();
    if loaded != held {
        let extra: Vec<_> = held.difference(&loaded).collect();
        let missing: Vec<_> = loaded.difference(&held).collect();
        bail!("/opt holds {extra:?} that {program} does not load, and lacks {missing:?}");
    }
    if let Some(cuda) = held.iter().find(|path| path.ends_with("/libtorch_cuda.so")) {
        bail!("a CPU image loads {cuda}");
    }
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", image])?
        .trim()
        .parse()?;
    if size > MOST_BYTES {
        bail!("{size} bytes, above the goal of {MOST_BYTES}");
    }
    println!("{image}: {} MB, {} libraries under /opt", size / 1_000_000, held.len());
    Ok(())
}

/// `a/b/../c` as `a/c`: the loader's paths follow run-paths like
/// `$ORIGIN/../../nvidia/cu13/lib`.
fn without_dot_dot(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            ".." => {
                parts.pop();
            }
            "." => {}
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// What `command` prints in a container of `image` (no network).
fn in_image(image: &str, command: &str) -> anyhow::Result<String> {
    docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        command,
    ])
}
