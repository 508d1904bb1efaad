//! The room chat over real sockets: names, joins and leaves, commands, the
//! JSON format and resuming after a reconnect. `/ws` without parameters
//! stays the classic chat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{assert_silent, http, recv_text, send_text, Client, TestServer};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

async fn join(server: &TestServer, query: &str) -> Client {
    server.connect(&format!("/ws?{query}")).await
}

/// The next JSON frame (text mode frames are plain lines).
async fn recv_json(client: &mut Client) -> Value {
    let frame = recv_text(client).await;
    if std::env::var_os("SHOW_FRAMES").is_some() {
        eprintln!("{frame}");
    }
    serde_json::from_str(&frame).unwrap()
}

/// The next JSON frame of `type` (skipping member lists and the like).
async fn recv_json_of(client: &mut Client, kind: &str) -> Value {
    loop {
        let frame = recv_json(client).await;
        let personal_kind = frame["data"]["kind"].as_str();
        if frame["type"] == kind && personal_kind != Some("members") {
            return frame;
        }
    }
}

#[tokio::test]
async fn named_clients_chat_in_a_room() {
    let server = TestServer::start(&[]).await;
    let mut alice = join(&server, "room=rust&name=alice").await;
    assert_eq!(recv_text(&mut alice).await, "alice joined");
    let mut bob = server.connect("/ws/rust?name=bob").await;
    assert_eq!(recv_text(&mut alice).await, "bob joined");
    assert_eq!(recv_text(&mut bob).await, "bob joined");
    send_text(&mut alice, "hi bob").await;
    assert_eq!(recv_text(&mut alice).await, "alice: hi bob");
    assert_eq!(recv_text(&mut bob).await, "alice: hi bob");

    // Other rooms and the classic chat hear nothing of it, and vice versa.
    let mut classic = server.connect("/ws").await;
    let mut elsewhere = join(&server, "room=go&name=carol").await;
    assert_eq!(recv_text(&mut elsewhere).await, "carol joined");
    send_text(&mut classic, "plain").await;
    assert_eq!(recv_text(&mut classic).await, "Client says: plain");
    send_text(&mut bob, "still rust").await;
    assert_eq!(recv_text(&mut alice).await, "bob: still rust");
    assert_eq!(recv_text(&mut bob).await, "bob: still rust");
    assert_silent(&mut elsewhere, QUIET).await;
    assert_silent(&mut classic, QUIET).await;

    drop(bob);
    assert_eq!(recv_text(&mut alice).await, "bob left");
    assert_silent(&mut classic, QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn commands_reply_to_the_sender() {
    let server = TestServer::start(&[]).await;
    let mut alice = join(&server, "room=r&name=alice").await;
    assert_eq!(recv_text(&mut alice).await, "alice joined");
    let mut bob = join(&server, "room=r&name=bob").await;
    assert_eq!(recv_text(&mut bob).await, "bob joined");
    assert_eq!(recv_text(&mut alice).await, "bob joined");

    send_text(&mut alice, "/who").await;
    assert_eq!(recv_text(&mut alice).await, "in r: alice, bob");
    send_text(&mut alice, "/msg bob psst").await;
    assert_eq!(recv_text(&mut bob).await, "[alice → bob] psst");
    assert_eq!(recv_text(&mut alice).await, "[alice → bob] psst");
    send_text(&mut alice, "/msg nobody hello").await;
    assert_eq!(
        recv_text(&mut alice).await,
        "no one called nobody is connected"
    );
    send_text(&mut alice, "/dance").await;
    assert_eq!(
        recv_text(&mut alice).await,
        "unknown command /dance; try /msg NAME text, /who or /nick NAME"
    );
    send_text(&mut alice, "/msg bob").await;
    assert_eq!(recv_text(&mut alice).await, "usage: /msg NAME text");
    assert_silent(&mut bob, QUIET).await;

    send_text(&mut alice, "/nick ally").await;
    assert_eq!(recv_text(&mut bob).await, "alice is now known as ally");
    assert_eq!(recv_text(&mut alice).await, "alice is now known as ally");
    send_text(&mut alice, "renamed").await;
    assert_eq!(recv_text(&mut bob).await, "ally: renamed");
    assert_eq!(recv_text(&mut alice).await, "ally: renamed");
    send_text(&mut bob, "/msg ally back").await;
    assert_eq!(recv_text(&mut alice).await, "[bob → ally] back");
    assert_eq!(recv_text(&mut bob).await, "[bob → ally] back");
    drop(alice);
    assert_eq!(recv_text(&mut bob).await, "ally left");
    server.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_refused_before_the_upgrade() {
    let server = TestServer::start(&[]).await;
    let (status, _, body) = http(server.addr, "GET", "/ws?room=a%2Fb").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "room names are 1 to 64 letters, digits, '-', '_' or '.'\n"
    );
    let (status, _, body) = http(server.addr, "GET", "/ws?format=xml").await;
    assert_eq!(
        (status, body.as_str()),
        (400, "format must be text or json\n")
    );
    server.stop().await;
}

#[tokio::test]
async fn json_clients_resume_without_gap_or_duplicate() {
    let server = TestServer::start(&[]).await;
    let mut writer = join(&server, "room=r&name=writer").await;
    assert_eq!(recv_text(&mut writer).await, "writer joined");

    let mut reader = join(&server, "room=r&name=reader&format=json").await;
    let welcome = recv_json_of(&mut reader, "personal").await;
    assert_eq!(welcome["data"]["kind"], "welcome");
    assert_eq!(welcome["data"]["room"], "r");
    assert_eq!(welcome["data"]["name"], "reader");
    let joined = recv_json_of(&mut reader, "message").await;
    assert_eq!(joined["data"]["kind"], "joined");
    assert_eq!(joined["data"]["from"], "reader");
    // The welcome names the offset of the first line this client gets.
    assert_eq!(welcome["data"]["next"], joined["offset"]);
    assert_eq!(recv_text(&mut writer).await, "reader joined");

    send_text(&mut writer, "one").await;
    assert_eq!(recv_text(&mut writer).await, "writer: one");
    let one = recv_json_of(&mut reader, "message").await;
    assert_eq!(one["room"], "r");
    assert_eq!(one["data"]["kind"], "chat");
    assert_eq!(one["data"]["from"], "writer");
    assert_eq!(one["data"]["text"], "one");
    assert!(one["data"]["time"].as_u64().unwrap() > 1_600_000_000_000);
    let epoch = one["epoch"].as_str().unwrap().to_owned();
    let offset = one["offset"].as_u64().unwrap();
    assert_eq!(offset, joined["offset"].as_u64().unwrap() + 1);

    // The reader drops; three lines go by while it is away.
    drop(reader);
    assert_eq!(recv_text(&mut writer).await, "reader left");
    for text in ["two", "three", "four"] {
        send_text(&mut writer, text).await;
        assert_eq!(recv_text(&mut writer).await, format!("writer: {text}"));
    }
    let query = format!("room=r&name=reader&format=json&epoch={epoch}&offset={offset}");
    let mut back = join(&server, &query).await;
    let welcome = recv_json_of(&mut back, "personal").await;
    assert_eq!(welcome["data"]["resumed"]["replayed"], 4);
    // What it missed, in order, exactly once: the leave and the three lines.
    let missed = [
        ("left", "reader"),
        ("chat", "two"),
        ("chat", "three"),
        ("chat", "four"),
    ];
    for (i, (kind, what)) in missed.iter().enumerate() {
        let frame = recv_json_of(&mut back, "message").await;
        assert_eq!(frame["offset"].as_u64().unwrap(), offset + 1 + i as u64);
        assert_eq!(frame["data"]["kind"], *kind);
        let field = if *kind == "chat" { "text" } else { "from" };
        assert_eq!(frame["data"][field], *what);
    }
    // Back in the room: the others hear it, then live lines follow.
    let rejoined = recv_json_of(&mut back, "message").await;
    assert_eq!(
        (&rejoined["data"]["kind"], &rejoined["data"]["from"]),
        (&Value::from("joined"), &Value::from("reader"))
    );
    assert_eq!(recv_text(&mut writer).await, "reader joined");
    send_text(&mut writer, "five").await;
    let live = recv_json_of(&mut back, "message").await;
    assert_eq!(
        (live["offset"].as_u64().unwrap(), &live["data"]["text"]),
        (offset + 6, &Value::from("five"))
    );

    // A position from another epoch gets a resync notice.
    let mut stranger = join(&server, "room=r&name=s&format=json&epoch=1&offset=0").await;
    let welcome = recv_json_of(&mut stranger, "personal").await;
    assert_eq!(welcome["data"]["resumed"]["resync"]["missed"], Value::Null);
    let notice = recv_json_of(&mut stranger, "resync").await;
    assert_eq!(
        (notice["room"].as_str(), &notice["missed"]),
        (Some("r"), &Value::Null)
    );
    server.stop().await;
}

/// A JSON client's view of the member list: the list it got on joining,
/// changed by the presence diffs of the lines at or after the list's
/// place (as the page does).
#[derive(Debug, Default)]
struct Sidebar {
    members: Option<std::collections::BTreeSet<String>>,
    at: Option<(String, u64)>,
}

impl Sidebar {
    /// Takes in a frame; true if it changed the list.
    fn take(&mut self, frame: &Value) -> bool {
        let data = &frame["data"];
        let names = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .map(|names| {
                    names
                        .iter()
                        .map(|n| n.as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        if frame["type"] == "personal" && data["kind"] == "members" {
            self.members = Some(names(&data["members"]).into_iter().collect());
            self.at = Some((
                data["epoch"].as_str().unwrap().to_owned(),
                data["at"].as_u64().unwrap(),
            ));
            return true;
        }
        let (Some(members), Some((epoch, at))) = (self.members.as_mut(), &self.at) else {
            return false;
        };
        if frame["type"] != "message" || data["presence"].is_null() {
            return false;
        }
        let offset = frame["offset"].as_u64().unwrap();
        if frame["epoch"].as_str() == Some(epoch.as_str()) && offset < *at {
            return false;
        }
        for name in names(&data["presence"]["leaves"]) {
            members.remove(&name);
        }
        members.extend(names(&data["presence"]["joins"]));
        true
    }

    fn names(&self) -> Vec<&str> {
        self.members.iter().flatten().map(String::as_str).collect()
    }
}

#[tokio::test]
async fn json_clients_get_the_member_list_then_its_changes() {
    let server = TestServer::start(&[]).await;
    let mut ann = join(&server, "room=m&name=ann&format=json").await;
    let mut sidebar = Sidebar::default();
    while sidebar.members.is_none() {
        sidebar.take(&recv_json(&mut ann).await);
    }
    assert_eq!(sidebar.names(), ["ann"]);
    // Her own arrival, already in her list.
    let own = recv_json_of(&mut ann, "message").await;
    assert_eq!(
        (&own["data"]["kind"], &own["data"]["presence"]),
        (
            &Value::from("joined"),
            &serde_json::json!({ "joins": ["ann"], "leaves": [] })
        )
    );
    sidebar.take(&own);
    assert_eq!(sidebar.names(), ["ann"]);
    // Others join: ann gets the change on a line that announces it, never
    // the whole list again. Two joins right after her own line share one
    // line (a machine slow enough to split the burst sends a second line
    // saying the same).
    let bo = join(&server, "room=m&name=bo").await;
    let mut bo_again = join(&server, "room=m&name=bo").await;
    let mut lines = 0;
    loop {
        let next = recv_json_of(&mut ann, "message");
        let Ok(frame) = tokio::time::timeout(QUIET, next).await else {
            break;
        };
        assert_eq!(
            (&frame["data"]["kind"], &frame["data"]["from"]),
            (&Value::from("joined"), &Value::from("bo"))
        );
        assert_eq!(
            frame["data"]["presence"],
            serde_json::json!({ "joins": ["bo"], "leaves": [] })
        );
        assert!(sidebar.take(&frame));
        lines += 1;
    }
    assert!((1..=2).contains(&lines), "{lines} lines for two joins");
    assert_eq!(sidebar.names(), ["ann", "bo"]);
    // A rename, then the last bo leaves.
    send_text(&mut bo_again, "/nick cy").await;
    let frame = recv_json_of(&mut ann, "message").await;
    assert_eq!(
        frame["data"]["presence"],
        serde_json::json!({ "joins": ["cy"], "leaves": [] })
    );
    sidebar.take(&frame);
    drop(bo);
    let frame = recv_json_of(&mut ann, "message").await;
    assert_eq!(frame["data"]["kind"], "left");
    assert_eq!(
        frame["data"]["presence"],
        serde_json::json!({ "joins": [], "leaves": ["bo"] })
    );
    sidebar.take(&frame);
    assert_eq!(sidebar.names(), ["ann", "cy"]);
    // Nothing else came: no member list for anyone but the joiner.
    assert_silent(&mut ann, QUIET).await;
    drop(bo_again);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_json_clients_join_one_room_and_all_stay() {
    // Each joiner gets the whole list; the others get diffs that add up to
    // the same list. Nobody is shed: a join costs each member one line.
    const CLIENTS: usize = 2000;
    let server = TestServer::start(&[]).await;
    let mut clients = Vec::with_capacity(CLIENTS);
    let mut sidebars = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut client = join(&server, &format!("room=crowd&name=c{i:04}&format=json")).await;
        // Its list comes before it is counted in.
        let mut sidebar = Sidebar::default();
        while sidebar.members.is_none() {
            sidebar.take(&recv_json(&mut client).await);
        }
        clients.push(client);
        sidebars.push(sidebar);
    }
    let everyone: Vec<String> = (0..CLIENTS).map(|i| format!("c{i:04}")).collect();
    let last = format!("c{:04}", CLIENTS - 1);
    let readers = clients
        .into_iter()
        .zip(sidebars)
        .map(|(mut client, mut sidebar)| {
            let last = last.clone();
            tokio::spawn(async move {
                // Until the last joiner's line, unless the list has it already.
                while !sidebar.members.as_ref().unwrap().contains(&last) {
                    let frame = recv_json(&mut client).await;
                    assert_ne!(frame["type"], "close", "{frame}");
                    sidebar.take(&frame);
                }
                (client, sidebar)
            })
        });
    let done = futures_util::future::join_all(readers).await;
    let mut kept = Vec::with_capacity(CLIENTS);
    for result in done {
        let (client, sidebar) = result.unwrap();
        assert_eq!(sidebar.names(), everyone);
        kept.push(client);
    }
    let (_, _, metrics) = http(server.addr, "GET", "/metrics").await;
    for line in [
        "hub_connections{endpoint=\"rooms\"} 2000",
        "hub_shed_total{endpoint=\"rooms\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    drop(kept);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_a_thousand_takes_a_burst_with_nobody_shed() {
    // A thousand JSON members read; another sends 300 lines as fast as it
    // can. Every member gets every line, in order, without a gap notice,
    // and nobody is shed or closed.
    const CLIENTS: usize = 1000;
    const LINES: usize = 300;
    let server = TestServer::start(&[]).await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        clients.push(join(&server, &format!("room=burst&name=m{i:04}&format=json")).await);
    }
    let readers: Vec<_> = (clients.into_iter())
        .map(|mut client| {
            tokio::spawn(async move {
                let mut next = 0;
                while next < LINES {
                    let frame = recv_text(&mut client).await;
                    assert!(
                        !frame.contains(r#""type":"resync""#)
                            && !frame.contains(r#""type":"lagged""#),
                        "{frame}"
                    );
                    if !frame.contains(r#""from":"sender""#) || !frame.contains(r#""kind":"chat""#)
                    {
                        continue;
                    }
                    let expected = format!(r#""text":"b{next}""#);
                    assert!(frame.contains(&expected), "expected b{next}, got {frame}");
                    next += 1;
                }
                client
            })
        })
        .collect();
    let mut sender = join(&server, "room=burst&name=sender").await;
    for n in 0..LINES {
        send_text(&mut sender, &format!("b{n}")).await;
    }
    let done = tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all(readers),
    );
    let kept: Vec<Client> = (done
        .await
        .expect("members got every line in time")
        .into_iter())
    .map(|reader| reader.unwrap())
    .collect();
    let (_, _, metrics) = http(server.addr, "GET", "/metrics").await;
    for line in [
        "hub_connections{endpoint=\"rooms\"} 1001",
        "hub_shed_total{endpoint=\"rooms\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    assert!(!metrics.contains(r#"code="1013""#), "{metrics}");
    drop((kept, sender));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_hoarded_across_many_rooms_stays_within_the_budget() {
    // 30 rooms × 40 lines of 60 KB (72 MB) from clients that then leave;
    // the room chat keeps 16 MiB of history in all. Larger runs:
    // HOARD_ROOMS=200 HOARD_LINES=140 HOARD_BUDGET_MIB=256 (8 MiB a room;
    // HOARD_LINE_BYTES sets the lines' size).
    let setting =
        |name: &str, default: u64| std::env::var(name).map_or(default, |v| v.parse().expect(name));
    let (rooms, lines) = (setting("HOARD_ROOMS", 30), setting("HOARD_LINES", 40));
    let budget_mib = setting("HOARD_BUDGET_MIB", 16);
    let budget = budget_mib << 20;
    let flag = format!("{budget_mib}MiB");
    let server = common::ChildServer::spawn(&["--history-budget", &flag]).await;
    let baseline = server.memory_kib("VmRSS");
    let line = "h".repeat(setting("HOARD_LINE_BYTES", 60_000) as usize);
    for room in 0..rooms {
        use futures_util::{SinkExt, StreamExt};
        let hoarder = common::connect(&server.url(&format!("/ws?room=h{room}&name=x"))).await;
        let (mut sink, mut stream) = hoarder.split();
        // Its own lines come back (read as they come, or the server would
        // stop reading from it): once the last has, all are stored.
        let echoes = tokio::spawn(async move {
            let mut echoed = 0;
            while echoed < lines {
                let frame = tokio::time::timeout(common::WAIT, stream.next()).await;
                match frame.expect("no line back in time").unwrap().unwrap() {
                    Message::Text(text) if text.starts_with("x: hhh") => echoed += 1,
                    _ => {}
                }
            }
        });
        for _ in 0..lines {
            sink.send(Message::text(line.as_str())).await.unwrap();
        }
        echoes.await.unwrap();
    }
    let (_, _, metrics) = http(server.addr, "GET", "/metrics").await;
    let held: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hub_history_bytes{endpoint=\"rooms\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(held <= budget, "{held} bytes of history");
    assert!(held >= budget / 2, "{held} bytes of history");
    // The budget and a tenth, what each emptied room keeps besides its
    // history (a few KB, rounded up to 32), and 16 MiB for the lines in
    // flight and the allocator's own.
    let bound = (budget + budget / 10) / 1024 + rooms * 32 + 16 * 1024;
    // What the lines in flight took is given back by the allocator's
    // background thread, within its decay time (10 s): RSS must come down
    // to the bound by then, and stay there.
    let started = std::time::Instant::now();
    let mut grown = server.memory_kib("VmRSS").saturating_sub(baseline);
    while grown >= bound && started.elapsed() < std::time::Duration::from_secs(30) {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        grown = server.memory_kib("VmRSS").saturating_sub(baseline);
    }
    let peak = server.memory_kib("VmHWM").saturating_sub(baseline);
    eprintln!(
        "history {held} bytes; RSS grew by {grown} KiB (peak {peak} KiB) over {baseline} KiB, \
         after {:?}",
        started.elapsed()
    );
    assert!(grown < bound, "grew by {grown} KiB, bound {bound} KiB");
}
