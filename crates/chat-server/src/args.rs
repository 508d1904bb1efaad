//! Command-line flags (each also readable from an environment variable).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::{Auth, SecretError};

/// A WebSocket chat server: the chat page at `/`, a broadcast chat at `/ws`
/// and an echo endpoint at `/echo`.
#[derive(Clone, Debug, Parser)]
#[command(version, about)]
#[non_exhaustive]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "CHAT_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one; the chosen port is printed).
    #[arg(long, env = "CHAT_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Largest message a client may send, in bytes; larger ones are closed
    /// with 1009.
    #[arg(long, env = "CHAT_MAX_MESSAGE_SIZE", default_value_t = hub_ws::DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,

    /// Largest HTTP request head (request line and headers together), e.g.
    /// 16KiB; a longer one is answered with 431 and the connection closed,
    /// so a client that never finishes its request holds no more than this.
    #[arg(long, env = "CHAT_MAX_REQUEST_HEAD", default_value = "16KiB", value_parser = parse_head_size)]
    pub max_request_head: usize,

    /// Share fan-out with other chat-server nodes through this Redis
    /// (e.g. redis://127.0.0.1:6379): broadcasts, rooms, private lines,
    /// presence and resume work across every node using the same Redis and
    /// prefix. Without it the server stands alone and needs nothing else.
    #[arg(long, env = "CHAT_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,

    /// Share fan-out through a Redis Cluster instead, known by this node
    /// (e.g. redis://10.0.0.1:7000; repeat the flag for more seed nodes,
    /// or give them comma-separated in the variable). Rooms spread over
    /// the cluster's masters by name; a failover is followed. Not with
    /// --redis-url.
    #[arg(
        long,
        env = "CHAT_REDIS_CLUSTER",
        value_name = "URL",
        value_delimiter = ',',
        conflicts_with = "redis_url"
    )]
    pub redis_cluster: Vec<String>,

    /// Prefix of the Redis keys, so several deployments can share a Redis.
    #[arg(long, env = "CHAT_REDIS_PREFIX", default_value = "chat")]
    pub redis_prefix: String,

    /// With Redis: how long a room's keys stay in Redis once no node
    /// follows it (nodes keep the rooms they follow alive).
    #[arg(long, env = "CHAT_REDIS_TTL", default_value = "10m", value_parser = parse_period)]
    pub redis_ttl: Duration,

    /// With Redis: how long other nodes keep listing this node's
    /// room members after its last heartbeat (heartbeats go every third
    /// of it), so a node that dies has its members leave within this plus
    /// a third.
    #[arg(long, env = "CHAT_PRESENCE_TTL", default_value = "15s", value_parser = parse_period)]
    pub presence_ttl: Duration,

    /// Room chat: how long joins and leaves wait after a presence line to
    /// go out together, one line per burst rather than one per change (0:
    /// each change at once, on a line of its own).
    #[arg(long, env = "CHAT_PRESENCE_BURST", default_value = "100ms", value_parser = parse_duration)]
    pub presence_burst: Duration,

    /// Messages each room's channel holds for clients that have not read
    /// them yet; a client further behind is refilled from history.
    #[arg(long, env = "CHAT_CAPACITY", default_value_t = hub::Builder::DEFAULT_CAPACITY, value_parser = parse_count)]
    pub capacity: usize,

    /// Recent messages each room keeps, to refill clients that fell behind
    /// and to resume clients that reconnect (0 disables history).
    #[arg(long, env = "CHAT_HISTORY", default_value_t = hub::Builder::DEFAULT_HISTORY)]
    pub history: usize,

    /// Size limit of each room's history, in bytes.
    #[arg(long, env = "CHAT_HISTORY_BYTES", default_value_t = hub::Builder::DEFAULT_HISTORY_BYTES)]
    pub history_bytes: usize,

    /// Most bytes of history all rooms of an endpoint keep together, e.g.
    /// 256MiB; past it, the rooms used longest ago lose theirs first
    /// (clients resuming from it get a resync).
    #[arg(long, env = "CHAT_HISTORY_BUDGET", default_value = "256MiB", value_parser = parse_budget)]
    pub history_budget: usize,

    /// Personal messages (echo replies) queued per client.
    #[arg(long, env = "CHAT_QUEUE_CAPACITY", default_value_t = hub::Builder::DEFAULT_QUEUE_CAPACITY, value_parser = parse_count)]
    pub queue_capacity: usize,

    /// Most bytes of personal messages (echo replies, notices, private
    /// lines) waiting for all clients of an endpoint together, e.g. 256MiB;
    /// past it the clients holding the most are closed with 1013.
    #[arg(long, env = "CHAT_QUEUE_BUDGET", default_value = "256MiB", value_parser = parse_budget)]
    pub queue_budget: usize,

    /// How often quiet clients are pinged (e.g. 30s, 500ms).
    #[arg(long, env = "CHAT_PING_INTERVAL", default_value = "30s", value_parser = parse_period)]
    pub ping_interval: Duration,

    /// How long a client may stay silent (no message, no pong) before it is
    /// closed with 1001.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_period)]
    pub idle_timeout: Duration,

    /// How long a write to a client may block before the client is dropped
    /// as not reading.
    #[arg(long, env = "CHAT_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_period)]
    pub write_timeout: Duration,

    /// Also accept WebSocket handshakes from pages of this origin: exact
    /// (`https://app.example.com`) or a wildcard subdomain (`*.example.com`).
    /// Same-origin pages and clients without an Origin are always accepted.
    /// Repeat the flag, or separate with commas in the variable.
    #[arg(
        long = "allowed-origin",
        env = "CHAT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Accept handshakes from any origin (only behind other authentication).
    #[arg(long, env = "CHAT_ANY_ORIGIN")]
    pub any_origin: bool,

    /// Offer permessage-deflate on every endpoint: a broadcast is deflated
    /// once and shared by every client that agreed to it.
    #[arg(long, env = "CHAT_COMPRESSION")]
    pub compression: bool,

    /// Skip the latency, size and queue-wait histograms in /metrics (the
    /// counters stay): they cost a clock read and a few atomic additions
    /// per batch of frames written.
    #[arg(long, env = "CHAT_NO_HISTOGRAMS")]
    pub no_histograms: bool,

    /// How many new connections the kernel holds for the server before it
    /// accepts them (capped by `net.core.somaxconn`). A burst of clients
    /// larger than this, such as everyone reconnecting after a restart,
    /// waits for a retransmitted handshake: a second or more.
    #[arg(long, env = "CHAT_BACKLOG", default_value_t = 4096)]
    pub backlog: u32,

    /// Most WebSocket clients at once; more are refused with 503.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 19_900)]
    pub max_connections: usize,

    /// Most WebSocket clients at once from one address; more are refused
    /// with 429 (default: no limit).
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,

    /// Most messages a client may send per second, on average (default: no
    /// limit). Past it messages are dropped with a notice to the sender.
    #[arg(long, env = "CHAT_RATE_LIMIT", value_parser = parse_rate)]
    pub rate_limit: Option<f64>,

    /// Messages a client may send at once under --rate-limit (default:
    /// twice the rate, at least 1).
    #[arg(long, env = "CHAT_RATE_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: Option<u32>,

    /// Messages dropped in a row by --rate-limit before the client is
    /// closed with 1008.
    #[arg(long, env = "CHAT_RATE_LIMIT_CLOSE_AFTER", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_close_after: u32,

    /// Serve HTTPS and WSS with this certificate chain (PEM); needs
    /// --tls-key.
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Require a sign-in token on every WebSocket endpoint: a JWT signed
    /// with this secret (HS256), with `sub` (the user id, which becomes the
    /// client's name) and `exp`; passed as `?token=`, an `Authorization:
    /// Bearer` header or a `token` cookie. Prefer the variable to the flag
    /// (flags show in process lists).
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: Option<String>,

    /// Turn on the server API under /api/ (publish, broadcast, send,
    /// rooms): callers send `Authorization: Bearer KEY`. At least 32
    /// bytes. Prefer the variable to the flag (flags show in process
    /// lists).
    #[arg(long, env = "CHAT_API_KEY", hide_env_values = true, value_parser = parse_api_key)]
    pub api_key: Option<String>,

    /// Print a token for this user id, signed with --jwt-secret, and exit.
    #[arg(long, value_name = "USER", requires = "jwt_secret")]
    pub issue_token: Option<String>,

    /// How long tokens made by --issue-token stay valid.
    #[arg(long, default_value = "24h", value_parser = parse_period)]
    pub token_ttl: Duration,

    /// On SIGINT/SIGTERM, clients are closed with 1001 this many at a
    /// time (per endpoint), so they do not all reconnect at once.
    #[arg(long, env = "CHAT_SHUTDOWN_BATCH", default_value_t = 500)]
    pub shutdown_batch: usize,

    /// The pause between two batches of --shutdown-batch.
    #[arg(long, env = "CHAT_SHUTDOWN_BATCH_INTERVAL", default_value = "20ms", value_parser = parse_duration)]
    pub shutdown_batch_interval: Duration,

    /// On SIGINT/SIGTERM, how long to wait for clients to finish their close
    /// handshake before exiting.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE", default_value = "4s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl Args {
    /// Who may connect, as `--jwt-secret` says. A `token` cookie counts
    /// only while the Origin check is on (not with `--any-origin`).
    ///
    /// # Errors
    ///
    /// [`SecretError`] for a secret too short to sign with.
    pub fn auth(&self) -> Result<Auth, SecretError> {
        match &self.jwt_secret {
            Some(secret) => Ok(Auth::hs256(secret.as_bytes())?.with_cookie(!self.any_origin)),
            None => Ok(Auth::open()),
        }
    }
}

impl Default for Args {
    fn default() -> Self {
        Self::parse_from(["chat-server"])
    }
}

/// Parses `512KiB`, `256MiB`, `1GiB`, or a bare number of bytes.
fn parse_size(value: &str) -> Result<usize, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => value.split_at(at),
        None => (value, "B"),
    };
    let number: usize = number
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a size; write e.g. 65536, 512KiB or 256MiB"))?;
    let scale: usize = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("unknown unit in `{value}`; use KiB, MiB or GiB")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{value}` is too large"))
}

/// A period that must not be zero: a zero interval or timeout would make
/// no sense, and is refused rather than quietly changed.
fn parse_period(value: &str) -> Result<Duration, String> {
    let period = parse_duration(value)?;
    if period.is_zero() {
        return Err(format!(
            "`{value}` is zero; give a duration of at least 1ms"
        ));
    }
    Ok(period)
}

/// A byte budget that must not be zero.
fn parse_budget(value: &str) -> Result<usize, String> {
    match parse_size(value)? {
        0 => Err(format!("`{value}` is zero; give a size, e.g. 256MiB")),
        size => Ok(size),
    }
}

/// A count of at least one.
fn parse_count(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("`{value}` is not a whole number")),
    }
}

/// Messages per second: a finite number above zero.
fn parse_rate(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{value}` is not a rate; give messages per second above zero, e.g. 20 or 0.5"
        )),
    }
}

/// A token secret long enough to sign with (see [`Auth::hs256`]).
fn parse_secret(value: &str) -> Result<String, String> {
    Auth::hs256(value.as_bytes()).map_err(|error| error.to_string())?;
    Ok(value.to_owned())
}

/// An API key long enough not to be guessed.
fn parse_api_key(value: &str) -> Result<String, String> {
    if value.len() < crate::api::MIN_API_KEY_LEN {
        return Err(format!(
            "an API key needs at least {} bytes; this one has {} (try `openssl rand -hex 32`)",
            crate::api::MIN_API_KEY_LEN,
            value.len()
        ));
    }
    Ok(value.to_owned())
}

/// A request head limit: a size of at least 1 KiB (a browser's request
/// with its cookies takes about that).
fn parse_head_size(value: &str) -> Result<usize, String> {
    let size = parse_size(value)?;
    if size < 1 << 10 {
        return Err(format!(
            "`{value}` is too small for a request head; give at least 1KiB"
        ));
    }
    Ok(size)
}

/// Parses `250ms`, `5s`, `2m`, or a bare number of seconds.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let number: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a duration; write e.g. 500ms, 5s, 2m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(number.saturating_mul(3600))),
        _ => Err(format!("unknown unit in `{value}`; use ms, s, m or h")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(3 * 3600)));
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn a_cluster_takes_several_seeds_and_not_with_one_redis() {
        let args = ["chat-server", "--redis-cluster", "redis://a:1,redis://b:2"];
        let parsed = Args::try_parse_from(args).unwrap();
        assert_eq!(parsed.redis_cluster, ["redis://a:1", "redis://b:2"]);
        let repeated = [
            "chat-server",
            "--redis-cluster",
            "redis://a:1",
            "--redis-cluster",
            "redis://b:2",
        ];
        let parsed = Args::try_parse_from(repeated).unwrap();
        assert_eq!(parsed.redis_cluster, ["redis://a:1", "redis://b:2"]);
        let both = [
            "chat-server",
            "--redis-url",
            "redis://a:1",
            "--redis-cluster",
            "redis://b:2",
        ];
        let error = Args::try_parse_from(both).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
        let text = error.to_string();
        assert!(
            text.contains("--redis-cluster") && text.contains("--redis-url"),
            "{text}"
        );
    }

    /// The error clap gives for `flag value`, which must name the flag.
    fn refusal(flag: &str, value: &str) -> String {
        let error = Args::try_parse_from(["chat-server", &format!("{flag}={value}")]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(flag), "{text}");
        text
    }

    #[test]
    fn short_api_keys_are_refused() {
        for short in ["", "key", &"k".repeat(31)] {
            let text = refusal("--api-key", short);
            assert!(
                text.contains("an API key needs at least 32 bytes"),
                "{text}"
            );
        }
        let args = Args::parse_from(["chat-server", "--api-key", &"k".repeat(32)]);
        assert_eq!(args.api_key.as_deref().map(str::len), Some(32));
    }

    #[test]
    fn zeros_are_refused_not_changed() {
        for flag in [
            "--ping-interval",
            "--idle-timeout",
            "--write-timeout",
            "--presence-ttl",
            "--token-ttl",
        ] {
            for zero in ["0", "0s", "0ms"] {
                assert!(refusal(flag, zero).contains("is zero; give a duration"));
            }
        }
        assert!(refusal("--queue-budget", "0").contains("is zero; give a size"));
        assert!(refusal("--queue-budget", "0MiB").contains("is zero; give a size"));
        assert!(refusal("--history-budget", "0").contains("is zero; give a size"));
        for flag in ["--capacity", "--queue-capacity"] {
            assert!(refusal(flag, "0").contains("must be at least 1"));
        }
        for flag in ["--rate-burst", "--rate-limit-close-after"] {
            refusal(flag, "0");
        }
        for rate in ["0", "-1", "NaN", "inf", "fast"] {
            assert!(refusal("--rate-limit", rate).contains("is not a rate"));
        }
        let args = Args::parse_from([
            "chat-server",
            "--ping-interval",
            "1ms",
            "--rate-limit",
            "0.5",
        ]);
        assert_eq!(args.ping_interval, Duration::from_millis(1));
        assert_eq!(args.rate_limit, Some(0.5));
    }

    #[test]
    fn short_secrets_are_refused() {
        for short in ["", "secret", &"x".repeat(31)] {
            let text = refusal("--jwt-secret", short);
            assert!(text.contains("give at least 32 random bytes"), "{text}");
        }
        let args = Args::parse_from(["chat-server", "--jwt-secret", &"x".repeat(32)]);
        assert!(args.auth().unwrap().is_required());
        // Set after parsing, it is still checked.
        let args = Args {
            jwt_secret: Some("short".to_owned()),
            ..Args::default()
        };
        assert_eq!(args.auth().unwrap_err(), SecretError::TooShort { len: 5 });
    }

    #[test]
    fn request_head_sizes() {
        assert_eq!(parse_head_size("1KiB"), Ok(1024));
        assert_eq!(parse_head_size("64KiB"), Ok(64 * 1024));
        let error = parse_head_size("1023").unwrap_err();
        assert_eq!(
            error,
            "`1023` is too small for a request head; give at least 1KiB"
        );
        assert!(Args::try_parse_from(["chat-server", "--max-request-head", "0"]).is_err());
    }

    #[test]
    fn defaults() {
        let args = Args::default();
        assert_eq!(args.port, 8000);
        assert_eq!(args.host.to_string(), "127.0.0.1");
        assert_eq!(args.max_message_size, 64 * 1024);
        assert_eq!(args.queue_budget, hub::Builder::DEFAULT_QUEUE_BUDGET);
        assert_eq!(args.max_request_head, 16 * 1024);
        assert_eq!(args.history_budget, hub::Builder::DEFAULT_HISTORY_BUDGET);
        assert_eq!(args.presence_burst, Duration::from_millis(100));
    }
}
