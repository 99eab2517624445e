//! The standard process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), read from `/proc/self` at scrape time.
//!
//! Control path, Linux only: elsewhere (or when `/proc` is not mounted)
//! the families are simply absent. No `unsafe`: the clock tick and page
//! size come from the process's auxiliary vector, not from `sysconf`.

use std::sync::OnceLock;

/// What one scrape read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Process {
    pub(super) cpu_seconds: f64,
    pub(super) resident_bytes: f64,
    pub(super) open_fds: f64,
    pub(super) max_fds: Option<f64>,
    pub(super) start_time_seconds: Option<f64>,
}

/// `(clock ticks per second, page size)` from `/proc/self/auxv`
/// (`AT_CLKTCK` = 17, `AT_PAGESZ` = 6), with Linux's usual values when it
/// cannot be read.
fn auxv() -> (f64, f64) {
    static AUXV: OnceLock<(f64, f64)> = OnceLock::new();
    *AUXV.get_or_init(|| {
        let (mut tick, mut page) = (100.0, 4096.0);
        if let Ok(bytes) = std::fs::read("/proc/self/auxv") {
            for pair in bytes.chunks_exact(16) {
                let key = u64::from_ne_bytes(pair[..8].try_into().expect("8 bytes"));
                let value = u64::from_ne_bytes(pair[8..].try_into().expect("8 bytes"));
                match key {
                    17 if value > 0 => tick = value as f64,
                    6 if value > 0 => page = value as f64,
                    _ => {}
                }
            }
        }
        (tick, page)
    })
}

/// Reads the process's figures; `None` without `/proc`.
pub(super) fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let (tick, page) = auxv();
    let fields = stat_fields(&stat)?;
    // After the command: field 14 utime, 15 stime, 22 starttime (1-based).
    let number = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
    let cpu_seconds = (number(14)? + number(15)?) / tick;
    let resident_bytes = statm.split_whitespace().nth(1)?.parse::<f64>().ok()? * page;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| max_open_files(&l));
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
    let start_time_seconds = boot.zip(number(22)).map(|(b, ticks)| b + ticks / tick);
    Some(Process {
        cpu_seconds,
        resident_bytes,
        open_fds,
        max_fds,
        start_time_seconds,
    })
}

/// The fields of `/proc/self/stat` after `(comm)` (which may itself hold
/// spaces and parentheses), starting with field 3.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// The soft limit on open files from `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// `btime` from `/proc/stat`: boot time, Unix seconds.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let stat = "42 (tide (gate) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 1000 200";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[14 - 3], "250");
        assert_eq!(f[22 - 3], "12345");
    }

    #[test]
    fn limits_and_boot_time_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1764680000\n"), Some(1_764_680_000.0));
    }

    #[test]
    fn this_process_reads_sensibly() {
        let p = read().expect("/proc is mounted where the tests run");
        assert!(p.resident_bytes > 1e6, "{p:?}");
        assert!(p.open_fds >= 3.0, "{p:?}");
        assert!(p.cpu_seconds >= 0.0);
        assert!(p.max_fds.is_some_and(|m| m >= p.open_fds), "{p:?}");
    }
}
