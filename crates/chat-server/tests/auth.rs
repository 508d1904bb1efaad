//! Sign-in with `--jwt-secret`: valid, expired, tampered, foreign, unsigned
//! and missing tokens on every endpoint; the token's subject as the name
//! and the target of `/msg`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_server::Auth;
use common::{handshake, handshake_status, recv_text, send_text, TestServer, WAIT};
use serde_json::{json, Value};
use tokio::time::timeout;

const SECRET: &str = "correct horse battery staple, 32+ bytes";

async fn signed_in_server() -> TestServer {
    TestServer::start(&["--jwt-secret", SECRET]).await
}

fn token(user: &str) -> String {
    Auth::hs256(SECRET.as_bytes())
        .unwrap()
        .issue(user, Duration::from_secs(600))
        .unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with these claims, signed with `secret`.
fn signed(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    // base64url without padding, as JWTs use.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn bad_or_missing_tokens_get_401_on_every_endpoint() {
    let server = signed_in_server().await;
    let now = unix_now();
    let expired = signed(&json!({ "sub": "alice", "exp": now - 3600 }), SECRET);
    let foreign = signed(
        &json!({ "sub": "alice", "exp": now + 600 }),
        "another secret",
    );
    let no_expiry = signed(&json!({ "sub": "alice" }), SECRET);
    let not_yet = signed(
        &json!({ "sub": "alice", "exp": now + 7200, "nbf": now + 3600 }),
        SECRET,
    );
    // The payload changed to another user, the signature kept.
    let good = token("alice");
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = b64(json!({ "sub": "mallory", "exp": now + 600 })
        .to_string()
        .as_bytes());
    parts[1] = &forged_payload;
    let tampered = parts.join(".");
    // "alg": "none", no signature.
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(json!({ "sub": "alice", "exp": now + 600 })
            .to_string()
            .as_bytes())
    );
    for path in ["/ws", "/ws?room=r", "/echo"] {
        let (status, headers, body) = handshake(&server, path, &[]).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(
            body,
            "a token is required: pass ?token=, an Authorization: Bearer header or a token cookie\n"
        );
        for bad in [
            &expired, &foreign, &no_expiry, &not_yet, &tampered, &unsigned,
        ] {
            let sep = if path.contains('?') { '&' } else { '?' };
            let (status, _, body) =
                handshake(&server, &format!("{path}{sep}token={bad}"), &[]).await;
            assert_eq!(
                (status, body.as_str()),
                (401, "the token is not valid\n"),
                "{path} {bad}"
            );
            let bearer = format!("Bearer {bad}");
            let status = handshake_status(&server, path, &[("authorization", &bearer)]).await;
            assert_eq!(status, 401, "{path} bearer {bad}");
        }
    }
    // A token whose subject cannot be a chat name: known, not welcome.
    let spaced = signed(&json!({ "sub": "a b", "exp": now + 600 }), SECRET);
    let status = handshake_status(&server, &format!("/ws?token={spaced}"), &[]).await;
    assert_eq!(status, 403);
    server.stop().await;
}

#[tokio::test]
async fn valid_tokens_open_every_endpoint_by_query_header_or_cookie() {
    let server = signed_in_server().await;
    let token = token("alice");
    let bearer = format!("Bearer {token}");
    let cookie = format!("theme=dark; token={token}");

    let mut echo = server.connect(&format!("/echo?token={token}")).await;
    send_text(&mut echo, "hi").await;
    assert_eq!(recv_text(&mut echo).await, "Message text was: hi");

    for headers in [
        [("authorization", bearer.as_str())],
        [("cookie", cookie.as_str())],
    ] {
        assert_eq!(handshake_status(&server, "/ws", &headers).await, 101);
    }
    let mut classic = server.connect(&format!("/ws?token={token}")).await;
    send_text(&mut classic, "hello").await;
    assert_eq!(recv_text(&mut classic).await, "Client says: hello");
    server.stop().await;
}

#[tokio::test]
async fn the_token_names_the_client_and_msg_reaches_the_user() {
    let server = signed_in_server().await;
    // The name asked for is ignored: the token says who this is.
    let mut alice = server
        .connect(&format!("/ws?room=r&name=mallory&token={}", token("alice")))
        .await;
    assert_eq!(recv_text(&mut alice).await, "alice joined");
    let mut bob = server
        .connect(&format!("/ws?room=r&token={}", token("bob")))
        .await;
    assert_eq!(recv_text(&mut bob).await, "bob joined");
    assert_eq!(recv_text(&mut alice).await, "bob joined");

    let mut members: Vec<String> = server
        .rooms
        .members("r")
        .into_iter()
        .map(|(_, m)| format!("{}/{}", m.user().unwrap(), m.name().unwrap()))
        .collect();
    members.sort();
    assert_eq!(members, ["alice/alice", "bob/bob"]);

    send_text(&mut bob, "/nick mallory").await;
    assert_eq!(
        recv_text(&mut bob).await,
        "your name is your user id, from your token"
    );
    send_text(&mut bob, "/msg alice psst").await;
    assert_eq!(recv_text(&mut alice).await, "[bob → alice] psst");
    assert_eq!(recv_text(&mut bob).await, "[bob → alice] psst");

    // A second session of the same user gets private messages too.
    let mut alice_phone = server
        .connect(&format!("/ws?room=elsewhere&token={}", token("alice")))
        .await;
    assert_eq!(recv_text(&mut alice_phone).await, "alice joined");
    send_text(&mut bob, "/msg alice both").await;
    assert_eq!(recv_text(&mut alice).await, "[bob → alice] both");
    assert_eq!(recv_text(&mut alice_phone).await, "[bob → alice] both");
    server.stop().await;
}

#[tokio::test]
async fn the_binary_issues_tokens_the_server_accepts() {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--issue-token", "carol", "--token-ttl", "1m"])
            .env("CHAT_JWT_SECRET", SECRET)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let server = signed_in_server().await;
    let mut carol = server
        .connect(&format!("/ws?room=r&token={}", token.trim()))
        .await;
    assert_eq!(recv_text(&mut carol).await, "carol joined");
    server.stop().await;

    // Without a secret there is nothing to sign with.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--issue-token", "carol"])
        .env_remove("CHAT_JWT_SECRET")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
}

#[tokio::test]
async fn with_any_origin_a_cookie_does_not_sign_in() {
    // Any page may open a socket here, and the browser would add the
    // visitor's cookie: only a token the page itself holds counts.
    let server = TestServer::start(&["--jwt-secret", SECRET, "--any-origin"]).await;
    let cookie = format!("token={}", token("alice"));
    let evil = [
        ("origin", "https://evil.example"),
        ("cookie", cookie.as_str()),
    ];
    let (status, _, body) = handshake(&server, "/ws?room=r", &evil).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        "a token is required: pass ?token= or an Authorization: Bearer header\n"
    );
    let by_query = format!("/ws?room=r&token={}", token("alice"));
    assert_eq!(
        handshake_status(&server, &by_query, &[("origin", "https://evil.example")]).await,
        101
    );
    server.stop().await;
    // With the Origin check on, the cookie of a same-origin page counts.
    let server = signed_in_server().await;
    let same = format!("http://{}", server.addr);
    let page = [("origin", same.as_str()), ("cookie", cookie.as_str())];
    assert_eq!(handshake_status(&server, "/ws?room=r", &page).await, 101);
    server.stop().await;
}

/// Runs the binary with `args` and `env`, which must refuse to start;
/// returns what it printed on stderr.
async fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("the server started instead of refusing")
    .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn weak_settings_stop_the_start_with_an_error_naming_them() {
    let said = refused_start(&[], &[("CHAT_JWT_SECRET", "")]).await;
    assert!(said.contains("--jwt-secret"), "{said}");
    assert!(
        said.contains("is 0 bytes long; give at least 32 random bytes"),
        "{said}"
    );
    let said = refused_start(&["--jwt-secret", "hunter2"], &[]).await;
    assert!(said.contains("is 7 bytes long"), "{said}");
    assert!(
        !said.contains("hunter2 "),
        "the secret is not printed back: {said}"
    );
    let said = refused_start(&["--ping-interval", "0"], &[]).await;
    assert!(said.contains("--ping-interval"), "{said}");
    assert!(said.contains("is zero"), "{said}");
    let said = refused_start(&[], &[("CHAT_QUEUE_BUDGET", "0")]).await;
    assert!(said.contains("--queue-budget"), "{said}");
}
