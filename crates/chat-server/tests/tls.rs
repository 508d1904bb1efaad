//! `--tls-cert` and `--tls-key`: the page, `/ws` and `/echo` over TLS with
//! a self-signed certificate made here; plaintext and bad files refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chat_server::{Args, Server, StartError};
use clap::Parser;
use common::{exchange, recv_text, send_text, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A self-signed certificate for localhost, written as PEM files under a
/// directory of this test's own; returns (cert path, key path, DER cert).
fn certificate(name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key, made.cert.der().to_vec())
}

async fn tls_server(name: &str) -> (TestServer, TlsConnector) {
    let (cert, key, der) = certificate(name);
    let server = TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let mut roots = RootCertStore::empty();
    roots.add(der.into()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, TlsConnector::from(Arc::new(config)))
}

async fn tls_stream(
    server: &TestServer,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    timeout(WAIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn wss_and_https_work_with_a_self_signed_certificate() {
    let (server, connector) = tls_server("serve").await;
    let port = server.addr.port();

    let stream = tls_stream(&server, &connector).await;
    let (mut chat, _) = timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws"), stream),
    )
    .await
    .unwrap()
    .unwrap();
    let stream = tls_stream(&server, &connector).await;
    let (mut echo, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/echo"), stream)
            .await
            .unwrap();
    send_text(&mut chat, "over tls").await;
    assert_eq!(recv_text(&mut chat).await, "Client says: over tls");
    send_text(&mut echo, "secret").await;
    assert_eq!(recv_text(&mut echo).await, "Message text was: secret");

    let mut https = tls_stream(&server, &connector).await;
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    timeout(WAIT, https.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn plaintext_clients_are_refused_and_others_go_on() {
    let (server, connector) = tls_server("plaintext").await;
    // A plain WebSocket handshake to the TLS port fails; the server lives.
    let plain = timeout(WAIT, tokio_tungstenite::connect_async(server.url("/ws")))
        .await
        .unwrap();
    assert!(plain.is_err());
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    // The server answers garbage with a TLS alert, or just closes.
    let _ = timeout(WAIT, raw.read_to_end(&mut sink)).await.unwrap();
    assert!(!sink.starts_with(b"HTTP"));

    let stream = tls_stream(&server, &connector).await;
    let port = server.addr.port();
    let (mut chat, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws"), stream)
            .await
            .unwrap();
    send_text(&mut chat, "still here").await;
    assert_eq!(recv_text(&mut chat).await, "Client says: still here");
    server.stop().await;
}

#[tokio::test]
async fn request_heads_are_limited_over_tls_too() {
    let (server, connector) = tls_server("heads").await;
    let head = |path: &str, filler: usize| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nX-Filler: {}\r\n\r\n",
            "a".repeat(filler)
        )
        .into_bytes()
    };
    for path in ["/ws", "/echo"] {
        let under = exchange(tls_stream(&server, &connector).await, head(path, 15 << 10)).await;
        assert_eq!(under.status, "HTTP/1.1 101 Switching Protocols", "{path}");
        let over = exchange(tls_stream(&server, &connector).await, head(path, 16 << 10)).await;
        assert_eq!(
            over.status, "HTTP/1.1 431 Request Header Fields Too Large",
            "{path}"
        );
        assert!(over.closed, "{path}");
    }
    for path in ["/ws", "/echo", "/static/index.html"] {
        let endless = format!("GET {path}{}", "a".repeat(100_000)).into_bytes();
        let answer = exchange(tls_stream(&server, &connector).await, endless).await;
        assert_eq!(
            answer.status, "HTTP/1.1 431 Request Header Fields Too Large",
            "{path}"
        );
        assert!(answer.closed, "{path}");
    }
    let garbage = exchange(
        tls_stream(&server, &connector).await,
        b"HELLO\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(garbage.status, "HTTP/1.1 400 Bad Request");
    assert!(garbage.closed);
    server.stop().await;
}

async fn start_with(cert: &Path, key: &Path) -> Result<Server, StartError> {
    let argv = [
        "chat-server",
        "--port",
        "0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    Server::bind(&Args::parse_from(argv)).await
}

#[tokio::test]
async fn unusable_certificates_stop_the_start_with_a_clear_error() {
    let (cert, key, _) = certificate("bad");
    let (other_cert, _, _) = certificate("other");
    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tls-none/nothing.pem");
    let error = start_with(&missing, &key).await.unwrap_err();
    assert!(matches!(error, StartError::Tls(_)));
    assert!(
        error
            .to_string()
            .starts_with("TLS: cannot read a certificate chain from "),
        "{error}"
    );
    // A key is not a certificate.
    let error = start_with(&key, &key).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("TLS: no PEM certificate found in "),
        "{error}"
    );
    let error = start_with(&cert, &cert).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("TLS: cannot read a private key from "),
        "{error}"
    );
    let error = start_with(&other_cert, &key).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("TLS: the certificate and key do not go together"),
        "{error}"
    );
    // One without the other is a usage error.
    assert!(Args::try_parse_from(["chat-server", "--tls-cert", "c.pem"]).is_err());
}

#[tokio::test]
async fn an_http_page_is_not_the_same_origin_as_a_tls_server() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let (server, connector) = tls_server("origin").await;
    let port = server.addr.port();
    let status = |origin: String, host: String| {
        let connector = connector.clone();
        let server = &server;
        async move {
            let mut request = format!("wss://localhost:{port}/ws")
                .into_client_request()
                .unwrap();
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
            request.headers_mut().insert("host", host.parse().unwrap());
            let stream = tls_stream(server, &connector).await;
            match timeout(WAIT, tokio_tungstenite::client_async(request, stream))
                .await
                .unwrap()
            {
                Ok((_, response)) => response.status().as_u16(),
                Err(Error::Http(response)) => response.status().as_u16(),
                Err(other) => panic!("{other}"),
            }
        }
    };
    let host = format!("localhost:{port}");
    assert_eq!(
        status(format!("https://localhost:{port}"), host.clone()).await,
        101
    );
    assert_eq!(
        status(format!("http://localhost:{port}"), host.clone()).await,
        403
    );
    // Default ports: `Host: h:443` is the origin `https://h`.
    assert_eq!(
        status("https://localhost".into(), "localhost:443".into()).await,
        101
    );
    assert_eq!(
        status("http://localhost".into(), "localhost:443".into()).await,
        403
    );
    server.stop().await;
}
