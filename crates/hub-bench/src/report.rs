//! What a run found: a table for people ([`Display`](std::fmt::Display))
//! and JSON for scripts ([`BroadcastReport::write_json`]).
//!
//! Durations are in seconds and latencies in milliseconds, both with three
//! decimals; memory is in bytes.

use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::error::Error;
use crate::proc::CpuTime;

/// `d` in seconds, three decimals.
pub(crate) fn seconds(d: Duration) -> f64 {
    round3(d.as_secs_f64())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Microseconds as milliseconds (exactly three decimals).
fn millis(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// `part` as a percentage of `whole`, one decimal (0 if `whole` is 0).
fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part / whole * 1000.0).round() / 10.0
    } else {
        0.0
    }
}

/// Median, 99th percentile and maximum, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Spread {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Of a histogram of microseconds; `None` if it is empty.
    pub(crate) fn of(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Self {
            p50: millis(histogram.value_at_quantile(0.5)),
            p99: millis(histogram.value_at_quantile(0.99)),
            max: millis(histogram.max()),
        })
    }
}

/// The connect phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConnectReport {
    /// From the first connection attempt to the last outcome.
    pub seconds: f64,
    /// Local addresses the clients were spread over.
    pub source_ips: usize,
    /// Clients whose handshake succeeded.
    pub connected: usize,
    /// Clients whose connection or handshake failed or timed out.
    pub failed: usize,
    /// TCP connection plus handshake time of the successful clients.
    pub handshake_ms: Option<Spread>,
    /// Why the first failed client failed.
    pub first_error: Option<String>,
}

/// Messages expected and received, over all receivers.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Deliveries {
    /// Connected clients × the senders each hears × messages.
    pub expected: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Expected but never received (skipped, or missing at the end).
    pub lost: u64,
    /// Received again after a later one, or twice.
    pub duplicated: u64,
    /// `received` over the time from the first send to the last receipt.
    pub per_second: f64,
}

/// Latency from send to receipt, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// Of a histogram of microseconds; `None` if it is empty.
    pub(crate) fn of(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Self {
            p50: millis(histogram.value_at_quantile(0.5)),
            p90: millis(histogram.value_at_quantile(0.9)),
            p99: millis(histogram.value_at_quantile(0.99)),
            p999: millis(histogram.value_at_quantile(0.999)),
            max: millis(histogram.max()),
        })
    }
}

/// CPU time used during the measured phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Cpu {
    /// User plus system time, all threads.
    pub seconds: f64,
    /// `seconds` as a percentage of one core over the phase.
    pub percent_of_core: f64,
    /// Of `seconds`, the time in the process's own code.
    pub user_seconds: f64,
    /// Of `seconds`, the time in the kernel: system calls, and on loopback
    /// the network stack's work for both ends of each connection.
    pub system_seconds: f64,
    /// `seconds` over the deliveries received in the phase, in
    /// microseconds (none if nothing was received).
    pub micros_per_delivery: Option<f64>,
}

impl Cpu {
    /// `used` during a phase of `wall` in which `deliveries` were received.
    pub(crate) fn new(used: CpuTime, wall: Duration, deliveries: u64) -> Self {
        let total = used.total();
        Self {
            seconds: seconds(total),
            percent_of_core: percent(total.as_secs_f64(), wall.as_secs_f64()),
            user_seconds: seconds(used.user),
            system_seconds: seconds(used.system),
            micros_per_delivery: (deliveries > 0)
                .then(|| round3(total.as_secs_f64() * 1e6 / deliveries as f64)),
        }
    }
}

/// The server's resources, from `/proc/PID`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ServerUsage {
    /// Its process id.
    pub pid: u32,
    /// CPU used during the measured phase.
    pub cpu: Option<Cpu>,
    /// Resident memory at the end of the measured phase (`VmRSS`).
    pub vm_rss_bytes: Option<u64>,
    /// The most resident memory it ever had (`VmHWM`).
    pub vm_hwm_bytes: Option<u64>,
}

/// The close phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CloseReport {
    /// Clients whose close frame the server answered in time.
    pub clean: usize,
    /// Until every client task ended.
    pub seconds: f64,
}

/// The result of [`Broadcast::run`](crate::Broadcast::run).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct BroadcastReport {
    /// The target.
    pub url: String,
    /// Clients asked for.
    pub clients: usize,
    /// Clients that send (the first ones).
    pub senders: usize,
    /// Groups of clients that hear only their own senders.
    pub groups: usize,
    /// Measured messages per sender.
    pub messages: u32,
    /// Bytes of text per message.
    pub size: usize,
    /// Messages per second per sender; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// The connect phase.
    pub connect: ConnectReport,
    /// From the senders' start to the last receiver done (or the timeout).
    pub measured_seconds: f64,
    /// Whether the measured phase ended on the timeout.
    pub timed_out: bool,
    /// Clients the server closed or dropped before the end.
    pub disconnected: usize,
    /// Measured messages the senders sent.
    pub sent: u64,
    /// Deliveries to all receivers (senders included).
    pub deliveries: Deliveries,
    /// Send-to-receipt latency; `None` if nothing was received.
    pub latency_ms: Option<Latency>,
    /// This tool's CPU during the measured phase (`None` without `/proc`).
    pub tool_cpu: Option<Cpu>,
    /// The server's, with a server pid.
    pub server: Option<ServerUsage>,
    /// The other processes measured alongside (`--also-pid`).
    pub others: Vec<ServerUsage>,
    /// The close phase.
    pub close: CloseReport,
}

impl BroadcastReport {
    /// Whether every client connected and every expected message arrived
    /// exactly once.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.connect.failed == 0 && self.deliveries.lost == 0 && self.deliveries.duplicated == 0
    }

    /// The report as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        to_json(self)
    }

    /// Writes [`to_json`](Self::to_json) to `path`.
    ///
    /// # Errors
    ///
    /// [`Error::WriteJson`] if the file cannot be written.
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        write_json(&self.to_json(), path)
    }
}

/// The server's resident memory around an idle run, from `/proc/PID`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct IdleServer {
    /// Its process id.
    pub pid: u32,
    /// `VmRSS` before the first connection.
    pub rss_before_bytes: u64,
    /// `VmRSS` once every client was connected.
    pub rss_connected_bytes: u64,
    /// `VmRSS` at the end of the hold.
    pub rss_held_bytes: u64,
    /// `VmHWM` at the end of the hold.
    pub hwm_bytes: u64,
    /// (`rss_connected` − `rss_before`) / connected clients.
    pub bytes_per_connection: Option<f64>,
    /// CPU seconds the server used while the clients connected.
    pub cpu_connect_seconds: f64,
    /// CPU seconds the server used while they were held (what their
    /// joining set off, settling, and keep-alive pings).
    pub cpu_hold_seconds: f64,
    /// Both, in microseconds per connected client: what a connection (and
    /// its join, for a room) cost the server.
    pub cpu_micros_per_connection: Option<f64>,
}

/// The result of [`Idle::run`](crate::Idle::run).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct IdleReport {
    /// The target.
    pub url: String,
    /// Clients asked for.
    pub clients: usize,
    /// The connect phase.
    pub connect: ConnectReport,
    /// How long the clients were held.
    pub hold_seconds: f64,
    /// Clients the server closed or dropped during the run.
    pub disconnected: usize,
    /// The server's memory, with a server pid.
    pub server: Option<IdleServer>,
    /// The close phase.
    pub close: CloseReport,
}

impl IdleReport {
    /// Whether every client connected and stayed connected.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.connect.failed == 0 && self.disconnected == 0
    }

    /// The report as pretty JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        to_json(self)
    }

    /// Writes [`to_json`](Self::to_json) to `path`.
    ///
    /// # Errors
    ///
    /// [`Error::WriteJson`] if the file cannot be written.
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        write_json(&self.to_json(), path)
    }
}

fn to_json(report: &impl Serialize) -> String {
    // Plain structs of numbers and strings: serializing cannot fail.
    let mut json = serde_json::to_string_pretty(report).unwrap_or_default();
    json.push('\n');
    json
}

fn write_json(json: &str, path: &Path) -> Result<(), Error> {
    std::fs::write(path, json).map_err(|source: io::Error| Error::WriteJson {
        path: path.to_owned(),
        source,
    })
}

/// Writes `  key               value` lines.
struct Table<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Table<'_, '_> {
    fn section(&mut self, title: impl fmt::Display) -> fmt::Result {
        writeln!(self.0, "{title}")
    }

    fn row(&mut self, key: &str, value: impl fmt::Display) -> fmt::Result {
        writeln!(self.0, "  {key:<20}{value}")
    }

    fn connect(&mut self, connect: &ConnectReport) -> fmt::Result {
        self.section("connect")?;
        self.row("time", format_args!("{:.3} s", connect.seconds))?;
        self.row("connected", connect.connected)?;
        self.row("failed", connect.failed)?;
        if let Some(error) = &connect.first_error {
            self.row("first failure", error)?;
        }
        if let Some(h) = &connect.handshake_ms {
            self.row(
                "handshake ms",
                format_args!("p50 {:.3}  p99 {:.3}  max {:.3}", h.p50, h.p99, h.max),
            )?;
        }
        Ok(())
    }

    fn close(&mut self, close: &CloseReport, connected: usize) -> fmt::Result {
        self.section("close")?;
        self.row(
            "closed cleanly",
            format_args!("{} of {connected} in {:.3} s", close.clean, close.seconds),
        )
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Memory in MiB, one decimal.
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} MiB", self.0 as f64 / (1024.0 * 1024.0))
    }
}

struct CpuText<'a>(&'a Cpu);

impl fmt::Display for CpuText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpu = self.0;
        write!(
            f,
            "{:.3} s ({:.1}% of a core), user {:.3} s, system {:.3} s",
            cpu.seconds, cpu.percent_of_core, cpu.user_seconds, cpu.system_seconds
        )?;
        match cpu.micros_per_delivery {
            Some(micros) => write!(f, ", {micros:.2} µs per delivery"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for BroadcastReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table(f);
        t.section(format_args!("broadcast {}", self.url))?;
        t.row(
            "clients",
            format_args!(
                "{} from {}",
                self.clients,
                plural(self.connect.source_ips, "address", "addresses")
            ),
        )?;
        if self.groups > 1 {
            t.row(
                "senders",
                format_args!("{} in {} groups", self.senders, self.groups),
            )?;
        } else {
            t.row("senders", self.senders)?;
        }
        let pace = match self.rate {
            Some(rate) => format!("{rate}/s each"),
            None => "flat out".to_owned(),
        };
        t.row(
            "messages",
            format_args!("{} per sender, {} bytes, {pace}", self.messages, self.size),
        )?;
        t.connect(&self.connect)?;
        t.section("measured phase")?;
        let end = if self.timed_out { " (timed out)" } else { "" };
        t.row("time", format_args!("{:.3} s{end}", self.measured_seconds))?;
        t.row("sent", self.sent)?;
        let d = &self.deliveries;
        t.row("expected", d.expected)?;
        t.row("received", d.received)?;
        t.row("lost", d.lost)?;
        t.row("duplicated", d.duplicated)?;
        t.row("disconnected", self.disconnected)?;
        t.row("deliveries/s", format_args!("{:.0}", d.per_second))?;
        match &self.latency_ms {
            Some(l) => t.row(
                "latency ms",
                format_args!(
                    "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                    l.p50, l.p90, l.p99, l.p999, l.max
                ),
            )?,
            None => t.row("latency ms", "-")?,
        }
        if let Some(cpu) = &self.tool_cpu {
            t.row("hub-bench cpu", CpuText(cpu))?;
        }
        for (name, usage) in (self.server.iter().map(|s| ("server", s)))
            .chain(self.others.iter().map(|o| ("process", o)))
        {
            if let Some(cpu) = &usage.cpu {
                t.row(&format!("{name} {} cpu", usage.pid), CpuText(cpu))?;
            }
            if let (Some(rss), Some(hwm)) = (usage.vm_rss_bytes, usage.vm_hwm_bytes) {
                t.row(
                    &format!("{name} {} memory", usage.pid),
                    format_args!("VmRSS {}, VmHWM {}", Mib(rss), Mib(hwm)),
                )?;
            }
        }
        t.close(&self.close, self.connect.connected)?;
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        writeln!(t.0, "{verdict}")
    }
}

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table(f);
        t.section(format_args!("idle {}", self.url))?;
        t.row(
            "clients",
            format_args!(
                "{} from {}",
                self.clients,
                plural(self.connect.source_ips, "address", "addresses")
            ),
        )?;
        t.connect(&self.connect)?;
        t.section("hold")?;
        t.row("time", format_args!("{:.3} s", self.hold_seconds))?;
        t.row("disconnected", self.disconnected)?;
        if let Some(server) = &self.server {
            let key = format!("server {} VmRSS", server.pid);
            t.row(
                &key,
                format_args!(
                    "{} before, {} connected, {} held",
                    Mib(server.rss_before_bytes),
                    Mib(server.rss_connected_bytes),
                    Mib(server.rss_held_bytes)
                ),
            )?;
            t.row(
                &format!("server {} VmHWM", server.pid),
                Mib(server.hwm_bytes),
            )?;
            if let Some(per) = server.bytes_per_connection {
                t.row("per connection", format_args!("{per:.0} bytes"))?;
            }
            t.row(
                &format!("server {} CPU", server.pid),
                format_args!(
                    "{:.2} s connecting, {:.2} s held",
                    server.cpu_connect_seconds, server.cpu_hold_seconds
                ),
            )?;
            if let Some(per) = server.cpu_micros_per_connection {
                t.row("CPU per connection", format_args!("{per:.0} µs"))?;
            }
        }
        t.close(&self.close, self.connect.connected)?;
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        writeln!(t.0, "{verdict}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect() -> ConnectReport {
        ConnectReport {
            seconds: 0.25,
            source_ips: 1,
            connected: 50,
            failed: 0,
            handshake_ms: Some(Spread {
                p50: 0.5,
                p99: 2.25,
                max: 3.0,
            }),
            first_error: None,
        }
    }

    fn broadcast() -> BroadcastReport {
        BroadcastReport {
            url: "ws://127.0.0.1:8000/ws".to_owned(),
            clients: 50,
            senders: 2,
            groups: 1,
            messages: 100,
            size: 64,
            rate: None,
            connect: connect(),
            measured_seconds: 1.5,
            timed_out: false,
            disconnected: 0,
            sent: 200,
            deliveries: Deliveries {
                expected: 10_000,
                received: 10_000,
                lost: 0,
                duplicated: 0,
                per_second: 6_666.67,
            },
            latency_ms: Some(Latency {
                p50: 0.123,
                p90: 0.5,
                p99: 1.0,
                p999: 2.0,
                max: 4.096,
            }),
            tool_cpu: Some(Cpu::new(
                CpuTime {
                    user: Duration::from_millis(200),
                    system: Duration::from_millis(550),
                },
                Duration::from_millis(1500),
                10_000,
            )),
            server: Some(ServerUsage {
                pid: 42,
                cpu: Some(Cpu::new(
                    CpuTime {
                        user: Duration::from_millis(1000),
                        system: Duration::from_millis(2000),
                    },
                    Duration::from_millis(1500),
                    10_000,
                )),
                vm_rss_bytes: Some(10 * 1024 * 1024),
                vm_hwm_bytes: Some(12 * 1024 * 1024 + 512 * 1024),
            }),
            others: Vec::new(),
            close: CloseReport {
                clean: 50,
                seconds: 0.01,
            },
        }
    }

    #[test]
    fn broadcast_table() {
        let expected = "\
broadcast ws://127.0.0.1:8000/ws
  clients             50 from 1 address
  senders             2
  messages            100 per sender, 64 bytes, flat out
connect
  time                0.250 s
  connected           50
  failed              0
  handshake ms        p50 0.500  p99 2.250  max 3.000
measured phase
  time                1.500 s
  sent                200
  expected            10000
  received            10000
  lost                0
  duplicated          0
  disconnected        0
  deliveries/s        6667
  latency ms          p50 0.123  p90 0.500  p99 1.000  p99.9 2.000  max 4.096
  hub-bench cpu       0.750 s (50.0% of a core), user 0.200 s, system 0.550 s, 75.00 µs per delivery
  server 42 cpu       3.000 s (200.0% of a core), user 1.000 s, system 2.000 s, 300.00 µs per delivery
  server 42 memory    VmRSS 10.0 MiB, VmHWM 12.5 MiB
close
  closed cleanly      50 of 50 in 0.010 s
PASS
";
        assert_eq!(broadcast().to_string(), expected);
    }

    #[test]
    fn a_loss_fails() {
        let mut report = broadcast();
        assert!(report.passed());
        report.deliveries.lost = 1;
        report.timed_out = true;
        report.rate = Some(200.0);
        assert!(!report.passed());
        let table = report.to_string();
        assert!(
            table.contains("100 per sender, 64 bytes, 200/s each"),
            "{table}"
        );
        assert!(table.contains("1.500 s (timed out)"), "{table}");
        assert!(table.trim_end().ends_with("FAIL"), "{table}");
    }

    #[test]
    fn idle_table() {
        let report = IdleReport {
            url: "ws://127.0.0.1:8000/ws".to_owned(),
            clients: 50,
            connect: ConnectReport {
                failed: 2,
                connected: 48,
                source_ips: 2,
                first_error: Some("client 7: no WebSocket handshake within 10s".to_owned()),
                ..connect()
            },
            hold_seconds: 10.0,
            disconnected: 0,
            server: Some(IdleServer {
                pid: 42,
                rss_before_bytes: 1024 * 1024,
                rss_connected_bytes: 2 * 1024 * 1024,
                rss_held_bytes: 2 * 1024 * 1024,
                hwm_bytes: 3 * 1024 * 1024,
                bytes_per_connection: Some(21845.33),
                cpu_connect_seconds: 0.25,
                cpu_hold_seconds: 0.05,
                cpu_micros_per_connection: Some(6250.0),
            }),
            close: CloseReport {
                clean: 48,
                seconds: 0.5,
            },
        };
        let expected = "\
idle ws://127.0.0.1:8000/ws
  clients             50 from 2 addresses
connect
  time                0.250 s
  connected           48
  failed              2
  first failure       client 7: no WebSocket handshake within 10s
  handshake ms        p50 0.500  p99 2.250  max 3.000
hold
  time                10.000 s
  disconnected        0
  server 42 VmRSS     1.0 MiB before, 2.0 MiB connected, 2.0 MiB held
  server 42 VmHWM     3.0 MiB
  per connection      21845 bytes
  server 42 CPU       0.25 s connecting, 0.05 s held
  CPU per connection  6250 µs
close
  closed cleanly      48 of 48 in 0.500 s
FAIL";
        assert!(!report.passed());
        assert_eq!(report.to_string().trim_end(), expected);
    }

    #[test]
    fn json_fields() {
        let json: serde_json::Value = serde_json::from_str(&broadcast().to_json()).unwrap();
        assert_eq!(json["deliveries"]["expected"], 10_000);
        assert_eq!(json["latency_ms"]["p50"], 0.123);
        assert_eq!(json["latency_ms"]["p999"], 2.0);
        assert_eq!(json["connect"]["handshake_ms"]["p99"], 2.25);
        assert_eq!(json["tool_cpu"]["percent_of_core"], 50.0);
        assert_eq!(json["tool_cpu"]["system_seconds"], 0.55);
        assert_eq!(json["server"]["cpu"]["user_seconds"], 1.0);
        assert_eq!(json["server"]["cpu"]["micros_per_delivery"], 300.0);
        assert_eq!(json["server"]["vm_rss_bytes"], 10 * 1024 * 1024);
        assert_eq!(json["rate"], serde_json::Value::Null);
    }

    #[test]
    fn rounding() {
        assert_eq!(seconds(Duration::from_micros(1_234_567)), 1.235);
        assert_eq!(millis(1234), 1.234);
        assert_eq!(percent(1.0, 3.0), 33.3);
        assert_eq!(percent(1.0, 0.0), 0.0);
    }
}
