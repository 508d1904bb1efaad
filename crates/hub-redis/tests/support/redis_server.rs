//! A real `redis-server` child process on a free loopback port. Also used
//! by chat-server's and hub-bench's tests (included by path), so it
//! depends on tokio only.

#![allow(dead_code, unreachable_pub)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Every wait in these tests ends by then.
pub const WAIT: Duration = Duration::from_secs(10);

/// A `redis-server` child process, killed when dropped. Nothing is saved
/// to disk, so a restart starts empty unless told otherwise.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port.
    pub async fn start() -> Self {
        // The port is free when asked; a clash with another process in
        // between fails the start, which is then tried on another port.
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port).await {
                return Self {
                    child: Some(child),
                    port,
                };
            }
        }
        panic!("redis-server did not start; is it installed? (scripts/test installs it)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server and waits for it to be gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again, on the same port (empty).
    pub async fn restart(&mut self) {
        self.stop().await;
        for _ in 0..50 {
            if let Some(child) = spawn(self.port).await {
                self.child = Some(child);
                return;
            }
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// A loopback port free when asked.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Spawns a server on `port` and waits until it answers PING; `None` if it
/// exits or does not answer in time.
async fn spawn(port: u16) -> Option<Child> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    answering(child, port, WAIT).await
}

/// `child`, a `redis-server` on `port`, once it answers PING; `None` (and
/// killed) if it exits or does not answer `within`.
pub async fn answering(mut child: Child, port: u16, within: Duration) -> Option<Child> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if ping(port).await {
            return Some(child);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill().await;
    None
}

/// Whether a Redis answers PING on `port`, within [`WAIT`].
pub async fn ping(port: u16) -> bool {
    let Ok(Ok(mut stream)) = timeout(WAIT, TcpStream::connect(("127.0.0.1", port))).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    matches!(
        timeout(WAIT, stream.read_exact(&mut reply)).await,
        Ok(Ok(_))
    ) && &reply == b"+PONG\r\n"
}
