//! What the load clients read of the server they measure, from `/proc/<pid>` (Linux):
//! its resident memory and its open file descriptors (sockets included).

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors of a process (its sockets included).
pub fn fd_count(pid: Option<u32>) -> Option<usize> {
    Some(
        std::fs::read_dir(format!("/proc/{}/fd", pid?))
            .ok()?
            .count(),
    )
}

/// CPU time (user + system) a process has used so far, in ms (`None` without a pid, as
/// the other readings).
pub fn cpu_ms(pid: Option<u32>) -> Option<u64> {
    stat_cpu_ms(&format!("/proc/{}/stat", pid?))
}

/// CPU time (user + system) this process has used so far, in ms.
pub fn own_cpu_ms() -> Option<u64> {
    stat_cpu_ms("/proc/self/stat")
}

fn stat_cpu_ms(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command (which may hold spaces): state is the 3rd field of the
    // line, utime the 14th and stime the 15th.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some((utime + stime) * 1000 / ticks)
}
