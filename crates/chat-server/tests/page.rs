//! The chat page in a real headless Chromium, driven through chromedriver:
//! it connects to the server it was loaded from, sends on Enter, renders
//! messages as text, shows its connection state and reconnects.
//!
//! Needs `chromium` and `chromium-driver` (scripts/test installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{recv_text, send_text, TestServer, WAIT};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Reconnecting waits out the page's backoff (at most a few seconds here).
const RECONNECT_WAIT: Duration = Duration::from_secs(20);

/// chromedriver on a port it picks itself; killed on drop.
struct Driver {
    _child: Child,
    url: String,
}

async fn chromedriver() -> Driver {
    let mut child = Command::new("chromedriver")
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver not found: install chromium and chromium-driver (scripts/test does)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                return rest.trim_end_matches('.').trim().to_owned();
            }
        }
        panic!("chromedriver exited before it started");
    })
    .await
    .expect("chromedriver did not start");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Driver {
        _child: child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut options = json!({
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
        ],
    });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    timeout(
        WAIT,
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url),
    )
    .await
    .expect("browser session timed out")
    .expect("cannot start a browser session")
}

async fn wait_for_state(page: &Client, state: &str, within: Duration) {
    page.wait()
        .at_most(within)
        .for_element(Locator::Css(&format!("#status[data-state=\"{state}\"]")))
        .await
        .unwrap_or_else(|e| panic!("page never reached state {state}: {e}"));
}

/// The texts of the page's message list.
async fn shown(page: &Client) -> Vec<String> {
    let texts = page
        .execute(
            "return Array.from(document.querySelectorAll('#messages li'), li => li.textContent);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(texts).unwrap()
}

/// Waits until the page's list shows `text` (polling the DOM, bounded).
async fn wait_shown(page: &Client, text: &str) {
    timeout(WAIT, async {
        while !shown(page).await.iter().any(|t| t == text) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("page never showed {text:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_chats_renders_text_and_reconnects() {
    let driver = chromedriver().await;
    let page = browser(&driver).await;
    let server = TestServer::start(&[]).await;
    let port = server.addr.port().to_string();

    // The page connects to the host and port it came from.
    page.goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    wait_for_state(&page, "open", WAIT).await;
    assert_eq!(page.title().await.unwrap(), "WebSocket Chat");
    let mut observer = server.connect("/ws").await;

    // Enter sends; markup arrives and is shown as text, never as HTML.
    let tricky = r#"<b>bold</b> & <img src=x onerror="document.title='pwned'">"#;
    let input = page.find(Locator::Id("messageInput")).await.unwrap();
    input.send_keys(&format!("{tricky}\u{E007}")).await.unwrap();
    let expected = format!("Client says: {tricky}");
    assert_eq!(recv_text(&mut observer).await, expected);
    wait_shown(&page, &expected).await;
    let markup = page
        .execute(
            "return document.querySelectorAll('#messages b, #messages img').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(markup, json!(0));
    assert_eq!(page.title().await.unwrap(), "WebSocket Chat");
    assert_eq!(input.prop("value").await.unwrap().as_deref(), Some(""));

    // Messages from others appear too.
    send_text(&mut observer, "from rust").await;
    wait_shown(&page, "Client says: from rust").await;

    // The server goes away: the page says so and disables sending.
    drop(observer);
    server.stop().await;
    wait_for_state(&page, "closed", WAIT).await;
    let status = page
        .find(Locator::Id("status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(status.starts_with("disconnected (1001)"), "{status}");
    assert_eq!(
        input.prop("disabled").await.unwrap().as_deref(),
        Some("true")
    );

    // It comes back on the same port: the page reconnects by itself.
    let server = TestServer::start_on(&port, &[]).await;
    wait_for_state(&page, "open", RECONNECT_WAIT).await;
    let mut observer = server.connect("/ws").await;
    input.send_keys("back\u{E007}").await.unwrap();
    assert_eq!(recv_text(&mut observer).await, "Client says: back");
    wait_shown(&page, "Client says: back").await;

    page.close().await.unwrap();
    drop(observer);
    server.stop().await;
}
