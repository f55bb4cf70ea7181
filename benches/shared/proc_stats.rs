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

/// CPU used from a start on, by the server measured (`None` without a pid) and by this
/// process: per message or per event, which of the two bounds a run when both share
/// the machine's cores.
pub struct CpuSpan {
    pid: Option<u32>,
    server_ms: Option<u64>,
    own_ms: Option<u64>,
}

impl CpuSpan {
    pub fn start(pid: Option<u32>) -> CpuSpan {
        CpuSpan {
            pid,
            server_ms: cpu_ms(pid),
            own_ms: own_cpu_ms(),
        }
    }

    /// CPU ms used since the start, by the server and by this process.
    pub fn used(&self) -> CpuUsed {
        let since = |before: Option<u64>, now: Option<u64>| Some(now?.saturating_sub(before?));
        CpuUsed {
            server_ms: since(self.server_ms, cpu_ms(self.pid)),
            own_ms: since(self.own_ms, own_cpu_ms()),
        }
    }
}

/// CPU ms a [`CpuSpan`] saw used (`None`: a reading failed).
pub struct CpuUsed {
    pub server_ms: Option<u64>,
    pub own_ms: Option<u64>,
}

impl CpuUsed {
    /// Server and own CPU ms per one of `units` (`None` for no units).
    pub fn per(&self, units: usize) -> (Option<f64>, Option<f64>) {
        let per = |ms: Option<u64>| Some(ms? as f64 / (units > 0).then_some(units)? as f64);
        (per(self.server_ms), per(self.own_ms))
    }
}
