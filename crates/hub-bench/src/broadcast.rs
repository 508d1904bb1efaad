//! The broadcast run: many clients, a few of which send; every message of
//! every sender must reach every client of its group (all of them, unless
//! [`Broadcast::groups`] says otherwise), the senders included.
//!
//! Phases:
//!
//! 1. **Connect** every client (see [`crate::connect`]); each starts
//!    reading as soon as it is connected.
//! 2. **Warm up**: the server registers a client slightly after its
//!    handshake, so each sender broadcasts a warm-up message, again every
//!    [`WARM_UP_EVERY`], until every client has heard every sender (within
//!    the timeout). Only then is everybody surely registered.
//! 3. **Measure**: each sender sends its messages, flat out or at a rate;
//!    each client checks the sequence of every sender and records the
//!    latency. The phase ends when every client has every sender's last
//!    message, or on the timeout. Senders run on a thread of their own, so
//!    that thousands of busy receivers do not make them late.
//! 4. **Close** every client with a close frame.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::common::{common_options, Common};
use crate::connect::{self, Dialer};
use crate::error::Error;
use crate::latency::{Latencies, Samples};
use crate::payload::{self, Marker, Padding};
use crate::proc::{self, CpuTime, Pid};
use crate::progress::Progress;
use crate::report::{seconds, BroadcastReport, CloseReport, Cpu, Deliveries, Latency, ServerUsage};
use crate::stop::Stop;
use crate::ws::{Reader, Status, Writer};

/// How often senders repeat their warm-up until every client heard it.
const WARM_UP_EVERY: Duration = Duration::from_millis(250);

/// Messages a flat-out sender hands to its socket between flushes.
const FLUSH_EVERY: u32 = 64;

/// The fastest tick of a rate-limited sender; faster rates send several
/// messages per tick.
const FASTEST_TICK: Duration = Duration::from_millis(1);

/// How often progress bars are refreshed while waiting.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// A broadcast benchmark, configured with its builder methods then
/// [`run`](Self::run).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), hub_bench::Error> {
/// let report = hub_bench::Broadcast::new("ws://127.0.0.1:8000/ws")
///     .clients(1000)
///     .senders(2)
///     .messages(500)
///     .size(64)
///     .run()
///     .await?;
/// println!("{report}");
/// assert!(report.passed());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Broadcast {
    common: Common,
    senders: usize,
    groups: usize,
    others: Vec<u32>,
    messages: u32,
    size: usize,
    padding: Padding,
    rate: Option<f64>,
    timeout: Duration,
}

impl Broadcast {
    /// A run against `url` (`ws://` on this machine) with 100 clients, one
    /// sender of 1000 messages of 64 bytes, flat out, a 60 s timeout.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            common: Common::new(url.into()),
            senders: 1,
            groups: 1,
            others: Vec::new(),
            messages: 1000,
            size: 64,
            padding: Padding::X,
            rate: None,
            timeout: Duration::from_secs(60),
        }
    }

    common_options!();

    /// How many of the clients send (the first ones); at most `clients`.
    #[must_use]
    pub fn senders(mut self, senders: usize) -> Self {
        self.senders = senders;
        self
    }

    /// Splits the clients into `groups` that hear only their own senders:
    /// client `i` is in group `i % groups`, as `?room=r{i%groups}` in the
    /// URL puts it in a room (default 1: everyone hears every sender). Have
    /// at least as many senders, so that each group has one. With several
    /// URLs, each group's clients alternate over them.
    #[must_use]
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// Other processes whose CPU to measure over the measured phase, as
    /// the server's (another node, the Redis shards behind it).
    #[must_use]
    pub fn also_pids(mut self, pids: Vec<u32>) -> Self {
        self.others = pids;
        self
    }

    /// Measured messages per sender.
    #[must_use]
    pub fn messages(mut self, messages: u32) -> Self {
        self.messages = messages;
        self
    }

    /// Bytes of text per message, at least the marker's length (about 25).
    #[must_use]
    pub fn size(mut self, size: usize) -> Self {
        self.size = size;
        self
    }

    /// What fills each message after its marker (`x` by default).
    #[must_use]
    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Messages per second per sender (`None`: as fast as the socket takes
    /// them). Senders keep to a fixed schedule
    /// ([`MissedTickBehavior::Skip`]): a tick a little late costs nothing,
    /// and after a stall longer than a period the missed ticks are dropped,
    /// not sent in a catch-up burst, so the rate is never exceeded on
    /// average and the run just lasts longer.
    /// Above 1000/s messages go in groups, 1000 groups a second.
    #[must_use]
    pub fn rate(mut self, rate: Option<f64>) -> Self {
        self.rate = rate;
        self
    }

    /// Bound on the warm-up, and on the measured phase.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn check(&self) -> Result<(u32, Option<RatePlan>), Error> {
        let problem = |option, problem: String| Error::Option { option, problem };
        if self.common.clients == 0 {
            return Err(problem("clients", "use at least 1 client".into()));
        }
        if self.senders == 0 || self.senders > self.common.clients {
            return Err(problem(
                "senders",
                format!(
                    "{} is not between 1 and --clients ({})",
                    self.senders, self.common.clients
                ),
            ));
        }
        let senders = u32::try_from(self.senders)
            .map_err(|_| problem("senders", "too many senders".into()))?;
        if self.groups == 0 || self.groups > self.senders {
            return Err(problem(
                "groups",
                format!(
                    "{} groups for {} senders: each group needs a sender",
                    self.groups, self.senders
                ),
            ));
        }
        if self.messages == 0 {
            return Err(problem("messages", "use at least 1 message".into()));
        }
        let needed = payload::min_size(senders, self.messages);
        if self.size < needed {
            return Err(Error::SizeTooSmall {
                size: self.size,
                needed,
            });
        }
        if self.timeout.is_zero() {
            return Err(problem("timeout", "use a timeout above zero".into()));
        }
        let plan = match self.rate {
            None => None,
            Some(rate) => Some(RatePlan::new(rate).ok_or_else(|| {
                problem(
                    "rate",
                    format!("{rate} is not a rate; use a number of messages per second above 0"),
                )
            })?),
        };
        Ok((senders, plan))
    }

    /// Senders client `index` hears: those of its group.
    fn heard_by(&self, index: usize) -> u64 {
        let groups = self.groups.max(1);
        (0..self.senders)
            .filter(|sender| sender % groups == index % groups)
            .count() as u64
    }

    /// Runs the benchmark.
    ///
    /// A run that was carried out returns its report even when messages
    /// were lost (see [`BroadcastReport::passed`]).
    ///
    /// # Errors
    ///
    /// [`Error`] when the options or the URL are unusable (the URL must be
    /// `ws://` on a loopback address), a sender cannot connect, the server
    /// pid cannot be read, or not every client hears the warm-up in time.
    pub async fn run(self) -> Result<BroadcastReport, Error> {
        let (senders, plan) = self.check()?;
        let targets = self.common.targets()?;
        let source_count = self
            .common
            .source_ips
            .unwrap_or_else(|| connect::default_source_ips(self.common.clients));
        let sources = connect::source_ips(&targets[0], source_count)?;
        for pid in self.common.server_pid.iter().chain(&self.others) {
            let pid = *pid;
            proc::cpu_time(Pid::Other(pid)).map_err(|source| Error::ServerPid { pid, source })?;
        }
        let progress = Progress::new(self.common.progress);
        let senders_thread = SenderThread::start();
        let run = Arc::new(Run {
            start: Instant::now(),
            clients: self.common.clients,
            senders,
            groups: self.groups,
            messages: self.messages,
            size: self.size,
            padding: self.padding,
            plan,
            send_on: senders_thread.handle(),
            dialer: Dialer::new(targets, sources, self.common.handshake_timeout)
                .offer(self.common.offer())
                .spread(self.groups),
            stop: Stop::new(self.common.clients + self.senders),
            latencies: Latencies::for_this_machine(),
            counts: Counts::default(),
        });

        let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
        let (outcomes_tx, outcomes) = mpsc::channel(1024);
        let mut tasks = JoinSet::new();
        for index in 0..self.common.clients {
            let phase = (index < self.senders).then(|| phase_rx.clone());
            tasks.spawn(client(run.clone(), index, outcomes_tx.clone(), phase));
        }
        drop((outcomes_tx, phase_rx));

        let connected = connect::gather(
            outcomes,
            self.common.clients,
            run.dialer.source_count(),
            progress,
        )
        .await;
        let connect = connected.report;
        if let Some((index, source)) = connected
            .failures
            .into_iter()
            .find(|(index, _)| *index < self.senders)
        {
            connect::close_all(&run.stop, tasks, progress).await;
            return Err(Error::SenderConnect { index, source });
        }
        let receivers = connect.connected;

        phase_tx.send_replace(Phase::WarmUp);
        let counts = &run.counts;
        let bar = progress.bar(receivers as u64, "warming up");
        let warmed = wait(&run, self.timeout, &bar, || {
            let ready = counts.ready.load(Ordering::Acquire);
            (
                ready + counts.gone_unready.load(Ordering::Acquire) >= receivers,
                ready as u64,
            )
        })
        .await;
        if !warmed {
            // Clients the server dropped meanwhile are not waited for: they
            // show in the report as disconnected, their messages as lost.
            connect::close_all(&run.stop, tasks, progress).await;
            return Err(Error::WarmUp {
                ready: counts.ready.load(Ordering::Acquire),
                connected: receivers,
                timeout: self.timeout,
            });
        }

        let tool_before = proc::cpu_time(Pid::Current).ok();
        let server_before = self
            .common
            .server_pid
            .and_then(|pid| proc::cpu_time(Pid::Other(pid)).ok());
        let others_before: Vec<_> = (self.others.iter())
            .map(|pid| proc::cpu_time(Pid::Other(*pid)).ok())
            .collect();
        let measure_start = Instant::now();
        phase_tx.send_replace(Phase::Measure);
        // Each client hears its group's senders; clients that failed to
        // connect take their share away.
        let heard: u64 = (0..self.common.clients).map(|i| self.heard_by(i)).sum();
        let expected =
            heard * u64::from(self.messages) * receivers as u64 / self.common.clients.max(1) as u64;
        let bar = progress.bar(expected, "deliveries");
        let finished = wait(&run, self.timeout, &bar, || {
            let done = counts.done.load(Ordering::Acquire);
            (
                done + counts.gone_undone.load(Ordering::Acquire) >= receivers,
                counts.received(),
            )
        })
        .await;
        let measured = measure_start.elapsed();
        let received = counts.received();
        let used = |before: Option<CpuTime>, pid| {
            let after = proc::cpu_time(pid).ok()?;
            Some(Cpu::new(after.since(before?), measured, received))
        };
        let tool_cpu = used(tool_before, Pid::Current);
        let usage = |pid, before| {
            let cpu = used(before, Pid::Other(pid));
            let memory = proc::memory(Pid::Other(pid)).ok();
            ServerUsage {
                pid,
                cpu,
                vm_rss_bytes: memory.map(|m| m.rss),
                vm_hwm_bytes: memory.map(|m| m.hwm),
            }
        };
        let server = (self.common.server_pid).map(|pid| usage(pid, server_before));
        let others = (self.others.iter().zip(others_before))
            .map(|(pid, before)| usage(*pid, before))
            .collect();

        let close_start = Instant::now();
        let clients = connect::close_all(&run.stop, tasks, progress).await;
        let close = CloseReport {
            clean: clients.iter().filter(|c| c.closed_cleanly).count(),
            seconds: seconds(close_start.elapsed()),
        };

        let mut totals = Totals::default();
        for stats in &clients {
            totals.add(stats);
        }
        let per_second = match (totals.first_send, totals.last_receipt) {
            (Some(first), Some(last)) if last > first => {
                totals.received as f64 / Duration::from_nanos(last - first).as_secs_f64()
            }
            _ => 0.0,
        };
        Ok(BroadcastReport {
            url: self.common.urls(),
            clients: self.common.clients,
            senders: self.senders,
            groups: self.groups,
            messages: self.messages,
            size: self.size,
            rate: self.rate,
            connect,
            measured_seconds: seconds(measured),
            timed_out: !finished,
            disconnected: totals.disconnected,
            sent: totals.sent,
            deliveries: Deliveries {
                expected,
                received: totals.received,
                lost: totals.lost,
                duplicated: totals.duplicated,
                per_second: per_second.round(),
            },
            latency_ms: Latency::of(&run.latencies.merged()),
            tool_cpu,
            server,
            others,
            close,
        })
    }
}

/// How a rate-limited sender paces itself: `burst` messages every `tick`.
#[derive(Clone, Copy, Debug)]
struct RatePlan {
    tick: Duration,
    burst: u32,
}

impl RatePlan {
    fn new(rate: f64) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let burst = (rate * FASTEST_TICK.as_secs_f64()).ceil().max(1.0);
        let burst = if burst < f64::from(u32::MAX) {
            burst as u32
        } else {
            return None;
        };
        let tick = Duration::try_from_secs_f64(f64::from(burst) / rate).ok()?;
        Some(Self { tick, burst })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connect,
    WarmUp,
    Measure,
}

/// A thread of its own for the senders: on the runtime of thousands of
/// receiving tasks, a sender's tick would often come late, behind them.
/// The sockets stay registered with the main runtime, which wakes the
/// senders when they can write.
#[derive(Debug)]
struct SenderThread {
    runtime: Option<Runtime>,
}

impl SenderThread {
    /// Starts the thread, or does without it (the senders then share the
    /// current runtime) if the system refuses.
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hub-bench-send")
            .enable_all()
            .build()
            .ok();
        Self { runtime }
    }

    fn handle(&self) -> Handle {
        self.runtime
            .as_ref()
            .map_or_else(Handle::current, |runtime| runtime.handle().clone())
    }
}

impl Drop for SenderThread {
    fn drop(&mut self) {
        // Dropped in an async context, where only this way is allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What every client task shares.
#[derive(Debug)]
struct Run {
    /// Send times are nanoseconds since this.
    start: Instant,
    clients: usize,
    senders: u32,
    /// Client `i` hears the senders `s` with `s % groups == i % groups`.
    groups: usize,
    messages: u32,
    size: usize,
    padding: Padding,
    plan: Option<RatePlan>,
    /// Where the senders run (see [`SenderThread`]).
    send_on: Handle,
    dialer: Dialer,
    /// Slots `0..clients` for the receive loops, then one per sender.
    stop: Stop,
    latencies: Latencies,
    counts: Counts,
}

impl Run {
    fn nanos(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A counter on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// Shards of the delivery counter (for the progress bar).
const COUNTER_SHARDS: usize = 8;

/// Progress of the clients, for the waiting coordinator.
#[derive(Debug, Default)]
struct Counts {
    /// Clients that heard every sender's warm-up.
    ready: AtomicUsize,
    /// Clients that went away before that.
    gone_unready: AtomicUsize,
    /// Clients that have every sender's last message.
    done: AtomicUsize,
    /// Clients that went away before that.
    gone_undone: AtomicUsize,
    /// Deliveries so far, sharded by client.
    received: [Padded; COUNTER_SHARDS],
    /// Wakes the coordinator when one of the above (but `received`) moved.
    changed: Notify,
}

impl Counts {
    fn received(&self) -> u64 {
        self.received
            .iter()
            .map(|shard| shard.0.load(Ordering::Relaxed))
            .sum()
    }

    fn bump(&self, counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }
}

/// Waits until `check` says so (it also gives the bar's position), at
/// most `timeout`. Returns whether `check` said so.
async fn wait(
    run: &Run,
    timeout: Duration,
    bar: &ProgressBar,
    mut check: impl FnMut() -> (bool, u64),
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let ok = loop {
        let (ok, position) = check();
        bar.set_position(position);
        if ok {
            break true;
        }
        tokio::select! {
            () = run.counts.changed.notified() => {}
            () = tokio::time::sleep(REFRESH_EVERY) => {}
            () = tokio::time::sleep_until(deadline) => break check().0,
        }
    };
    bar.finish_and_clear();
    ok
}

/// What one client task found.
#[derive(Debug, Default)]
struct ClientStats {
    connected: bool,
    sent: u64,
    first_send: Option<u64>,
    received: u64,
    lost: u64,
    duplicated: u64,
    last_receipt: Option<u64>,
    disconnected: bool,
    closed_cleanly: bool,
}

/// All clients' stats added up.
#[derive(Debug, Default)]
struct Totals {
    sent: u64,
    first_send: Option<u64>,
    received: u64,
    lost: u64,
    duplicated: u64,
    last_receipt: Option<u64>,
    disconnected: usize,
}

impl Totals {
    fn add(&mut self, client: &ClientStats) {
        if !client.connected {
            return;
        }
        self.sent += client.sent;
        self.first_send = min_some(self.first_send, client.first_send);
        self.received += client.received;
        self.lost += client.lost;
        self.duplicated += client.duplicated;
        self.last_receipt = self.last_receipt.max(client.last_receipt);
        self.disconnected += usize::from(client.disconnected);
    }
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One client: connects, receives (and sends, for the first ones) until
/// the stop signal, then closes.
async fn client(
    run: Arc<Run>,
    index: usize,
    outcomes: mpsc::Sender<connect::Outcome>,
    phase: Option<watch::Receiver<Phase>>,
) -> ClientStats {
    let Some((mut reader, writer)) = connect::dial_and_tell(&run.dialer, index, outcomes).await
    else {
        return ClientStats::default();
    };
    // Shared by the sender (if this client is one) and the receiver, which
    // answers pings.
    let writer = Arc::new(Mutex::new(writer));
    let mut receiver = Receiver::new(&run, index);
    let sending = async {
        match (phase, u32::try_from(index)) {
            (Some(phase), Ok(sender)) => {
                let shared = run.clone();
                let writer = Arc::clone(&writer);
                let sending = run
                    .send_on
                    .spawn(async move { send(&shared, sender, &writer, phase).await });
                // Cancelled: the run is being torn down.
                sending.await.ok()
            }
            _ => Some(Sent::default()),
        }
    };
    let (sent, ended_early) = tokio::join!(sending, receiver.receive(&mut reader, &writer));
    let closed_cleanly = match sent {
        Some(_) if !ended_early => connect::close(&mut reader, &mut *writer.lock().await).await,
        _ => false,
    };
    receiver.finish(sent.unwrap_or_default(), ended_early, closed_cleanly)
}

/// What a sender sent.
#[derive(Debug, Default)]
struct Sent {
    count: u64,
    first: Option<u64>,
}

/// Sends the warm-ups, then the measured messages, until done or stopped.
async fn send(
    run: &Run,
    sender: u32,
    writer: &Mutex<Writer>,
    mut phase: watch::Receiver<Phase>,
) -> Sent {
    let mut sent = Sent::default();
    let slot = run.clients + sender as usize;
    {
        let work = async {
            if phase.wait_for(|p| *p >= Phase::WarmUp).await.is_err() {
                return Ok(());
            }
            let Some(warm_up) = payload::warm_up(sender, run.size, run.padding) else {
                return Ok(());
            };
            loop {
                writer.lock().await.send_text(warm_up.as_bytes()).await?;
                tokio::select! {
                    measure = phase.wait_for(|p| *p >= Phase::Measure) => {
                        if measure.is_err() {
                            return Ok(());
                        }
                        break;
                    }
                    () = tokio::time::sleep(WARM_UP_EVERY) => {}
                }
            }
            sent.first = Some(run.nanos());
            match run.plan {
                None => flat_out(run, sender, writer, &mut sent.count).await,
                Some(plan) => paced(run, sender, writer, plan, &mut sent.count).await,
            }
        };
        tokio::select! {
            // A failed send shows as losses at the receivers.
            _ = work => {}
            () = run.stop.wait(slot) => {}
        }
    }
    sent
}

/// Sends every message as fast as the socket takes them, flushing every
/// [`FLUSH_EVERY`].
async fn flat_out(
    run: &Run,
    sender: u32,
    writer: &Mutex<Writer>,
    count: &mut u64,
) -> io::Result<()> {
    let mut seq = 0;
    while seq < run.messages {
        let end = seq.saturating_add(FLUSH_EVERY);
        send_batch(run, sender, writer, &mut seq, end, count).await?;
    }
    Ok(())
}

/// Sends `plan.burst` messages every `plan.tick`, on a fixed schedule:
/// ticks missed during a stall are skipped rather than made up in a burst
/// (the messages are not skipped: they go on the following ticks).
async fn paced(
    run: &Run,
    sender: u32,
    writer: &Mutex<Writer>,
    plan: RatePlan,
    count: &mut u64,
) -> io::Result<()> {
    let mut ticks = tokio::time::interval(plan.tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut seq = 0;
    while seq < run.messages {
        ticks.tick().await;
        let end = seq.saturating_add(plan.burst);
        send_batch(run, sender, writer, &mut seq, end, count).await?;
    }
    Ok(())
}

/// Sends messages `*seq..end` (at most up to the run's last), then
/// flushes. Should a message not fit the size, sending ends there.
async fn send_batch(
    run: &Run,
    sender: u32,
    writer: &Mutex<Writer>,
    seq: &mut u32,
    end: u32,
    count: &mut u64,
) -> io::Result<()> {
    let end = end.min(run.messages);
    let mut writer = writer.lock().await;
    while *seq < end {
        let Some(text) = payload::data(sender, *seq, run.nanos(), run.size, run.padding) else {
            *seq = run.messages;
            break;
        };
        writer.feed_text(text.as_bytes()).await?;
        *count += 1;
        *seq += 1;
    }
    writer.flush().await
}

/// One client's bookkeeping of what it received.
struct Receiver<'a> {
    run: &'a Run,
    index: usize,
    /// Per sender, the next sequence number expected.
    next: Vec<u32>,
    /// Per sender, whether this client hears it (is in its group).
    hears: Vec<bool>,
    /// How many it hears.
    heard: u32,
    /// Per sender, whether its warm-up arrived.
    warmed: Vec<bool>,
    warm_missing: u32,
    complete_senders: u32,
    received: u64,
    duplicated: u64,
    lost: u64,
    last_receipt: Option<u64>,
    samples: Samples,
}

impl<'a> Receiver<'a> {
    fn new(run: &'a Run, index: usize) -> Self {
        let senders = run.senders as usize;
        let groups = run.groups.max(1);
        let hears: Vec<bool> = (0..senders)
            .map(|sender| sender % groups == index % groups)
            .collect();
        let heard = u32::try_from(hears.iter().filter(|h| **h).count()).unwrap_or(u32::MAX);
        Self {
            run,
            index,
            next: vec![0; senders],
            hears,
            heard,
            warmed: vec![false; senders],
            warm_missing: heard,
            complete_senders: 0,
            received: 0,
            duplicated: 0,
            lost: 0,
            last_receipt: None,
            samples: Samples::new(index),
        }
    }

    fn is_ready(&self) -> bool {
        self.warm_missing == 0
    }

    fn is_done(&self) -> bool {
        self.complete_senders == self.heard
    }

    /// Reads until the stop signal (returns `false`) or until the server
    /// closes or drops the connection (returns `true`).
    async fn receive(&mut self, reader: &mut Reader, writer: &Mutex<Writer>) -> bool {
        let stop = self.run.stop.wait(self.index);
        tokio::pin!(stop);
        loop {
            // Messages that came in one read arrived at one time: the
            // clock is read once for them, at the first.
            let mut now = None;
            let received = self.received;
            // The stop future is only polled when nothing is left to read.
            let read = tokio::select! {
                biased;
                read = reader.read(|message| self.on_message(message, &mut now)) => read,
                () = &mut stop => return false,
            };
            if self.received > received {
                let shard = &self.run.counts.received[self.index % COUNTER_SHARDS];
                shard
                    .0
                    .fetch_add(self.received - received, Ordering::Relaxed);
            }
            let open = match read {
                Ok(Status::Open) => true,
                Ok(Status::Ping(ping)) => writer.lock().await.pong(&ping).await.is_ok(),
                Ok(Status::Closed(_)) | Err(_) => false,
            };
            if !open {
                self.gone();
                return true;
            }
            if self.run.stop.is_raised() {
                return false;
            }
        }
    }

    /// Takes in a message (texts and binary alike: only the marker counts)
    /// that arrived at `now` (read from the clock if not yet).
    fn on_message(&mut self, message: &[u8], now: &mut Option<u64>) {
        let run = self.run;
        match payload::find(message) {
            Some(Marker::WarmUp { sender }) => {
                if self.hears.get(sender as usize) != Some(&true) {
                    return;
                }
                let Some(warmed) = self.warmed.get_mut(sender as usize) else {
                    return;
                };
                if !*warmed {
                    *warmed = true;
                    self.warm_missing -= 1;
                    if self.is_ready() {
                        run.counts.bump(&run.counts.ready);
                    }
                }
            }
            Some(Marker::Data { sender, seq, sent }) => {
                if self.hears.get(sender as usize) != Some(&true) {
                    return;
                }
                let Some(next) = self.next.get_mut(sender as usize) else {
                    return;
                };
                if seq >= run.messages {
                    return;
                }
                if seq < *next {
                    self.duplicated += 1;
                    return;
                }
                let now = *now.get_or_insert_with(|| run.nanos());
                self.lost += u64::from(seq - *next);
                *next = seq + 1;
                self.received += 1;
                self.last_receipt = Some(now);
                self.samples
                    .push(now.saturating_sub(sent) / 1000, &run.latencies);
                if *next == run.messages {
                    self.complete_senders += 1;
                    if self.is_done() {
                        run.counts.bump(&run.counts.done);
                    }
                }
            }
            None => {}
        }
    }

    /// The server closed or dropped this client: what it has not got yet
    /// will never come.
    fn gone(&self) {
        let counts = &self.run.counts;
        if !self.is_ready() {
            counts.bump(&counts.gone_unready);
        }
        if !self.is_done() {
            counts.bump(&counts.gone_undone);
        }
    }

    fn finish(mut self, sent: Sent, disconnected: bool, closed_cleanly: bool) -> ClientStats {
        self.samples.flush(&self.run.latencies);
        let messages = self.run.messages;
        let missing: u64 = (self.next.iter().zip(&self.hears))
            .filter(|(_, hears)| **hears)
            .map(|(&next, _)| u64::from(messages - next))
            .sum();
        ClientStats {
            connected: true,
            sent: sent.count,
            first_send: sent.first,
            received: self.received,
            lost: self.lost + missing,
            duplicated: self.duplicated,
            last_receipt: self.last_receipt,
            disconnected,
            closed_cleanly,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_plans() {
        let plan = RatePlan::new(100.0).unwrap();
        assert_eq!((plan.tick, plan.burst), (Duration::from_millis(10), 1));
        let plan = RatePlan::new(1000.0).unwrap();
        assert_eq!((plan.tick, plan.burst), (Duration::from_millis(1), 1));
        let plan = RatePlan::new(5000.0).unwrap();
        assert_eq!((plan.tick, plan.burst), (Duration::from_millis(1), 5));
        let plan = RatePlan::new(0.5).unwrap();
        assert_eq!((plan.tick, plan.burst), (Duration::from_secs(2), 1));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(RatePlan::new(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn options_are_checked() {
        let base = || {
            Broadcast::new("ws://127.0.0.1:1/ws")
                .clients(10)
                .senders(2)
                .messages(100)
        };
        assert!(base().check().is_ok());
        assert!(matches!(
            base().clients(0).check(),
            Err(Error::Option {
                option: "clients",
                ..
            })
        ));
        assert!(matches!(
            base().senders(11).check(),
            Err(Error::Option {
                option: "senders",
                ..
            })
        ));
        assert!(matches!(
            base().senders(0).check(),
            Err(Error::Option {
                option: "senders",
                ..
            })
        ));
        assert!(base().groups(2).check().is_ok());
        assert!(matches!(
            base().groups(3).check(),
            Err(Error::Option {
                option: "groups",
                ..
            })
        ));
        assert!(matches!(
            base().messages(0).check(),
            Err(Error::Option {
                option: "messages",
                ..
            })
        ));
        assert!(matches!(
            base().rate(Some(0.0)).check(),
            Err(Error::Option { option: "rate", .. })
        ));
        let small = base().size(10).check();
        assert!(
            matches!(
                small,
                Err(Error::SizeTooSmall {
                    size: 10,
                    needed: 23
                })
            ),
            "{small:?}"
        );
        let message = base()
            .size(10)
            .check()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("use --size 23 or more"), "{message}");
    }

    #[tokio::test]
    async fn remote_urls_are_refused_before_connecting() {
        let error = Broadcast::new("ws://192.0.2.1:8000/ws").run().await;
        assert!(
            matches!(error, Err(Error::Url(crate::UrlError::NotLoopback { .. }))),
            "{error:?}"
        );
    }
}
