//! The overload's worker on a CPU of its own. On a machine of two CPUs the
//! suite's load, the transmission unit and the broker otherwise wake on the
//! worker's CPU between (and during) its forwards: measured on 2026-12-06,
//! a forward under overload ran 14-20 % slower than at capacity and goodput
//! read 0.83-0.86 of capacity unpinned, against 0.95-0.99 with the worker
//! pinned (three runs each, same machine, same hour). A unit is deployed on
//! a machine or CPUs of its own: the scenario measures the unit, not the
//! suite sharing its CPU. Pinning uses `taskset` (util-linux), as
//! `scripts/cascade.sh` does.

use std::process::Command;

use anyhow::Context;

/// The CPUs this process may run on, from `Cpus_allowed_list` of
/// `/proc/self/status` (e.g. `0-3,6`).
fn allowed() -> anyhow::Result<Vec<u32>> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .context("no Cpus_allowed_list in /proc/self/status")?;
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let range = || -> Option<(u32, u32)> { Some((first.parse().ok()?, last.parse().ok()?)) };
        let (first, last) = range().with_context(|| format!("unreadable CPU list '{list}'"))?;
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

/// Every thread of process `pid` on `cpus` (a `taskset` list).
fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let output = Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", cpus, &pid.to_string()])
        .output()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(
        output.status.success(),
        "taskset -a -c -p {cpus} {pid}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn list(cpus: &[u32]) -> String {
    cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// While held, the worker runs alone on the first allowed CPU and this
/// suite and `others` on the rest; on drop this suite gets every CPU back.
pub struct Isolated {
    all: Vec<u32>,
    /// How the CPUs were shared, for the scenario's note.
    pub described: String,
}

impl Isolated {
    /// Pins `worker` apart from this suite and `others`; with one CPU
    /// allowed there is nothing to pin and everything shares it.
    ///
    /// # Errors
    /// The allowed CPUs cannot be read, or `taskset` fails.
    pub fn worker(worker: u32, others: &[u32]) -> anyhow::Result<Isolated> {
        let all = allowed()?;
        let Some((first, rest)) = all.split_first().filter(|(_, rest)| !rest.is_empty()) else {
            return Ok(Isolated {
                described: "worker and suite share the one CPU".to_owned(),
                all,
            });
        };
        let rest = list(rest);
        pin(worker, &first.to_string())?;
        for pid in others.iter().copied().chain([std::process::id()]) {
            pin(pid, &rest)?;
        }
        Ok(Isolated {
            described: format!("the worker alone on CPU {first}, the suite and the transmission unit on CPU {rest}"),
            all,
        })
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        if let Err(error) = pin(std::process::id(), &list(&self.all)) {
            eprintln!("[chaos] could not give the suite its CPUs back: {error:#}");
        }
    }
}
