//! In-process fan-out: one publisher, N subscribers, 32-byte and 4 KiB
//! messages, in deliveries per second (N × MESSAGES per iteration).
//!
//! Run with `cargo bench --bench fanout`, then `scripts/bench-report` for
//! medians and ratios. In each group, measured in the same run:
//!
//! - `hub`: this workspace's hub; each iteration broadcasts `MESSAGES`
//!   messages, then every connection drains them.
//! - `broadcast`: the same over plain `tokio::sync::broadcast` receivers,
//!   the channel the hub is built on: what the hub could do if it added
//!   nothing to the channel.
//! - `hub_tasks`: the same, with one task per connection waiting on
//!   `recv` (how a server runs it: a task per session).
//! - `broadcast_tasks`: plain `tokio::sync::broadcast` with one task per
//!   receiver: the floor the hub builds on.
//! - `seed_style`: the FastAPI seed's `ConnectionManager` in Rust: a `Vec`
//!   of per-connection senders, each awaited in turn, then each drained.
//!
//! Everything runs on one single-threaded runtime, so the ratios hold on
//! a noisy machine.
//!
//! Every variant looks at what it received where it landed (`black_box` of
//! a reference) rather than moving it. A move would add the benchmark's own
//! copy, and that copy costs more the larger the value: a hub event is 72
//! bytes against 40 for a bare message, and copying it right after it was
//! written stalls the CPU (a failed store-to-load forward).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hub::{Event, Hub, Message};
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, mpsc, Notify};

const MESSAGES: usize = 16;
const SUBSCRIBERS: [usize; 4] = [1, 100, 1_000, 10_000];
const SIZES: [(usize, &str); 2] = [(32, "32B"), (4096, "4KiB")];

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|error| panic!("cannot build a runtime: {error}"))
}

/// The hub: one broadcast per message, then each connection drains.
fn hub_round(hub: &Hub, connections: &mut [hub::Connection], message: &Message) {
    for _ in 0..MESSAGES {
        hub.broadcast(message.clone());
    }
    for connection in connections.iter_mut() {
        for _ in 0..MESSAGES {
            match &connection.try_recv() {
                Ok(Event::Broadcast(m)) => {
                    std::hint::black_box(m);
                }
                other => panic!("benchmark lost a message: {other:?}"),
            }
        }
    }
}

/// Takes `MESSAGES` messages from each receiver in turn.
fn drain<R, E: std::fmt::Display>(
    receivers: &mut [R],
    mut take: impl FnMut(&mut R) -> Result<Message, E>,
) {
    for receiver in receivers.iter_mut() {
        for _ in 0..MESSAGES {
            match &take(receiver) {
                Ok(m) => {
                    std::hint::black_box(m);
                }
                Err(error) => panic!("benchmark lost a message: {error}"),
            }
        }
    }
}

/// Plain broadcast channels, used as `hub_round` uses the hub.
fn broadcast_round(
    sender: &broadcast::Sender<Message>,
    receivers: &mut [broadcast::Receiver<Message>],
    message: &Message,
) {
    for _ in 0..MESSAGES {
        let _ = sender.send(message.clone());
    }
    drain(receivers, |receiver| receiver.try_recv());
}

/// The seed's `broadcast`: for each message, await each connection's send
/// in turn; then each connection drains.
async fn seed_round(
    senders: &[mpsc::Sender<Message>],
    receivers: &mut [mpsc::Receiver<Message>],
    message: &Message,
) {
    for _ in 0..MESSAGES {
        for sender in senders {
            if sender.send(message.clone()).await.is_err() {
                panic!("benchmark receiver dropped");
            }
        }
    }
    drain(receivers, |receiver| receiver.try_recv());
}

/// Counts receivers that have read a round; wakes the publisher when all
/// have.
struct Round {
    left: AtomicUsize,
    done: Notify,
}

impl Round {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(0),
            done: Notify::new(),
        })
    }

    fn start(&self, receivers: usize) {
        self.left.store(receivers, Ordering::SeqCst);
    }

    fn finished_one(&self) {
        if self.left.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.done.notify_one();
        }
    }
}

/// Runs `iters` rounds: `publish` sends MESSAGES messages, then the round
/// ends when every receiver task has read them.
fn task_rounds<F, Fut>(
    rt: &Runtime,
    iters: u64,
    round: &Round,
    receivers: usize,
    publish: F,
) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            round.start(receivers);
            let done = round.done.notified();
            publish().await;
            done.await;
        }
        start.elapsed()
    })
}

fn fanout(c: &mut Criterion) {
    for (size, label) in SIZES {
        let mut group = c.benchmark_group(format!("fanout_{label}"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        let message = Message::text("x".repeat(size));
        for n in SUBSCRIBERS {
            group.throughput(Throughput::Elements((n * MESSAGES) as u64));

            let hub = Hub::builder().capacity(MESSAGES * 2).build();
            let mut connections: Vec<_> = (0..n)
                .map(|_| hub.connect().unwrap_or_else(|e| panic!("{e}")))
                .collect();
            group.bench_with_input(BenchmarkId::new("hub", n), &n, |b, _| {
                b.iter(|| hub_round(&hub, &mut connections, &message));
            });
            drop(connections);

            let (sender, _) = broadcast::channel::<Message>(MESSAGES * 2);
            let mut receivers: Vec<_> = (0..n).map(|_| sender.subscribe()).collect();
            group.bench_with_input(BenchmarkId::new("broadcast", n), &n, |b, _| {
                b.iter(|| broadcast_round(&sender, &mut receivers, &message));
            });
            drop(receivers);

            let rt = runtime();
            let round = Round::new();
            for _ in 0..n {
                let mut connection = hub.connect().unwrap_or_else(|e| panic!("{e}"));
                let round = Arc::clone(&round);
                rt.spawn(async move {
                    loop {
                        for _ in 0..MESSAGES {
                            match &connection.recv().await {
                                Ok(Event::Broadcast(m)) => {
                                    std::hint::black_box(m);
                                }
                                _ => return,
                            }
                        }
                        round.finished_one();
                    }
                });
            }
            group.bench_with_input(BenchmarkId::new("hub_tasks", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    task_rounds(&rt, iters, &round, n, || async {
                        for _ in 0..MESSAGES {
                            hub.broadcast(message.clone());
                        }
                    })
                });
            });
            hub.shutdown();
            drop(rt);

            let rt = runtime();
            let round = Round::new();
            let (sender, _) = broadcast::channel::<Message>(MESSAGES * 2);
            for _ in 0..n {
                let mut receiver = sender.subscribe();
                let round = Arc::clone(&round);
                rt.spawn(async move {
                    loop {
                        for _ in 0..MESSAGES {
                            match &receiver.recv().await {
                                Ok(m) => {
                                    std::hint::black_box(m);
                                }
                                Err(_) => return,
                            }
                        }
                        round.finished_one();
                    }
                });
            }
            group.bench_with_input(BenchmarkId::new("broadcast_tasks", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    task_rounds(&rt, iters, &round, n, || async {
                        for _ in 0..MESSAGES {
                            let _ = sender.send(message.clone());
                        }
                    })
                });
            });
            drop(sender);
            drop(rt);

            let rt = runtime();
            let (senders, mut receivers): (Vec<_>, Vec<_>) =
                (0..n).map(|_| mpsc::channel(MESSAGES)).unzip();
            group.bench_with_input(BenchmarkId::new("seed_style", n), &n, |b, _| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            seed_round(&senders, &mut receivers, &message).await;
                        }
                        start.elapsed()
                    })
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, fanout);
criterion_main!(benches);
