//! The guest's size after the host hot-plugged CPUs or memory (a pool VM grown for a bigger
//! pod): the kernel adds them offline unless configured otherwise, so the agent onlines them
//! and reports what is online, which the host compares with what it plugged.

use std::fs;
use std::path::Path;

/// At most this many cpuN / memoryN entries are looked at: the host plugs far fewer.
const MAX_ENTRIES: usize = 4096;

/// Onlines what the kernel left offline under `sys` (/sys/devices/system): every CPU whose
/// `online` reads 0 and every memory block whose `state` reads offline. Best effort: a CPU
/// that refuses stays offline and the host's count check fails the claim.
pub fn online_all(sys: &Path) {
    online_each(&sys.join("cpu"), "cpu", "online", "0", "1");
    online_each(&sys.join("memory"), "memory", "state", "offline", "online");
}

fn online_each(dir: &Path, prefix: &str, file: &str, offline: &str, online: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten().take(MAX_ENTRIES) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path().join(file);
        let Ok(state) = fs::read_to_string(&path) else {
            continue;
        };
        if state.trim() == offline
            && let Err(e) = fs::write(&path, online)
        {
            crate::warn!("could not online {}: {e}", path.display());
        }
    }
}

/// CPUs in a kernel CPU list ("0-3,5"); 0 for a malformed list.
pub fn count_cpu_list(list: &str) -> u32 {
    let mut total: u32 = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.parse::<u32>(), b.parse::<u32>()) {
            (Ok(a), Ok(b)) if b >= a => total = total.saturating_add(b - a + 1),
            _ => return 0,
        }
    }
    total
}

/// MemTotal in KiB from /proc/meminfo text; 0 when absent.
pub fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Onlines what is offline, then reads (MemTotal KiB, online CPUs).
pub fn online_and_read() -> (u64, u32) {
    let sys = Path::new("/sys/devices/system");
    online_all(sys);
    let mem = mem_total_kib(&fs::read_to_string("/proc/meminfo").unwrap_or_default());
    let cpus = count_cpu_list(&fs::read_to_string(sys.join("cpu/online")).unwrap_or_default());
    (mem, cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cpu_lists() {
        assert_eq!(count_cpu_list("0\n"), 1);
        assert_eq!(count_cpu_list("0-3,5\n"), 5);
        assert_eq!(count_cpu_list("0-1,3-4"), 4);
        assert_eq!(count_cpu_list("3-1"), 0);
        assert_eq!(count_cpu_list("x"), 0);
    }

    #[test]
    fn reads_mem_total() {
        assert_eq!(
            mem_total_kib("MemTotal:        1004584 kB\nMemFree: 1 kB\n"),
            1004584
        );
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), 0);
    }

    #[test]
    fn onlines_offline_cpus_and_memory_blocks() {
        let dir = std::env::temp_dir().join(format!("cloudhv-res-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (sub, file, state) in [
            ("cpu/cpu1", "online", "0\n"),
            ("cpu/cpu2", "online", "1\n"),
            ("cpu/cpufreq", "online", "0\n"),
            ("memory/memory40", "state", "offline\n"),
        ] {
            fs::create_dir_all(dir.join(sub)).unwrap();
            fs::write(dir.join(sub).join(file), state).unwrap();
        }
        online_all(&dir);
        let read = |p: &str| fs::read_to_string(dir.join(p)).unwrap();
        assert_eq!(read("cpu/cpu1/online"), "1");
        assert_eq!(read("cpu/cpu2/online"), "1\n");
        assert_eq!(read("cpu/cpufreq/online"), "0\n");
        assert_eq!(read("memory/memory40/state"), "online");
        fs::remove_dir_all(&dir).unwrap();
    }
}
