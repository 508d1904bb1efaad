//! A real Redis Cluster of `redis-server` child processes on free loopback
//! ports, created with `redis-cli --cluster create`. Also used by
//! chat-server's and hub-bench's tests (included by path, beside
//! `redis_server.rs`, whose port helpers it uses), so it depends on tokio
//! only.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::redis_server::{answering, free_port};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{timeout, Instant};

/// Every wait for the cluster ends by then.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(30);

/// One `redis-server --cluster-enabled yes`.
struct Node {
    port: u16,
    bus: u16,
    child: Option<Child>,
}

/// A cluster of `masters` masters with `replicas` replicas each, killed
/// (and its files removed) when dropped. Nothing is saved but each node's
/// cluster configuration, so a restarted node is empty but keeps its place
/// in the cluster.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl RedisCluster {
    pub async fn start(masters: usize, replicas: usize) -> Self {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hub-redis-cluster-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..masters * (1 + replicas) {
            // Ports are free when asked; a clash with another process in
            // between fails the start, which is then tried on others.
            let node = async {
                for _ in 0..5 {
                    let (port, bus) = (free_port(), free_port());
                    let taken = (cluster.nodes.iter()).any(|n| [n.port, n.bus].contains(&bus));
                    if port == bus || taken {
                        continue;
                    }
                    if let Some(child) = cluster.spawn(port, bus).await {
                        return Node {
                            port,
                            bus,
                            child: Some(child),
                        };
                    }
                }
                panic!("redis-server did not start; is it installed? (scripts/test installs it)");
            };
            let node = node.await;
            cluster.nodes.push(node);
        }
        let addresses: Vec<String> = (cluster.nodes.iter())
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let created = timeout(CLUSTER_WAIT, created).await.unwrap().unwrap();
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.until_ready(masters).await;
        cluster
    }

    /// Seed URLs: every node.
    pub fn seeds(&self) -> Vec<String> {
        (self.nodes.iter())
            .map(|node| format!("redis://127.0.0.1:{}/", node.port))
            .collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|node| node.port).collect()
    }

    /// Each master's port, with the slot ranges it holds.
    pub async fn masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        for node in self.live() {
            if let Some(masters) = masters_of(node.port).await {
                return masters;
            }
        }
        panic!("no node answers CLUSTER SHARDS");
    }

    /// The port of the master holding `slot`.
    pub async fn master_of(&self, slot: u16) -> u16 {
        let masters = self.masters().await;
        let found = masters.iter().find(|(_, ranges)| {
            ranges
                .iter()
                .any(|(start, end)| (*start..=*end).contains(&slot))
        });
        found.map(|(port, _)| *port).expect("every slot is held")
    }

    /// Sends a command to one node (as `redis-cli` arguments) and returns
    /// its reply as `redis-cli` prints it.
    pub async fn cli(port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output();
        let output = timeout(CLUSTER_WAIT, output).await.unwrap().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Kills the node on `port` (as a crash would).
    pub async fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|node| node.port == port);
        if let Some(mut child) = node.and_then(|node| node.child.take()) {
            let _ = child.kill().await;
        }
    }

    /// Waits until a replica has taken over every slot and every live node
    /// says the cluster is ok.
    pub async fn until_failed_over(&self, masters: usize) {
        self.until_ready(masters).await;
    }

    /// Kills every node, then starts each again on its port: empty, with
    /// its cluster configuration.
    pub async fn restart_all(&mut self, masters: usize) {
        for index in 0..self.nodes.len() {
            if let Some(mut child) = self.nodes[index].child.take() {
                let _ = child.kill().await;
            }
        }
        for index in 0..self.nodes.len() {
            let (port, bus) = (self.nodes[index].port, self.nodes[index].bus);
            let mut child = None;
            for _ in 0..50 {
                child = self.spawn(port, bus).await;
                if child.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let child = child.unwrap_or_else(|| panic!("redis-server did not restart on {port}"));
            self.nodes[index].child = Some(child);
        }
        self.until_ready(masters).await;
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.child.is_some())
    }

    /// Waits until every live node reports `cluster_state:ok` and
    /// `masters` masters hold every slot, each master's replicas in sync.
    async fn until_ready(&self, masters: usize) {
        let deadline = Instant::now() + CLUSTER_WAIT;
        loop {
            let mut ready = true;
            for node in self.live() {
                let info = Self::cli(node.port, &["CLUSTER", "INFO"]).await;
                ready &= info.contains("cluster_state:ok");
                let replication = Self::cli(node.port, &["INFO", "replication"]).await;
                if replication.contains("role:slave") {
                    ready &= replication.contains("master_link_status:up");
                }
            }
            if ready {
                let held = self.masters().await;
                let slots: u32 = (held.iter())
                    .flat_map(|(_, ranges)| ranges)
                    .map(|(start, end)| u32::from(end - start) + 1)
                    .sum();
                if held.len() == masters && slots == 16_384 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the cluster did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a node on `port` and `bus`; `None` if it exits or does not
    /// answer in time.
    async fn spawn(&self, port: u16, bus: u16) -> Option<Child> {
        let config = self.dir.join(format!("nodes-{port}.conf"));
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
            ])
            .arg("--cluster-config-file")
            .arg(&config)
            .args(["--cluster-node-timeout", "1000"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        answering(child, port, CLUSTER_WAIT).await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `CLUSTER SHARDS` of the node on `port`, as masters' ports and their
/// slot ranges (a master without slots is left out).
async fn masters_of(port: u16) -> Option<Vec<(u16, Vec<(u16, u16)>)>> {
    // `redis-cli --no-raw` would print nested arrays; CLUSTER SLOTS is
    // flat enough to read line by line: start, end, then the master's
    // address, port and id, then the replicas'.
    let mut stream = timeout(CLUSTER_WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .ok()?
        .ok()?;
    stream.write_all(b"CLUSTER SLOTS\r\n").await.ok()?;
    let mut reader = BufReader::new(stream);
    let value = timeout(CLUSTER_WAIT, read_value(&mut reader))
        .await
        .ok()??;
    let Resp::Array(ranges) = value else {
        return None;
    };
    let mut masters: Vec<(u16, Vec<(u16, u16)>)> = Vec::new();
    for range in ranges {
        let Resp::Array(parts) = range else {
            return None;
        };
        let (Some(Resp::Int(start)), Some(Resp::Int(end)), Some(Resp::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return None;
        };
        let Some(Resp::Int(master_port)) = master.get(1) else {
            return None;
        };
        let (master_port, range) = (
            u16::try_from(*master_port).ok()?,
            (u16::try_from(*start).ok()?, u16::try_from(*end).ok()?),
        );
        match masters.iter_mut().find(|(port, _)| *port == master_port) {
            Some((_, held)) => held.push(range),
            None => masters.push((master_port, vec![range])),
        }
    }
    Some(masters)
}

/// Enough of RESP2 for CLUSTER SLOTS.
enum Resp {
    Int(i64),
    Bulk,
    Array(Vec<Resp>),
}

fn read_value<'a>(
    reader: &'a mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Resp>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = String::new();
        reader.read_line(&mut line).await.ok()?;
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1);
        match kind {
            ":" => Some(Resp::Int(rest.parse().ok()?)),
            "$" => {
                let length: i64 = rest.parse().ok()?;
                if length >= 0 {
                    let mut bytes = vec![0; usize::try_from(length).ok()? + 2];
                    reader.read_exact(&mut bytes).await.ok()?;
                }
                Some(Resp::Bulk)
            }
            "*" => {
                let count: usize = rest.parse().ok()?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(read_value(reader).await?);
                }
                Some(Resp::Array(items))
            }
            "+" => Some(Resp::Bulk),
            _ => None,
        }
    })
}
