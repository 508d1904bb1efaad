//! What history and resume cost.
//!
//! Run with `cargo bench --bench history`. It prints, before the timings,
//! the resident memory each retained message costs (read from
//! /proc/self/statm around 200 000 retained 64-byte messages), then
//! measures:
//! - `broadcast/history_on` against `broadcast/history_off`: publishing a
//!   64-byte message to a room of 100 readers, with and without history;
//! - `resume/N`: a connection resuming a room N messages back (replay from
//!   history, then read them all), beside `join_and_read_live/N`, which
//!   reads the same N messages live.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hub::{Event, Hub, Message, Position, Topic};

const PAYLOAD: usize = 64;

fn message() -> Message {
    Message::text("x".repeat(PAYLOAD))
}

/// Resident bytes of this process (Linux), or `None` elsewhere.
fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Resident bytes per retained message (payload included).
fn history_cost() -> Option<f64> {
    const N: usize = 200_000;
    let hub = Hub::builder().history(N, usize::MAX).build();
    let member = hub.connect().unwrap_or_else(|e| panic!("{e}"));
    hub.join(member.id(), "r").unwrap_or_else(|e| panic!("{e}"));
    hub.to("r").broadcast(message());
    let before = resident()?;
    for _ in 0..N {
        // Each payload is its own allocation, as a chat line would be.
        hub.to("r").broadcast(message());
    }
    let after = resident()?;
    drop(member);
    Some(after.saturating_sub(before) as f64 / N as f64)
}

fn history(c: &mut Criterion) {
    if let Some(bytes) = history_cost() {
        println!("history: {bytes:.0} resident bytes per retained {PAYLOAD}-byte message");
    }

    let mut group = c.benchmark_group("broadcast");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (label, depth) in [
        ("history_on", hub::Builder::DEFAULT_HISTORY),
        ("history_off", 0),
    ] {
        let hub = Hub::builder().history(depth, usize::MAX).build();
        let mut readers: Vec<_> = (0..100)
            .map(|_| hub.connect().unwrap_or_else(|e| panic!("{e}")))
            .collect();
        for reader in &readers {
            hub.join(reader.id(), "r").unwrap_or_else(|e| panic!("{e}"));
        }
        let payload = message();
        group.throughput(Throughput::Elements(100));
        group.bench_function(label, |b| {
            b.iter(|| {
                hub.to("r").broadcast(payload.clone());
                for reader in &mut readers {
                    black_box(reader.try_recv().ok());
                }
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("resume");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for n in [100u64, 1_000] {
        let hub = Hub::new();
        let keeper = hub.connect().unwrap_or_else(|e| panic!("{e}"));
        hub.join(keeper.id(), "r").unwrap_or_else(|e| panic!("{e}"));
        // The position resumed from: the last message seen before the n.
        hub.to("r").broadcast(message());
        let seen = hub
            .position(&Topic::from("r"))
            .unwrap_or_else(|| panic!("room"));
        for _ in 0..n {
            hub.to("r").broadcast(message());
        }
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("resume", n), &n, |b, &n| {
            b.iter(|| {
                let mut conn = hub.connect().unwrap_or_else(|e| panic!("{e}"));
                let from = Position {
                    epoch: seen.epoch,
                    offset: seen.offset - 1,
                };
                hub.resume(conn.id(), "r", from)
                    .unwrap_or_else(|e| panic!("{e}"));
                for _ in 0..n {
                    match conn.try_recv() {
                        Ok(Event::Broadcast(b)) => {
                            black_box(b);
                        }
                        other => panic!("resume lost a message: {other:?}"),
                    }
                }
            });
        });
        group.bench_with_input(BenchmarkId::new("join_and_read_live", n), &n, |b, &n| {
            b.iter(|| {
                let mut conn = hub.connect().unwrap_or_else(|e| panic!("{e}"));
                hub.join(conn.id(), "live")
                    .unwrap_or_else(|e| panic!("{e}"));
                for _ in 0..n {
                    hub.to("live").broadcast(message());
                    match conn.try_recv() {
                        Ok(Event::Broadcast(b)) => {
                            black_box(b);
                        }
                        other => panic!("lost a message: {other:?}"),
                    }
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, history);
criterion_main!(benches);
