//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Load generator for WebSocket broadcast servers on this machine (the
/// target must be 127.0.0.0/8, ::1 or localhost).
///
/// Exit status: 0 when every client connected and every message arrived
/// exactly once, 1 when not, 2 when the run could not be carried out.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Connect clients, have the first ones send, and check that every
    /// client receives every message once: throughput, latency, losses.
    Broadcast(BroadcastArgs),
    /// Connect clients and hold them: what connections cost the server.
    Idle(IdleArgs),
    /// Serve as a bare broadcast server (every message to every client,
    /// one write each, nothing else), to run the same scenarios against as
    /// a baseline. Prints its URL, then serves until stopped.
    Bare(BareArgs),
    /// Draw a `scripts/compare` run's charts (SVG and PNG) from its
    /// results.json.
    Plot(PlotArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PlotArgs {
    /// The run's results (written by scripts/compare).
    #[arg(long, default_value = "target/compare/results.json")]
    pub(crate) results: std::path::PathBuf,

    /// Where to write the charts.
    #[arg(long, default_value = "target/compare")]
    pub(crate) out: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct BareArgs {
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: std::net::IpAddr,

    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub(crate) port: u16,
}

/// Flags of both subcommands.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// The WebSocket endpoint (ws:// on this machine); `{i}` in it stands
    /// for each client's number, so `?room=r{i}` gives each a room.
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub(crate) url: String,

    /// Another endpoint of the same service (another node sharing a
    /// Redis, say); repeatable. Clients connect to the URLs in turn.
    #[arg(long = "also-url", value_name = "URL")]
    pub(crate) also: Vec<String>,

    /// Clients to connect.
    #[arg(long, default_value_t = 100)]
    pub(crate) clients: usize,

    /// Loopback addresses to connect from (127.0.0.1, 127.0.0.2...)
    /// [default: one per 20000 clients].
    #[arg(long, value_name = "K")]
    pub(crate) source_ips: Option<usize>,

    /// The server's process id, to report its CPU and memory (Linux).
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,

    /// Bound on each client's TCP connection and WebSocket handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) handshake_timeout: Duration,

    /// Offer permessage-deflate (with client_no_context_takeover), and
    /// inflate what the server sends compressed.
    #[arg(long)]
    pub(crate) compression: bool,

    /// With --compression, also ask the server to deflate each message on
    /// its own (server_no_context_takeover).
    #[arg(long, requires = "compression")]
    pub(crate) server_no_context: bool,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,

    /// No progress bars (they are only drawn when stderr is a terminal).
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BroadcastArgs {
    #[command(flatten)]
    pub(crate) common: Common,

    /// How many of the clients send (the first ones).
    #[arg(long, default_value_t = 1)]
    pub(crate) senders: usize,

    /// Another process whose CPU to measure over the measured phase, as the
    /// server's (another node, a Redis shard); repeatable.
    #[arg(long = "also-pid", value_name = "PID")]
    pub(crate) also_pids: Vec<u32>,

    /// Clients hear only the senders of their group: client i is in group
    /// i % N, as `?room=r{i%N}` puts it in a room (at most --senders).
    /// With --also-url, each group's clients alternate over the URLs.
    #[arg(long, default_value_t = 1)]
    pub(crate) groups: usize,

    /// Messages each sender sends.
    #[arg(long, default_value_t = 1000)]
    pub(crate) messages: u32,

    /// Bytes of text per message (at least the marker, about 25).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,

    /// Pad messages with words, different in each, rather than with `x`
    /// (which deflate shrinks to nothing).
    #[arg(long)]
    pub(crate) prose: bool,

    /// Messages per second per sender [default: as fast as possible].
    #[arg(long)]
    pub(crate) rate: Option<f64>,

    /// Bound on the warm-up, and on the measured phase (e.g. 60s, 2m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: Common,

    /// How long to hold the clients once all are connected (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) hold: Duration,
}

/// `500ms`, `10s`, `2m`, `1h`, or plain seconds (`1.5`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; use e.g. 500ms, 10s, 2m"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|error| format!("{text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn flags() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "hub-bench",
            "broadcast",
            "--clients",
            "1000",
            "--rate",
            "100",
            "--timeout",
            "2m",
        ])
        .unwrap();
        let Command::Broadcast(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.common.clients, 1000);
        assert_eq!(args.rate, Some(100.0));
        assert_eq!(args.timeout, Duration::from_secs(120));
        assert_eq!(args.common.url, "ws://127.0.0.1:8000/ws");
    }
}
