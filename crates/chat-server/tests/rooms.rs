//! The room chat over real sockets: names, joins and leaves, commands, the
//! JSON format and resuming after a reconnect. `/ws` without parameters
//! stays the classic chat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{assert_silent, http, recv_text, send_text, Client, TestServer};
use serde_json::Value;

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

#[tokio::test]
async fn json_clients_get_the_member_list() {
    let server = TestServer::start(&[]).await;
    let mut ann = join(&server, "room=m&name=ann&format=json").await;
    let mut members = Vec::new();
    for _ in 0..10 {
        let frame = recv_json(&mut ann).await;
        if frame["data"]["kind"] == "members" {
            members = frame["data"]["members"].as_array().unwrap().clone();
            if members.len() == 2 {
                break;
            }
        }
        if members.len() == 1 {
            // Someone else arrives.
            let _ = join(&server, "room=m&name=bo").await;
        }
    }
    assert_eq!(members, vec![Value::from("ann"), Value::from("bo")]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_hoarded_across_many_rooms_stays_within_the_budget() {
    // 30 rooms × 40 lines of 60 KB (72 MB) from clients that then leave;
    // the room chat keeps 16 MiB of history in all. Larger runs:
    // HOARD_ROOMS=200 HOARD_LINES=140 HOARD_BUDGET_MIB=256 (8 MiB a room).
    let setting =
        |name: &str, default: u64| std::env::var(name).map_or(default, |v| v.parse().expect(name));
    let (rooms, lines) = (setting("HOARD_ROOMS", 30), setting("HOARD_LINES", 40));
    let budget_mib = setting("HOARD_BUDGET_MIB", 16);
    let budget = budget_mib << 20;
    let flag = format!("{budget_mib}MiB");
    let server = common::ChildServer::spawn(&["--history-budget", &flag]).await;
    let baseline = server.memory_kib("VmRSS");
    let line = "h".repeat(60_000);
    for room in 0..rooms {
        let mut hoarder = common::connect(&server.url(&format!("/ws?room=h{room}&name=x"))).await;
        for _ in 0..lines {
            send_text(&mut hoarder, &line).await;
        }
        // Its own lines come back: once the last has, all are stored.
        let mut echoed = 0;
        while echoed < lines {
            if recv_text(&mut hoarder).await.starts_with("x: hhh") {
                echoed += 1;
            }
        }
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
    let grown = server.memory_kib("VmRSS").saturating_sub(baseline);
    let peak = server.memory_kib("VmHWM").saturating_sub(baseline);
    eprintln!(
        "history {held} bytes; RSS grew by {grown} KiB (peak {peak} KiB) over {baseline} KiB"
    );
    // The budget and a tenth, what each emptied room keeps besides its
    // history (its channel: about 100 KB), and 16 MiB for the lines in
    // flight and the allocator's own.
    let bound = (budget + budget / 10) / 1024 + rooms * 128 + 16 * 1024;
    assert!(grown < bound, "grew by {grown} KiB, bound {bound} KiB");
}
