//! Helpers shared by the chat-server integration tests: an in-process or
//! child-process server on 127.0.0.1:0, and a WebSocket client with bounded
//! waits.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use chat_server::{Args, Server};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a client's WebSocket runs over (TCP, TLS...).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Io for S {}

/// A chat server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The hub behind the room chat.
    pub rooms: hub::Hub,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_on("0", extra).await
    }

    /// Starts on a given port of 127.0.0.1 (to restart where one stopped).
    pub async fn start_on(port: &str, extra: &[&str]) -> Self {
        // Tests hold clients that never answer the close handshake; a short
        // grace keeps `stop` quick (the shutdown tests use the defaults).
        let mut argv = vec![
            "chat-server",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--shutdown-grace",
            "200ms",
        ];
        argv.extend_from_slice(extra);
        let server = Server::bind(&Args::parse_from(argv)).await.unwrap();
        let addr = server.local_addr().unwrap();
        let rooms = server.rooms_hub().clone();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            rooms,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    pub async fn connect(&self, path: &str) -> Client {
        connect(&self.url(path)).await
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        timeout(WAIT, &mut self.task).await.unwrap().unwrap();
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, response) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    assert_eq!(response.status(), 101);
    client
}

/// The next text message, skipping pings; panics on anything else.
pub async fn recv_text<S: Io>(client: &mut WebSocketStream<S>) -> String {
    loop {
        match timeout(WAIT, client.next())
            .await
            .expect("no message in time")
        {
            Some(Ok(Message::Text(text))) => return text.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code and reason.
pub async fn recv_close(client: &mut Client) -> (u16, String) {
    loop {
        match timeout(WAIT, client.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Asserts nothing but pings arrives within `quiet`.
pub async fn assert_silent(client: &mut Client, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

pub async fn send_text<S: Io>(client: &mut WebSocketStream<S>, text: &str) {
    timeout(WAIT, client.send(Message::text(text)))
        .await
        .unwrap()
        .unwrap();
}

/// A plain HTTP/1.1 request; returns (status, headers in lower case, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (u16, Vec<(String, String)>, String) {
    http_with(addr, method, path, &[]).await
}

/// [`http`], with more request headers.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let extra: String = (headers.iter())
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("HTTP response timed out")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// What a server answered to a raw request.
#[derive(Debug)]
pub struct Answer {
    /// The status line, e.g. `HTTP/1.1 431 Request Header Fields Too Large`.
    pub status: String,
    /// Whether the server closed the connection after answering (not
    /// looked for after a `101`).
    pub closed: bool,
}

/// Writes `request` (as much of it as the server takes) while reading the
/// server's answer; after any answer but a `101`, reads on until the server
/// closes. Panics if the server neither answers nor closes within [`WAIT`].
pub async fn exchange<S: Io + Send + 'static>(stream: S, request: Vec<u8>) -> Answer {
    let (mut read, mut write) = tokio::io::split(stream);
    // The server may close before taking all of it: write errors are fine.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    let read_all = timeout(WAIT, async {
        loop {
            let head_done = answer.windows(4).any(|w| w == b"\r\n\r\n");
            if head_done && answer.starts_with(b"HTTP/1.1 101 ") {
                return;
            }
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    return;
                }
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        read_all.is_ok(),
        "the server neither closed nor switched protocols within {WAIT:?}; answered {text:?}"
    );
    Answer {
        status: text.split("\r\n").next().unwrap_or_default().to_owned(),
        closed,
    }
}

/// Waits (bounded) until the `/ws` hub reports `n` connections in /metrics.
pub async fn wait_for_connections(addr: SocketAddr, n: usize) {
    wait_for_metric(addr, &format!("hub_connections{{endpoint=\"ws\"}} {n}")).await;
}

/// Waits (bounded) until /metrics has this exact line.
pub async fn wait_for_metric(addr: SocketAddr, line: &str) {
    // Counting happens inside the server: all a client can do is ask.
    let mut every = tokio::time::interval(Duration::from_millis(10));
    timeout(WAIT, async {
        loop {
            every.tick().await;
            let (_, _, body) = http(addr, "GET", "/metrics").await;
            if body.lines().any(|l| l == line) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/metrics never said {line:?}"));
}

/// The answer to a WebSocket handshake with these extra headers: status,
/// headers and body (a 101's socket is dropped).
pub async fn handshake(
    server: &TestServer,
    path: &str,
    headers: &[(&'static str, &str)],
) -> (u16, tokio_tungstenite::tungstenite::http::HeaderMap, String) {
    handshake_at(server.addr, path, headers).await
}

/// [`handshake`] with the server at `addr`.
pub async fn handshake_at(
    addr: SocketAddr,
    path: &str,
    headers: &[(&'static str, &str)],
) -> (u16, tokio_tungstenite::tungstenite::http::HeaderMap, String) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;

    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let response = match timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake timed out")
    {
        Ok((_, response)) => response,
        Err(Error::Http(response)) => *response,
        Err(other) => panic!("handshake failed: {other}"),
    };
    let (parts, body) = response.into_parts();
    let body = String::from_utf8(body.unwrap_or_default()).unwrap();
    (parts.status.as_u16(), parts.headers, body)
}

/// The status a WebSocket handshake with these extra headers got.
pub async fn handshake_status(
    server: &TestServer,
    path: &str,
    headers: &[(&'static str, &str)],
) -> u16 {
    handshake(server, path, headers).await.0
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The chat-server binary running as a child process (killed on drop).
pub struct ChildServer {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    pub async fn spawn(extra: &[&str]) -> Self {
        Self::spawn_with(extra, Stdio::inherit()).await
    }

    /// Starts the binary with its log (stderr) going to `stderr`.
    pub async fn spawn_with(extra: &[&str], stderr: Stdio) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        // The first line names the bound address.
        let line = timeout(WAIT, lines.next_line())
            .await
            .expect("server did not start")
            .unwrap()
            .expect("server printed nothing");
        let addr = line
            .trim()
            .strip_prefix("chat-server listening on http://")
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("server already exited")
    }

    /// How many files (sockets included) the process has open.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .map(|kib| kib.trim().parse().unwrap())
            .unwrap()
    }

    pub async fn signal(&self, signal: &str) {
        let status = tokio::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("server did not exit within {within:?}"))
            .unwrap()
            .code()
    }
}
