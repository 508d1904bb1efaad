//! In-process fan-out: one publisher, N subscribers, 64-byte messages.
//!
//! Run with `cargo bench --bench fanout`. Each iteration publishes
//! `MESSAGES` messages and then every subscriber reads all of them, so the
//! throughput figure is deliveries per second (N × MESSAGES per iteration).
//!
//! `hub` is this workspace's hub. `seed_style` is the FastAPI seed's
//! `ConnectionManager` written in Rust: a `Vec` of per-connection senders,
//! each awaited in turn. Both run on the same single-threaded runtime and
//! are read the same way, so their ratio is meaningful on a noisy machine.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hub::{Event, Hub, Message};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const MESSAGES: usize = 16;
const SUBSCRIBERS: [usize; 4] = [1, 100, 1_000, 10_000];

fn payload() -> Message {
    Message::text("x".repeat(64))
}

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
            match connection.try_recv() {
                Ok(Event::Broadcast(m)) => {
                    std::hint::black_box(m);
                }
                other => panic!("benchmark lost a message: {other:?}"),
            }
        }
    }
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
    for receiver in receivers.iter_mut() {
        for _ in 0..MESSAGES {
            match receiver.try_recv() {
                Ok(m) => {
                    std::hint::black_box(m);
                }
                Err(error) => panic!("benchmark lost a message: {error}"),
            }
        }
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_64B");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let message = payload();
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

criterion_group!(benches, fanout);
criterion_main!(benches);
