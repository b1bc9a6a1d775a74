//! cgroup v2 readings: usage for ContainerStats, the pids of a container, OOM kills.

use std::fs;
use std::path::Path;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    /// 0 when unlimited ("max").
    pub memory_limit_bytes: u64,
    pub pids_current: u64,
}

/// Reads a cgroup v2 directory's usage; missing files read as 0.
pub fn read_stats(cgroup: &Path) -> Stats {
    let read = |f: &str| fs::read_to_string(cgroup.join(f)).unwrap_or_default();
    let number = |f: &str| read(f).trim().parse::<u64>().unwrap_or(0);
    let usage_usec = read("cpu.stat")
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Stats {
        cpu_usage_ns: usage_usec.saturating_mul(1000),
        memory_usage_bytes: number("memory.current"),
        memory_limit_bytes: number("memory.max"),
        pids_current: number("pids.current"),
    }
}

/// Every pid in a cgroup and its descendants.
pub fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(d) = dirs.pop() {
        if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&d) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

pub(crate) fn oom_kills(cgroup: &Path) -> u64 {
    fs::read_to_string(cgroup.join("memory.events"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_v2_stats() {
        let dir = std::env::temp_dir().join(format!("cloudhv-cgroup-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(
            dir.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        )
        .unwrap();
        fs::write(dir.join("memory.current"), "4096\n").unwrap();
        fs::write(dir.join("memory.max"), "max\n").unwrap();
        fs::write(dir.join("pids.current"), "3\n").unwrap();
        fs::write(dir.join("cgroup.procs"), "10\n11\n").unwrap();
        fs::write(dir.join("sub").join("cgroup.procs"), "12\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(
            read_stats(&dir),
            Stats {
                cpu_usage_ns: 1_500_000,
                memory_usage_bytes: 4096,
                memory_limit_bytes: 0,
                pids_current: 3
            }
        );
        fs::write(dir.join("memory.max"), "1048576\n").unwrap();
        assert_eq!(read_stats(&dir).memory_limit_bytes, 1_048_576);
        let mut pids = cgroup_pids(&dir);
        pids.sort();
        assert_eq!(pids, [10, 11, 12]);
        assert_eq!(oom_kills(&dir), 1);
        assert_eq!(read_stats(&dir.join("missing")), Stats::default());
        fs::remove_dir_all(&dir).unwrap();
    }
}
