//! The broadcast and idle runs against the real chat server, started in
//! this process on 127.0.0.1:0: exact delivery counts, no loss, no
//! duplicate.
// Test helpers panic on purpose when something is off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../hub-redis/tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "../../hub-redis/tests/support/redis_server.rs"]
mod redis_server;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use chat_server::{Args, Server};
use clap::Parser as _;
use hub_bench::{Broadcast, Error, Idle, Padding, UrlError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any run in these tests may take.
const WAIT: Duration = Duration::from_secs(60);

struct TestServer {
    addr: SocketAddr,
    /// The hub behind `/ws`.
    chat: hub::Hub,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> Self {
        let mut argv = vec![
            "chat-server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--shutdown-grace",
            "1s",
        ];
        argv.extend_from_slice(extra);
        let server = Server::bind(&Args::parse_from(argv)).await.unwrap();
        let addr = server.local_addr().unwrap();
        let chat = server.chat_hub().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            chat,
            stop,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        bounded(self.task).await.unwrap();
    }
}

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("the run took too long")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_flat_out() {
    let server = TestServer::start().await;
    let report = Broadcast::new(server.url("/ws"))
        .clients(50)
        .senders(2)
        .messages(100)
        .size(64)
        .timeout(Duration::from_secs(30))
        .server_pid(Some(std::process::id()))
        .run();
    let report = bounded(report).await.unwrap();
    assert_eq!(report.connect.connected, 50, "{report}");
    assert_eq!(report.connect.failed, 0, "{report}");
    assert_eq!(report.sent, 2 * 100, "{report}");
    assert_eq!(report.deliveries.expected, 50 * 2 * 100, "{report}");
    assert_eq!(report.deliveries.received, 50 * 2 * 100, "{report}");
    assert_eq!(report.deliveries.lost, 0, "{report}");
    assert_eq!(report.deliveries.duplicated, 0, "{report}");
    assert_eq!(report.disconnected, 0, "{report}");
    assert!(!report.timed_out, "{report}");
    assert!(report.passed(), "{report}");
    assert!(report.deliveries.per_second > 0.0, "{report}");
    let latency = report.latency_ms.as_ref().unwrap();
    assert!(
        latency.p50 <= latency.p99 && latency.p99 <= latency.max,
        "{report}"
    );
    assert!(report.tool_cpu.is_some(), "{report}");
    let server_usage = report.server.as_ref().unwrap();
    assert!(server_usage.vm_rss_bytes.unwrap() > 0, "{report}");
    assert_eq!(report.close.clean, 50, "{report}");
    server.stop().await;
}

/// The server's /metrics page.
async fn metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = bounded(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    bounded(tcp.read_to_string(&mut body)).await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_compressed_to_a_json_room() {
    let server = TestServer::start_with(&["--compression"]).await;
    let report = Broadcast::new(server.url("/ws?room=zip&format=json"))
        .clients(30)
        .messages(100)
        .size(300)
        .padding(Padding::Prose)
        .compression(true)
        .timeout(Duration::from_secs(30))
        .run();
    let report = bounded(report).await.unwrap();
    assert_eq!(report.deliveries.received, 30 * 100, "{report}");
    assert_eq!(report.deliveries.lost, 0, "{report}");
    assert_eq!(report.deliveries.duplicated, 0, "{report}");
    assert!(report.passed(), "{report}");
    // Deflated on the wire, to every client.
    let metrics = metrics(server.addr).await;
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{{endpoint=\"rooms\"}} ");
        (metrics.lines())
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(value("ws_compressed_sessions_total"), 30);
    let (before, after) = (
        value("ws_deflate_bytes_in_total"),
        value("ws_deflate_bytes_out_total"),
    );
    assert!(after < before * 3 / 4, "{after} of {before}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_across_two_nodes_sharing_redis() {
    let redis = redis_server::RedisServer::start().await;
    let url = redis.url();
    let a = TestServer::start_with(&["--redis-url", &url]).await;
    let b = TestServer::start_with(&["--redis-url", &url]).await;
    let run = Broadcast::new(a.url("/ws"))
        .also_urls(vec![b.url("/ws")])
        .clients(40)
        .senders(2)
        .messages(50)
        .size(64)
        .timeout(Duration::from_secs(30));
    let connected = async {
        // Half the clients on each node, a sender on each.
        let report = run.run().await.unwrap();
        assert_eq!(report.deliveries.received, 40 * 2 * 50, "{report}");
        assert_eq!(report.deliveries.lost, 0, "{report}");
        assert_eq!(report.deliveries.duplicated, 0, "{report}");
        assert!(report.passed(), "{report}");
        assert!(report.url.contains(&b.url("/ws")), "{report}");
    };
    bounded(connected).await;
    assert_eq!(
        (
            a.chat.stats().connected_total,
            b.chat.stats().connected_total
        ),
        (20, 20),
        "clients go to each node in turn"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_hear_their_own_room_across_two_nodes_on_a_redis_cluster() {
    let cluster = redis_cluster::RedisCluster::start(3, 0).await;
    let seeds = cluster.seeds();
    let args = ["--redis-cluster", &seeds[0], "--redis-cluster", &seeds[1]];
    let a = TestServer::start_with(&args).await;
    let b = TestServer::start_with(&args).await;
    let query = "/ws?room=r{i%6}&format=json";
    let run = Broadcast::new(a.url(query))
        .also_urls(vec![b.url(query)])
        .clients(60)
        .senders(6)
        .groups(6)
        .messages(50)
        .size(64)
        .timeout(Duration::from_secs(30));
    let report = bounded(run.run()).await.unwrap();
    // Each client hears the one sender of its room, wherever it is.
    assert_eq!(report.deliveries.expected, 60 * 50, "{report}");
    assert_eq!(report.deliveries.received, 60 * 50, "{report}");
    assert_eq!(report.deliveries.lost, 0, "{report}");
    assert_eq!(report.deliveries.duplicated, 0, "{report}");
    assert!(report.passed(), "{report}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_at_a_rate() {
    let server = TestServer::start().await;
    let report = Broadcast::new(server.url("/ws"))
        .clients(50)
        .senders(2)
        .messages(100)
        .size(64)
        .rate(Some(200.0))
        .timeout(Duration::from_secs(30))
        .run();
    let report = bounded(report).await.unwrap();
    assert_eq!(report.deliveries.received, 50 * 2 * 100, "{report}");
    assert_eq!(report.deliveries.lost, 0, "{report}");
    assert_eq!(report.deliveries.duplicated, 0, "{report}");
    assert!(report.passed(), "{report}");
    // 100 messages at 200/s take about half a second.
    assert!(report.measured_seconds >= 0.45, "{report}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_reaches_only_the_sender() {
    // /echo answers `Message text was: {text}` to the sender alone: with
    // a single client, that is everybody.
    let server = TestServer::start().await;
    let report = Broadcast::new(server.url("/echo"))
        .clients(1)
        .senders(1)
        .messages(50)
        .size(40)
        .timeout(Duration::from_secs(10))
        .run();
    let report = bounded(report).await.unwrap();
    assert_eq!(report.deliveries.received, 50, "{report}");
    assert!(report.passed(), "{report}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_all_connect() {
    let server = TestServer::start().await;
    let report = Idle::new(server.url("/ws"))
        .clients(100)
        .source_ips(Some(2))
        .hold(Duration::from_millis(300))
        .server_pid(Some(std::process::id()))
        .run();
    let report = bounded(report).await.unwrap();
    assert_eq!(report.connect.connected, 100, "{report}");
    assert_eq!(report.connect.failed, 0, "{report}");
    assert_eq!(report.connect.source_ips, 2, "{report}");
    assert_eq!(report.disconnected, 0, "{report}");
    assert_eq!(report.close.clean, 100, "{report}");
    assert!(report.passed(), "{report}");
    let memory = report.server.as_ref().unwrap();
    assert!(memory.rss_connected_bytes > 0, "{report}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_server_is_a_failed_sender() {
    // Bind then drop a listener: nothing listens on that port any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let run = Broadcast::new(format!("ws://{addr}/ws")).clients(3).run();
    let error = bounded(run).await.unwrap_err();
    assert!(
        matches!(error, Error::SenderConnect { index: 0, .. }),
        "{error:?}"
    );
    let Error::SenderConnect { source, .. } = &error else {
        unreachable!()
    };
    assert_eq!(
        source.advice(),
        Some("is the server running at this address?")
    );

    let run = Idle::new(format!("ws://{addr}/ws"))
        .clients(3)
        .hold(Duration::ZERO)
        .run();
    let report = bounded(run).await.unwrap();
    assert_eq!(report.connect.failed, 3);
    assert!(!report.passed());
}

#[tokio::test]
async fn remote_targets_are_refused() {
    for url in ["ws://203.0.113.7:8000/ws", "ws://example.com/ws"] {
        let error = Idle::new(url).run().await.unwrap_err();
        assert!(
            matches!(error, Error::Url(UrlError::NotLoopback { .. })),
            "{error:?}"
        );
        assert!(error.to_string().contains("loopback"), "{error}");
    }
}
