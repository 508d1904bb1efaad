//! The chat page in a real headless Chromium, driven through chromedriver:
//! two people join a room, see each other in the member list, chat, send a
//! private message, leave; the server drops a connection and the page
//! resumes, showing what was sent meanwhile exactly once. Messages are
//! rendered as text, never HTML. A page of another origin, built on
//! `/client.js` alone, keeps every line and the member list through drops.
//!
//! Needs `chromium` and `chromium-driver` (scripts/test installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{http, recv_text, send_text, wait_for_connections, wait_for_metric, TestServer, WAIT};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
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

/// Runs `script` (which returns a JSON value) until `done` says yes.
async fn wait_until(
    page: &Client,
    what: &str,
    script: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut every = tokio::time::interval(Duration::from_millis(25));
    timeout(WAIT, async {
        loop {
            every.tick().await;
            let value = page.execute(script, vec![]).await.unwrap();
            if done(&value) {
                return value;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("page never showed {what}"))
}

/// The texts of the message list.
const LINES: &str =
    "return Array.from(document.querySelectorAll('#messages li'), li => li.textContent);";
/// The names in the member list.
const MEMBERS: &str =
    "return Array.from(document.querySelectorAll('#members li'), li => li.textContent);";

fn lines_with(value: &Value, needle: &str) -> usize {
    value.as_array().map_or(0, |lines| {
        lines
            .iter()
            .filter(|l| l.as_str().is_some_and(|l| l.contains(needle)))
            .count()
    })
}

async fn wait_members(page: &Client, expected: &[&str]) {
    let expected: Vec<Value> = expected.iter().map(|n| Value::from(*n)).collect();
    wait_until(page, "the member list", MEMBERS, |v| {
        v.as_array() == Some(&expected)
    })
    .await;
}

async fn say(page: &Client, text: &str) {
    let input = page.find(Locator::Id("messageInput")).await.unwrap();
    input.send_keys(&format!("{text}\u{E007}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_see_each_other_and_survive_a_dropped_connection() {
    let driver = chromedriver().await;
    let alice = browser(&driver).await;
    let bob = browser(&driver).await;
    let server = TestServer::start(&[]).await;
    let base = format!("http://127.0.0.1:{}", server.addr.port());

    // Both join the same room; each sees the other in the member list.
    alice
        .goto(&format!("{base}/?room=test&name=alice"))
        .await
        .unwrap();
    wait_for_state(&alice, "open", WAIT).await;
    wait_members(&alice, &["alice"]).await;
    bob.goto(&format!("{base}/?room=test&name=bob"))
        .await
        .unwrap();
    wait_for_state(&bob, "open", WAIT).await;
    wait_members(&bob, &["alice", "bob"]).await;
    wait_members(&alice, &["alice", "bob"]).await;
    assert_eq!(alice.title().await.unwrap(), "#test · WebSocket Chat");

    // Enter sends; markup arrives and is shown as text, never as HTML.
    let tricky = r#"<b>hi</b> <img src=x onerror="document.title='pwned'">"#;
    say(&alice, tricky).await;
    let lines = wait_until(&bob, "alice's line", LINES, |v| lines_with(v, tricky) == 1).await;
    assert!(lines
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str().unwrap().contains(&format!("alice{tricky}"))));
    let markup = bob
        .execute(
            "return document.querySelectorAll('#messages b, #messages img').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(markup, json!(0));
    assert_eq!(bob.title().await.unwrap(), "#test · WebSocket Chat");
    say(&bob, "hello alice").await;
    wait_until(&alice, "bob's line", LINES, |v| {
        lines_with(v, "bobhello alice") == 1
    })
    .await;

    // A private message is marked as such, for both.
    say(&alice, "/msg bob just us").await;
    let private = "return Array.from(document.querySelectorAll('#messages li.private'), li => li.textContent);";
    wait_until(&bob, "the private line", private, |v| {
        lines_with(v, "alice → bobjust us") == 1
    })
    .await;
    wait_until(&alice, "the private copy", private, |v| {
        lines_with(v, "alice → bobjust us") == 1
    })
    .await;

    // Bob closes his tab: alice sees him leave.
    bob.close().await.unwrap();
    wait_until(&alice, "bob leaving", LINES, |v| {
        lines_with(v, "bob left") == 1
    })
    .await;
    wait_members(&alice, &["alice"]).await;

    // The server drops alice's connection; lines are sent while she is
    // away; she comes back by herself and shows each of them exactly once.
    let mut observer = server.connect("/ws?room=test&name=carol").await;
    wait_members(&alice, &["alice", "carol"]).await;
    let (alice_id, _) = server
        .rooms
        .members("test")
        .into_iter()
        .find(|(_, meta)| meta.name() == Some("alice"))
        .unwrap();
    assert!(server.rooms.disconnect(alice_id));
    for i in 0..3 {
        send_text(&mut observer, &format!("while you were away {i}")).await;
    }
    wait_for_state(&alice, "open", RECONNECT_WAIT).await;
    let lines = wait_until(&alice, "the missed lines", LINES, |v| {
        lines_with(v, "while you were away 2") == 1
    })
    .await;
    for i in 0..3 {
        assert_eq!(
            lines_with(&lines, &format!("while you were away {i}")),
            1,
            "{lines}"
        );
    }
    // Her first arrival and her return; no line twice.
    assert_eq!(lines_with(&lines, "alice joined"), 2, "{lines}");
    say(&alice, "back again").await;
    assert_eq!(
        recv_until(&mut observer, "alice: back again").await,
        "alice: back again"
    );

    // The screenshot the README shows, kept as a test artifact.
    let png = alice.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("chat.png"), png).unwrap();

    alice.close().await.unwrap();
    drop(observer);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_arrive_intact_over_permessage_deflate() {
    let driver = chromedriver().await;
    let alice = browser(&driver).await;
    let bob = browser(&driver).await;
    let server = TestServer::start(&["--compression"]).await;
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    for (page, name) in [(&alice, "alice"), (&bob, "bob")] {
        page.goto(&format!("{base}/?room=zip&name={name}"))
            .await
            .unwrap();
        wait_for_state(page, "open", WAIT).await;
    }
    wait_members(&alice, &["alice", "bob"]).await;
    // Chromium offers permessage-deflate by itself; both agreed.
    wait_for_metric(
        server.addr,
        "ws_compressed_sessions_total{endpoint=\"rooms\"} 2",
    )
    .await;

    // Long lines, repetitive and not, with characters of every width:
    // each arrives whole, once.
    let lines: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "{i}: {} — ünïcödé ✓ 🦀 {}",
                "deflate me ".repeat(40),
                i * 7919
            )
        })
        .collect();
    for line in &lines {
        say(&alice, line).await;
    }
    let seen = wait_until(&bob, "every long line", LINES, |v| {
        lines_with(v, &lines[4]) == 1
    })
    .await;
    for line in &lines {
        assert_eq!(lines_with(&seen, &format!("alice{line}")), 1, "{seen}");
    }
    say(&bob, &lines[0]).await;
    wait_until(&alice, "bob's long line", LINES, |v| {
        lines_with(v, &format!("bob{}", lines[0])) == 1
    })
    .await;

    // Enough lines of varied words to fill a chain's window: the later
    // ones go out deflated against the lines before them, which Chromium
    // inflates with the window it kept.
    const WORDS: [&str; 12] = [
        "build", "merge", "coffee", "deploy", "friday", "review", "tests", "broke", "again",
        "lunch", "ship", "maybe",
    ];
    let varied: Vec<String> = (0..30)
        .map(|i| {
            let words: Vec<&str> = (0..16).map(|k| WORDS[(i * 7 + k * k) % 12]).collect();
            format!("varied {i}: {}", words.join(" "))
        })
        .collect();
    for line in &varied {
        say(&alice, line).await;
    }
    let seen = wait_until(&bob, "every varied line", LINES, |v| {
        lines_with(v, &varied[29]) == 1
    })
    .await;
    for line in &varied {
        assert_eq!(lines_with(&seen, &format!("alice{line}")), 1, "{seen}");
    }

    // Deflated on the way out, and inflated on the way in.
    let (_, _, metrics) = http(server.addr, "GET", "/metrics").await;
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{{endpoint=\"rooms\"}} ");
        (metrics.lines())
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(value("ws_deflate_bytes_out_total") < value("ws_deflate_bytes_in_total") / 2);
    assert!(value("ws_inflate_bytes_in_total") < value("ws_inflate_bytes_out_total"));
    // Most lines went out in the room's chain, to both.
    let chained = value("ws_deflate_chained_total");
    assert!(chained >= 40, "{chained} lines in a chain's form");
    alice.close().await.unwrap();
    bob.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_joins_reads_as_one_line_and_fills_the_member_list() {
    let driver = chromedriver().await;
    let page = browser(&driver).await;
    // A long burst, so that the joins below surely fall in one.
    let server = TestServer::start(&["--presence-burst", "3s"]).await;
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    page.goto(&format!("{base}/?room=burst&name=alice"))
        .await
        .unwrap();
    wait_for_state(&page, "open", WAIT).await;
    wait_members(&page, &["alice"]).await;
    let mut joiners = Vec::new();
    for name in ["bo", "cy", "di", "ed"] {
        joiners.push(server.connect(&format!("/ws?room=burst&name={name}")).await);
    }
    let lines = wait_until(&page, "the burst's line", LINES, |v| {
        lines_with(v, "bo, cy and 2 others joined") == 1
    })
    .await;
    // One line for the four, none of its own for any of them.
    assert_eq!(lines_with(&lines, "bo joined"), 0, "{lines}");
    wait_members(&page, &["alice", "bo", "cy", "di", "ed"]).await;
    page.close().await.unwrap();
    drop(joiners);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_a_room_and_name_and_fits_a_phone() {
    let driver = chromedriver().await;
    let page = browser(&driver).await;
    let server = TestServer::start(&[]).await;
    page.set_window_size(390, 844).await.unwrap();
    page.goto(&format!("http://127.0.0.1:{}/", server.addr.port()))
        .await
        .unwrap();
    let room = page.find(Locator::Id("roomInput")).await.unwrap();
    assert_eq!(room.prop("value").await.unwrap().as_deref(), Some("lobby"));
    let name = page.find(Locator::Id("nameInput")).await.unwrap();
    name.send_keys("dana\u{E007}").await.unwrap();
    wait_for_state(&page, "open", WAIT).await;
    wait_members(&page, &["dana"]).await;
    assert_eq!(
        page.current_url().await.unwrap().query(),
        Some("room=lobby&name=dana")
    );
    // Nothing overflows sideways at phone width.
    let overflow = page
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow, json!(true));
    page.close().await.unwrap();
    server.stop().await;
}

/// The FastAPI tutorial's steps, literally, on its page at
/// `/static/index.html`: two windows, type and click Send, both show
/// `Client says: …`; close one, the other shows `A client disconnected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_steps_work_on_the_tutorial_page() {
    let driver = chromedriver().await;
    let first = browser(&driver).await;
    let second = browser(&driver).await;
    let server = TestServer::start(&[]).await;
    let port = server.addr.port();

    // One window through 127.0.0.1 and one through localhost: each page's
    // WebSocket goes to the host and port the page came from (and the
    // server's same-origin check lets both in).
    for (page, host) in [(&first, "127.0.0.1"), (&second, "localhost")] {
        page.goto(&format!("http://{host}:{port}/static/index.html"))
            .await
            .unwrap();
        wait_for_state(page, "open", WAIT).await;
        let url = page
            .execute(
                "return document.getElementById('status').dataset.url;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(url, json!(format!("ws://{host}:{port}/ws")));
        assert_eq!(page.title().await.unwrap(), "WebSocket Chat");
    }
    wait_for_connections(server.addr, 2).await;

    // Type a message and click Send: every window shows it.
    let input = first.find(Locator::Id("messageInput")).await.unwrap();
    input.send_keys("Hello from the tutorial").await.unwrap();
    let send = first
        .find(Locator::XPath("//button[text()='Send']"))
        .await
        .unwrap();
    send.click().await.unwrap();
    let said = json!(["Client says: Hello from the tutorial"]);
    for page in [&first, &second] {
        wait_until(page, "the line in every window", LINES, |v| v == &said).await;
    }
    assert_eq!(input.prop("value").await.unwrap().as_deref(), Some(""));

    // Enter sends too; markup is shown as text, never as HTML.
    say(&second, "<b>and back</b>").await;
    let both = json!([
        "Client says: Hello from the tutorial",
        "Client says: <b>and back</b>"
    ]);
    for page in [&first, &second] {
        wait_until(page, "the second line", LINES, |v| v == &both).await;
        let markup = page
            .execute(
                "return document.querySelectorAll('#messages b').length;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(markup, json!(0));
    }

    // Close one window: the other is told.
    first.close().await.unwrap();
    let left = json!([
        "Client says: Hello from the tutorial",
        "Client says: <b>and back</b>",
        "A client disconnected"
    ]);
    wait_until(&second, "the departure", LINES, |v| v == &left).await;

    // The screenshot the README shows, kept as a test artifact.
    let png = second.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tutorial.png"), png).unwrap();

    // The server restarts: the page says so, and comes back by itself.
    server.stop().await;
    wait_for_state(&second, "closed", WAIT).await;
    let server = TestServer::start_on(&port.to_string(), &[]).await;
    wait_for_state(&second, "open", RECONNECT_WAIT).await;
    wait_for_connections(server.addr, 1).await;
    say(&second, "back").await;
    wait_until(&second, "a line after the restart", LINES, |v| {
        v.as_array().and_then(|lines| lines.last()) == Some(&json!("Client says: back"))
    })
    .await;

    // The two pages link to each other.
    let rooms = second.find(Locator::LinkText("Rooms")).await.unwrap();
    assert_eq!(rooms.attr("href").await.unwrap().as_deref(), Some("/"));
    rooms.click().await.unwrap();
    second
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("join"))
        .await
        .unwrap();
    let tutorial = second
        .find(Locator::LinkText("Tutorial chat"))
        .await
        .unwrap();
    assert_eq!(
        tutorial.attr("href").await.unwrap().as_deref(),
        Some("/static/index.html")
    );
    second.close().await.unwrap();
    server.stop().await;
}

/// Serves `html` to every request on `listener`: a page of another origin
/// than the chat server's, as an application's page is.
fn serve_page(listener: TcpListener, html: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The page, and perhaps a favicon: a few requests at most.
        for _ in 0..50 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match timeout(WAIT, stream.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

/// The README's page on `/client.js`, pointed at `server` and reconnecting
/// sooner. Panics if the README no longer reads as expected.
fn readme_page(server: std::net::SocketAddr) -> String {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## The client module")
        .nth(1)
        .expect("README.md has a section on the client module");
    let page = (section.split("```html\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the client module's section shows a page");
    let mut page = page.to_owned();
    for (from, to) in [
        (
            "https://chat.example.com/client.js",
            format!("http://{server}/client.js"),
        ),
        (
            r#"{ room: "news", name: "ada" }"#,
            r#"{ room: "news", name: "ada", backoffMin: 100, backoffMax: 400 }"#.to_owned(),
        ),
    ] {
        assert!(page.contains(from), "the README's page has no {from}");
        page = page.replace(from, &to);
    }
    page
}

/// The names of a room's members, as the server has them, sorted.
fn members_of(server: &TestServer, room: &str) -> Vec<String> {
    let mut names: Vec<String> = (server.rooms.members(room).into_iter())
        .filter_map(|(_, meta)| meta.name().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Ada's connection to the news room, once she has one.
async fn ada(server: &TestServer, not: Option<hub::ConnId>) -> hub::ConnId {
    let mut every = tokio::time::interval(Duration::from_millis(20));
    timeout(RECONNECT_WAIT, async {
        loop {
            every.tick().await;
            let found = (server.rooms.members("news").into_iter())
                .find(|(id, meta)| meta.name() == Some("ada") && Some(*id) != not);
            if let Some((id, _)) = found {
                return id;
            }
        }
    })
    .await
    .expect("ada never connected (again)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_page_on_the_client_module_shows_every_line_once_through_drops() {
    let driver = chromedriver().await;
    let page = browser(&driver).await;
    // The page comes from an origin of its own, which the server lets in.
    let page_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let server = TestServer::start(&["--allowed-origin", &page_origin]).await;
    let page_server = serve_page(page_listener, readme_page(server.addr));
    page.goto(&format!("{page_origin}/")).await.unwrap();
    let first = ada(&server, None).await;
    wait_members(&page, &["ada"]).await;
    assert_eq!(page.title().await.unwrap(), "news: open");

    let mut bob = server.connect("/ws?room=news&name=bob").await;
    let carol = server.connect("/ws?room=news&name=carol").await;
    wait_members(&page, &["ada", "bob", "carol"]).await;

    // Lines flow while the server drops ada twice; meanwhile carol leaves
    // and dave joins.
    for i in 0..100 {
        send_text(&mut bob, &format!("line {i}")).await;
    }
    assert!(server.rooms.disconnect(first));
    for i in 100..150 {
        send_text(&mut bob, &format!("line {i}")).await;
    }
    drop(carol);
    let _dave = server.connect("/ws?room=news&name=dave").await;
    for i in 150..200 {
        send_text(&mut bob, &format!("line {i}")).await;
    }
    let second = ada(&server, Some(first)).await;
    assert!(server.rooms.disconnect(second));
    for i in 200..300 {
        send_text(&mut bob, &format!("line {i}")).await;
    }
    ada(&server, Some(second)).await;

    // Every line once, in order, and no resync.
    let expected: Vec<Value> = (0..300).map(|i| json!(format!("bob: line {i}"))).collect();
    let shown = "return Array.from(document.querySelectorAll('#lines li'), li => li.textContent);";
    let lines = wait_until(&page, "the last line", shown, |v| {
        lines_with(v, "bob: line 299") == 1
    })
    .await;
    assert_eq!(lines.as_array(), Some(&expected), "{lines}");

    // The member list is the server's.
    let members = members_of(&server, "news");
    assert_eq!(members, ["ada", "bob", "dave"]);
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    wait_members(&page, &members).await;
    assert_eq!(page.title().await.unwrap(), "news: open");

    page.close().await.unwrap();
    page_server.abort();
    server.stop().await;
}

/// Reads text lines until `wanted` (bounded).
async fn recv_until(client: &mut common::Client, wanted: &str) -> String {
    timeout(WAIT, async {
        loop {
            let line = recv_text(client).await;
            if line == wanted {
                return line;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never received {wanted:?}"))
}
