//! The host's processes as the tests see them through `/proc`: alive or not, resident memory,
//! and the `vmm`s that belong to a data directory.

use std::path::Path;

pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The live processes whose command line mentions `dir`: the `vmm`s of a data directory.
/// A jailed VM's process (a fork of its jail supervisor, with the same command line) is
/// counted once, as the supervisor hostd started.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let found: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mentions = cmdline.windows(needle.len()).any(|w| w == needle);
            (mentions && process_alive(pid) && pid != std::process::id()).then_some(pid)
        })
        .collect();
    found
        .iter()
        .copied()
        .filter(|&pid| hostd::vmm_process::parent_pid(pid).is_none_or(|p| !found.contains(&p)))
        .collect()
}
