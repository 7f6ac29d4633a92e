//! What this process may use of the machine, as its container sees it.

/// The memory this process may use, in bytes: the cgroup limit (v2
/// `memory.max`, or v1 `memory.limit_in_bytes`) when one is set, else the
/// machine's memory; `None` when neither can be read.
#[must_use]
pub fn memory_limit_bytes() -> Option<u64> {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    // cgroup v1 reports "no limit" as a number near u64::MAX.
    .find(|&bytes| bytes < (1 << 60));
    cgroup.or_else(machine_memory_bytes)
}

fn machine_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_linux_machine_has_a_memory_limit() {
        assert!(super::memory_limit_bytes().is_some_and(|bytes| bytes > 1 << 20));
    }
}
