//! CPU time and memory of a process, from Linux's `/proc`.

use std::io;
use std::time::Duration;

/// Clock ticks per second of `utime` and `stime` (`USER_HZ`, 100 on every
/// architecture Linux exports it for).
const TICKS_PER_SECOND: u64 = 100;

/// Which process: this one, or another by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pid {
    /// The running process.
    Current,
    /// Another process.
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Self::Current => "/proc/self".to_owned(),
            Self::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// CPU time a process used, all its threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpuTime {
    /// In the process's own code.
    pub(crate) user: Duration,
    /// In the kernel, on its behalf: system calls, and the network stack
    /// work they do.
    pub(crate) system: Duration,
}

impl CpuTime {
    /// What was used between `earlier` and `self`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    pub(crate) fn total(self) -> Duration {
        self.user + self.system
    }
}

/// CPU time used by `pid` so far.
///
/// # Errors
///
/// The process does not exist, `/proc` is missing (not Linux), or the file
/// is not as expected.
pub(crate) fn cpu_time(pid: Pid) -> io::Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("{}/stat", pid.dir()))?;
    let (user, system) = parse_stat(&stat).ok_or_else(|| malformed("stat"))?;
    let time = |ticks| Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND);
    Ok(CpuTime {
        user: time(user),
        system: time(system),
    })
}

/// Resident memory of a process, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Memory {
    /// Now (`VmRSS`).
    pub(crate) rss: u64,
    /// The most it ever had (`VmHWM`).
    pub(crate) hwm: u64,
}

/// `VmRSS` and `VmHWM` of `pid`.
///
/// # Errors
///
/// As [`cpu_time`].
pub(crate) fn memory(pid: Pid) -> io::Result<Memory> {
    let status = std::fs::read_to_string(format!("{}/status", pid.dir()))?;
    let field = |name| status_kib(&status, name).ok_or_else(|| malformed("status"));
    Ok(Memory {
        rss: field("VmRSS")? * 1024,
        hwm: field("VmHWM")? * 1024,
    })
}

fn malformed(file: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected format of /proc/PID/{file}"),
    )
}

/// `utime` and `stime` in ticks from the text of `/proc/PID/stat`.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces
    // and parentheses itself: count fields after the last `)`.
    let (_, rest) = stat.rsplit_once(')')?;
    // Field 3 (state) is the first one after it; utime and stime are
    // fields 14 and 15.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The value of `name:` in `/proc/PID/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_odd_command_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((250, 75)));
        assert_eq!(parse_stat("4242 (cut) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tchat-server\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn the_current_process() {
        let before = cpu_time(Pid::Current);
        assert!(before.is_ok(), "{before:?}");
        // Burn a little CPU: the count never goes down.
        let mut x: u64 = 0;
        for i in 0..5_000_000_u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let after = cpu_time(Pid::Current);
        assert!(after.is_ok(), "{after:?}");
        let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
        assert!(after.user >= before.user && after.system >= before.system);
        assert_eq!(after.since(before).total(), after.total() - before.total());
        assert_eq!(before.since(after), CpuTime::default());

        let memory = memory(Pid::Current);
        assert!(memory.is_ok(), "{memory:?}");
        let memory = memory.unwrap_or(Memory { rss: 0, hwm: 0 });
        assert!(memory.rss > 0);
        assert!(memory.hwm >= memory.rss);
    }

    #[test]
    fn a_missing_process() {
        // Above the largest pid Linux hands out (2^22).
        let pid = Pid::Other(u32::MAX);
        assert_eq!(
            cpu_time(pid).map_err(|e| e.kind()),
            Err(io::ErrorKind::NotFound)
        );
        assert!(memory(pid).is_err());
    }
}
