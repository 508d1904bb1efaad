//! The idle run: many clients that connect, stay connected (answering the
//! server's pings) and close, to measure what connections cost the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::common::{common_options, Common};
use crate::connect::{self, Dialer};
use crate::error::Error;
use crate::proc::{self, Memory, Pid};
use crate::progress::Progress;
use crate::report::{seconds, CloseReport, IdleReport, IdleServer};
use crate::stop::Stop;
use crate::ws::Status;

/// An idle-connections run, configured with its builder methods then
/// [`run`](Self::run).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), hub_bench::Error> {
/// let report = hub_bench::Idle::new("ws://127.0.0.1:8000/ws")
///     .clients(10_000)
///     .hold(std::time::Duration::from_secs(10))
///     .run()
///     .await?;
/// println!("{report}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Idle {
    common: Common,
    hold: Duration,
}

impl Idle {
    /// A run against `url` (`ws://` on this machine) with 100 clients held
    /// for 10 s.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            common: Common::new(url.into()),
            hold: Duration::from_secs(10),
        }
    }

    common_options!();

    /// How long to keep the clients connected once all are.
    #[must_use]
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Runs it: connects every client, holds them, closes them.
    ///
    /// # Errors
    ///
    /// [`Error`] when the options or the URL are unusable (the URL must be
    /// `ws://` on a loopback address) or the server pid cannot be read.
    /// Clients that fail to connect are counted in the report.
    pub async fn run(self) -> Result<IdleReport, Error> {
        if self.common.clients == 0 {
            return Err(Error::Option {
                option: "clients",
                problem: "use at least 1 client".into(),
            });
        }
        let targets = self.common.targets()?;
        let source_count = self
            .common
            .source_ips
            .unwrap_or_else(|| connect::default_source_ips(self.common.clients));
        let sources = connect::source_ips(&targets[0], source_count)?;
        let server_memory = || -> Result<Option<Memory>, Error> {
            self.common
                .server_pid
                .map(|pid| {
                    proc::memory(Pid::Other(pid)).map_err(|source| Error::ServerPid { pid, source })
                })
                .transpose()
        };
        let server_cpu =
            || (self.common.server_pid).and_then(|pid| proc::cpu_time(Pid::Other(pid)).ok());
        let before = server_memory()?;
        let cpu_before = server_cpu();
        let progress = Progress::new(self.common.progress);
        let run = Arc::new(IdleRun {
            dialer: Dialer::new(targets, sources, self.common.handshake_timeout)
                .offer(self.common.offer()),
            stop: Stop::new(self.common.clients),
        });

        let (outcomes_tx, outcomes) = mpsc::channel(1024);
        let mut tasks = JoinSet::new();
        for index in 0..self.common.clients {
            tasks.spawn(client(run.clone(), index, outcomes_tx.clone()));
        }
        drop(outcomes_tx);
        let connected = connect::gather(
            outcomes,
            self.common.clients,
            run.dialer.source_count(),
            progress,
        )
        .await;
        let connect = connected.report;
        let after_connect = server_memory().ok().flatten();
        let cpu_connected = server_cpu();

        let bar = progress.bar(
            self.hold.as_millis().try_into().unwrap_or(u64::MAX),
            "holding",
        );
        let held = Instant::now();
        while held.elapsed() < self.hold {
            let left = self.hold.saturating_sub(held.elapsed());
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
            bar.set_position(held.elapsed().as_millis().try_into().unwrap_or(u64::MAX));
        }
        bar.finish_and_clear();
        let hold_seconds = seconds(held.elapsed());
        let after_hold = server_memory().ok().flatten();
        let cpu_held = server_cpu();

        let close_start = Instant::now();
        let clients = connect::close_all(&run.stop, tasks, progress).await;
        let close = CloseReport {
            clean: clients.iter().filter(|c| c.closed_cleanly).count(),
            seconds: seconds(close_start.elapsed()),
        };
        let cpu =
            (cpu_before.zip(cpu_connected).zip(cpu_held)).map(|((before, connected), held)| {
                (
                    connected.since(before).total().as_secs_f64(),
                    held.since(connected).total().as_secs_f64(),
                )
            });
        let server = match (
            self.common.server_pid,
            before,
            after_connect,
            after_hold,
            cpu,
        ) {
            (Some(pid), Some(before), Some(connected), Some(held), Some((connecting, holding))) => {
                let per_client =
                    |total: f64| (connect.connected > 0).then(|| total / connect.connected as f64);
                Some(IdleServer {
                    pid,
                    rss_before_bytes: before.rss,
                    rss_connected_bytes: connected.rss,
                    rss_held_bytes: held.rss,
                    hwm_bytes: held.hwm,
                    bytes_per_connection: per_client(connected.rss as f64 - before.rss as f64),
                    cpu_connect_seconds: connecting,
                    cpu_hold_seconds: holding,
                    cpu_micros_per_connection: per_client((connecting + holding) * 1e6),
                })
            }
            _ => None,
        };
        Ok(IdleReport {
            url: self.common.urls(),
            clients: self.common.clients,
            connect,
            hold_seconds,
            disconnected: clients.iter().filter(|c| c.disconnected).count(),
            server,
            close,
        })
    }
}

/// What the idle clients share.
#[derive(Debug)]
struct IdleRun {
    dialer: Dialer,
    stop: Stop,
}

/// How one idle client fared.
#[derive(Debug, Default)]
struct IdleClient {
    disconnected: bool,
    closed_cleanly: bool,
}

/// Connects, reads (so pings are answered) until the stop signal, closes.
async fn client(
    run: Arc<IdleRun>,
    index: usize,
    outcomes: mpsc::Sender<connect::Outcome>,
) -> IdleClient {
    let Some((mut reader, mut writer)) = connect::dial_and_tell(&run.dialer, index, outcomes).await
    else {
        return IdleClient::default();
    };
    let stop = run.stop.wait(index);
    tokio::pin!(stop);
    let disconnected = loop {
        let read = tokio::select! {
            biased;
            read = reader.read(|_| {}) => read,
            () = &mut stop => break false,
        };
        match read {
            Ok(Status::Open) => {}
            Ok(Status::Ping(ping)) => {
                if writer.pong(&ping).await.is_err() {
                    break true;
                }
            }
            Ok(Status::Closed(_)) | Err(_) => break true,
        }
    };
    let closed_cleanly = !disconnected && connect::close(&mut reader, &mut writer).await;
    IdleClient {
        disconnected,
        closed_cleanly,
    }
}
