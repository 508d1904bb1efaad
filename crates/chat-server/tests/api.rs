//! The server API (`/api/`) on the real server over loopback: keys, what
//! each endpoint does to clients, the errors, and the counters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../hub-redis/tests/support/redis_server.rs"]
mod redis_server;

use std::net::SocketAddr;
use std::time::Duration;

use common::{assert_silent, http, recv_text, Client, TestServer, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const KEY: &str = "an-api-key-of-at-least-32-bytes!!";
const QUIET: Duration = Duration::from_millis(300);

/// One API call: (status, headers in lower case, body as JSON).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = key.map_or(String::new(), |key| {
        format!("Authorization: Bearer {key}\r\n")
    });
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("the API answered within the wait")
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
    assert!(
        body.ends_with('\n') && !body.trim_end().contains('\n'),
        "one line: {body:?}"
    );
    (status, headers, serde_json::from_str(body).unwrap())
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (status, _, answer) = call(addr, "POST", path, Some(KEY), Some(body)).await;
    (status, answer)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, answer) = call(addr, "GET", path, Some(KEY), None).await;
    (status, answer)
}

/// The next JSON frame that is a room line (skipping lists and presence).
async fn next_line(client: &mut Client) -> Value {
    loop {
        let frame: Value = serde_json::from_str(&recv_text(client).await).unwrap();
        if frame["type"] == "message" && frame["data"]["kind"] != "joined" {
            return frame;
        }
    }
}

/// The next text line that is not about someone joining.
async fn next_text(client: &mut Client) -> String {
    loop {
        let line = recv_text(client).await;
        if !line.ends_with(" joined") {
            return line;
        }
    }
}

#[tokio::test]
async fn without_a_key_the_api_is_off() {
    let server = TestServer::start(&[]).await;
    let (status, _, body) = call(server.addr, "GET", "/api/rooms", Some(KEY), None).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({ "error": "the server API is off; start the server with --api-key" })
    );
    server.stop().await;
}

#[tokio::test]
async fn a_missing_or_wrong_key_gets_401() {
    let server = TestServer::start(&["--api-key", KEY]).await;
    let (status, headers, body) = call(server.addr, "GET", "/api/rooms", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({ "error": "send the API key as Authorization: Bearer KEY" })
    );
    assert_eq!(
        common::header(&headers, "www-authenticate"),
        Some("Bearer realm=\"api\"")
    );
    let wrong = &KEY.replace('!', "?");
    for key in [wrong.as_str(), &KEY[..KEY.len() - 1], "x"] {
        let (status, _, body) = call(server.addr, "GET", "/api/rooms", Some(key), None).await;
        assert_eq!((status, body), (401, json!({ "error": "wrong API key" })));
    }
    // Nothing was published on the way.
    let (status, _, _) = call(server.addr, "POST", "/api/publish", Some(wrong), Some("{}")).await;
    assert_eq!(status, 401);
    server.stop().await;
}

#[tokio::test]
async fn publish_reaches_json_and_text_members_at_the_position_it_answers() {
    let server = TestServer::start(&["--api-key", KEY]).await;
    let mut json_client = server.connect("/ws?room=news&name=ann&format=json").await;
    let mut text_client = server.connect("/ws?room=news&name=bob").await;
    // Presence lines first, so that what follows is the API's alone.
    while !recv_text(&mut text_client).await.contains("bob") {}
    let (status, placed) = post(
        server.addr,
        "/api/publish",
        r#"{"room": "news", "from": "bot", "text": "hello\nall"}"#,
    )
    .await;
    assert_eq!(status, 200, "{placed}");
    let line = next_line(&mut json_client).await;
    assert_eq!(line["room"], "news");
    assert_eq!(line["epoch"], placed["epoch"]);
    assert_eq!(line["offset"], placed["offset"]);
    assert_eq!(line["data"]["kind"], "chat");
    assert_eq!(line["data"]["from"], "bot");
    assert_eq!(line["data"]["text"], "hello all", "made one line");
    assert_eq!(next_text(&mut text_client).await, "bot: hello all");

    // An application event: JSON clients get it, text clients nothing.
    let (status, second) = post(
        server.addr,
        "/api/publish",
        r#"{"room": "news", "from": "bot", "data": {"score": [3, 1]}}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(second["offset"], placed["offset"].as_u64().unwrap() + 1);
    let event = next_line(&mut json_client).await;
    assert_eq!(event["data"]["kind"], "data");
    assert_eq!(event["data"]["data"], json!({ "score": [3, 1] }));
    assert_eq!(event["offset"], second["offset"]);
    assert_silent(&mut text_client, QUIET).await;

    // A room nobody is in keeps it for whoever comes.
    let (status, kept) = post(
        server.addr,
        "/api/publish",
        r#"{"room": "later", "from": "bot", "text": "kept"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(kept["offset"], 0);
    let resume = format!(
        "/ws?room=later&name=cy&format=json&epoch={}&offset={}",
        kept["epoch"].as_str().unwrap(),
        kept["offset"].as_u64().unwrap()
    );
    let mut late = server.connect(&resume).await;
    let (status, again) = post(
        server.addr,
        "/api/publish",
        r#"{"room": "later", "from": "bot", "text": "after"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let line = next_line(&mut late).await;
    assert_eq!(
        (line["offset"].clone(), line["data"]["text"].clone()),
        (again["offset"].clone(), json!("after"))
    );
    server.stop().await;
}

#[tokio::test]
async fn broadcast_and_send_reach_their_clients() {
    let server = TestServer::start(&["--api-key", KEY]).await;
    let mut classic = server.connect("/ws").await;
    common::wait_for_connections(server.addr, 1).await;
    let (status, answer) = post(server.addr, "/api/broadcast", r#"{"text": "to all"}"#).await;
    assert_eq!((status, answer), (200, json!({ "reached": 1 })));
    assert_eq!(recv_text(&mut classic).await, "to all");

    let mut alice = server.connect("/ws?room=news&name=alice&format=json").await;
    let mut other = server.connect("/ws?room=news&name=zed&format=json").await;
    // Both in: the member list counts them.
    let (_, members) = timeout(WAIT, async {
        loop {
            let (status, members) = get(server.addr, "/api/rooms/news/members").await;
            if members["members"].as_array().is_some_and(|m| m.len() == 2) {
                return (status, members);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let names: Vec<&str> = (members["members"].as_array().unwrap().iter())
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "zed"]);
    assert_eq!(
        get(server.addr, "/api/rooms").await,
        (200, json!({ "rooms": [{ "room": "news", "members": 2 }] }))
    );

    let (status, answer) = post(
        server.addr,
        "/api/send",
        r#"{"user": "alice", "text": "psst"}"#,
    )
    .await;
    assert_eq!((status, answer), (200, json!({ "reached": 1 })));
    loop {
        let frame: Value = serde_json::from_str(&recv_text(&mut alice).await).unwrap();
        if frame["data"]["kind"] == "private" {
            assert_eq!(frame["data"]["from"], "server");
            assert_eq!(frame["data"]["to"], "alice");
            assert_eq!(frame["data"]["text"], "psst");
            break;
        }
    }
    let (status, answer) = post(
        server.addr,
        "/api/send",
        r#"{"user": "nobody", "text": "?"}"#,
    )
    .await;
    assert_eq!((status, answer), (200, json!({ "reached": 0 })));
    // Only alice heard it.
    loop {
        let frame: Value = timeout(QUIET, recv_text(&mut other))
            .await
            .map(|text| serde_json::from_str(&text).unwrap())
            .unwrap_or(Value::Null);
        assert_ne!(frame["data"]["kind"], "private");
        if frame.is_null() {
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_400_naming_the_field() {
    let server = TestServer::start(&["--api-key", KEY, "--max-message-size", "1024"]).await;
    for (body, error) in [
        (
            "{\"room\": ",
            "the body is not JSON: EOF while parsing a value at line 1 column 9",
        ),
        ("[1, 2]", "the body must be a JSON object"),
        (r#"{"from": "bot", "text": "hi"}"#, "room is missing"),
        (
            r#"{"room": 7, "from": "bot", "text": "hi"}"#,
            "room must be a string",
        ),
        (
            r#"{"room": "no such room!", "from": "bot", "text": "hi"}"#,
            "room: room names are 1 to 64 letters, digits, '-', '_' or '.'",
        ),
        (
            r#"{"room": "news", "from": "two words", "text": "hi"}"#,
            "from: names are 1 to 32 characters, without spaces or control characters",
        ),
        (
            r#"{"room": "news", "from": "bot", "text": ""}"#,
            "text is empty",
        ),
        (
            r#"{"room": "news", "from": "bot"}"#,
            "text is missing (or give data)",
        ),
        (
            r#"{"room": "news", "from": "bot", "text": "a", "data": 1}"#,
            "give text or data, not both",
        ),
        (
            r#"{"room": "news", "from": "bot", "txt": "hi"}"#,
            "unknown field \"txt\"; expected room, from, text, data",
        ),
    ] {
        let (status, answer) = post(server.addr, "/api/publish", body).await;
        assert_eq!((status, answer), (400, json!({ "error": error })), "{body}");
    }
    let big = format!(r#"{{"text": "{}"}}"#, "x".repeat(1100));
    let (status, answer) = post(server.addr, "/api/broadcast", &big).await;
    assert_eq!(
        (status, answer),
        (400, json!({ "error": "the body is over 1024 bytes" }))
    );
    let (status, answer) = get(server.addr, "/api/rooms/bad%20room/members").await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = get(server.addr, "/api/nothing").await;
    assert_eq!(
        (status, answer),
        (
            404,
            json!({ "error": "no endpoint GET /api/nothing; the README lists the API's endpoints" })
        )
    );

    // Counted by endpoint and status.
    let (_, _, metrics) = http(server.addr, "GET", "/metrics").await;
    for line in [
        "api_requests_total{endpoint=\"publish\",status=\"400\"} 10",
        "api_requests_total{endpoint=\"broadcast\",status=\"400\"} 1",
        "api_requests_total{endpoint=\"members\",status=\"400\"} 1",
        "api_requests_total{endpoint=\"unknown\",status=\"404\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_short_key_is_refused_at_start() {
    // Set after parsing, as a library user may: still checked.
    let mut args = chat_server::Args::default();
    args.api_key = Some("short".to_owned());
    args.port = 0;
    match chat_server::Server::bind(&args).await {
        Err(error @ chat_server::StartError::ApiKeyTooShort { len: 5 }) => assert_eq!(
            error.to_string(),
            "the API key has 5 bytes; give at least 32 (try `openssl rand -hex 32`)"
        ),
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("started with a 5-byte key"),
    }
}

#[tokio::test]
async fn across_two_nodes_publish_reaches_the_other_and_history_reads_the_same() {
    let redis = redis_server::RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--api-key", KEY];
    let (a, b) = (
        TestServer::start(&args).await,
        TestServer::start(&args).await,
    );
    let mut json_client = b.connect("/ws?room=news&name=ann&format=json").await;
    let mut text_client = b.connect("/ws?room=news&name=bob").await;
    while !recv_text(&mut text_client).await.contains("bob") {}
    let news = hub::Topic::Room("news".into());
    timeout(WAIT, b.rooms.until_placed(&news)).await.unwrap();

    // Published through node A, which has no member of the room.
    let (status, placed) = post(
        a.addr,
        "/api/publish",
        r#"{"room": "news", "from": "bot", "text": "from a"}"#,
    )
    .await;
    assert_eq!(status, 200, "{placed}");
    let line = next_line(&mut json_client).await;
    assert_eq!(
        (&line["epoch"], &line["offset"]),
        (&placed["epoch"], &placed["offset"])
    );
    assert_eq!(line["data"]["text"], "from a");
    assert_eq!(next_text(&mut text_client).await, "bot: from a");

    // History reads the same on both nodes (A loads it from Redis).
    let offset = placed["offset"].as_u64().unwrap();
    for node in [&b, &a] {
        let (status, page) = get(
            node.addr,
            &format!("/api/rooms/news/history?since={offset}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["epoch"], placed["epoch"]);
        assert_eq!(page["missed"], 0);
        assert_eq!(page["lines"].as_array().unwrap().len(), 1, "{page}");
        assert_eq!(page["lines"][0]["offset"], offset);
        assert_eq!(page["lines"][0]["data"]["from"], "bot");
        assert_eq!(page["lines"][0]["data"]["text"], "from a");
        assert_eq!(
            (page["next"].as_u64(), page["end"].as_u64()),
            (Some(offset + 1), Some(offset + 1))
        );
    }

    // A's member list includes B's members.
    let names = timeout(WAIT, async {
        loop {
            let (_, members) = get(a.addr, "/api/rooms/news/members").await;
            let names: Vec<String> = (members["members"].as_array().unwrap().iter())
                .map(|m| m["name"].as_str().unwrap().to_owned())
                .collect();
            if names.len() == 2 {
                return names;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(names, ["ann", "bob"]);
    // So do its rooms, and a private line through A reaches ann on B.
    assert_eq!(
        get(a.addr, "/api/rooms").await,
        (200, json!({ "rooms": [{ "room": "news", "members": 2 }] }))
    );
    let (status, answer) = post(
        a.addr,
        "/api/send",
        r#"{"user": "ann", "from": "ops", "text": "from a, for ann"}"#,
    )
    .await;
    assert_eq!((status, answer), (200, json!({ "reached": 1 })));
    let private = loop {
        let frame: Value = serde_json::from_str(&recv_text(&mut json_client).await).unwrap();
        if frame["type"] == "personal" && frame["data"]["kind"] == "private" {
            break frame;
        }
    };
    assert_eq!(
        (
            &private["data"]["kind"],
            &private["data"]["from"],
            &private["data"]["text"]
        ),
        (&json!("private"), &json!("ops"), &json!("from a, for ann"))
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn history_reports_what_it_no_longer_holds() {
    let server = TestServer::start(&["--api-key", KEY, "--history", "3"]).await;
    let mut last = Value::Null;
    for n in 0..5 {
        let body = format!(r#"{{"room": "log", "from": "bot", "text": "line {n}"}}"#);
        last = post(server.addr, "/api/publish", &body).await.1;
    }
    assert_eq!(last["offset"], 4);
    let (status, page) = get(server.addr, "/api/rooms/log/history?since=0&limit=10").await;
    assert_eq!(status, 200);
    let texts: Vec<&str> = (page["lines"].as_array().unwrap().iter())
        .map(|line| line["data"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["line 2", "line 3", "line 4"]);
    assert_eq!(
        (page["missed"].as_u64(), page["next"].as_u64()),
        (Some(2), Some(5))
    );
    let (_, page) = get(server.addr, "/api/rooms/log/history?since=3&limit=1").await;
    assert_eq!(page["lines"][0]["data"]["text"], "line 3");
    assert_eq!(
        (page["next"].as_u64(), page["end"].as_u64()),
        (Some(4), Some(5))
    );
    for (query, error) in [
        (
            "since=x",
            "since must be a whole number up to 18446744073709551615",
        ),
        ("limit=1001", "limit must be a whole number up to 1000"),
        ("from=1", "unknown parameter \"from\"; use since, limit"),
    ] {
        let (status, answer) = get(server.addr, &format!("/api/rooms/log/history?{query}")).await;
        assert_eq!(
            (status, answer),
            (400, json!({ "error": error })),
            "{query}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn disconnect_closes_a_users_sockets_on_both_nodes_with_the_code_given() {
    let redis = redis_server::RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--api-key", KEY];
    let (a, b) = (
        TestServer::start(&args).await,
        TestServer::start(&args).await,
    );
    let mut alice_a = a.connect("/ws?room=news&name=alice").await;
    let mut alice_b = b.connect("/ws?room=news&name=alice").await;
    let mut bob = b.connect("/ws?room=news&name=bob").await;
    while !recv_text(&mut bob).await.contains("bob") {}
    // B has seen A's alice: the removal reaches A through Redis.
    timeout(WAIT, async {
        loop {
            let (_, members) = get(b.addr, "/api/rooms/news/members").await;
            if members["members"].as_array().is_some_and(|m| m.len() == 3) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    for (body, error) in [
        (
            r#"{"user": "alice", "code": 1001}"#,
            "code must be 1000, or 3000 to 4999",
        ),
        (
            r#"{"user": "alice", "code": "4000"}"#,
            "code must be 1000, or 3000 to 4999",
        ),
        (r#"{"code": 4000}"#, "user is missing"),
    ] {
        let (status, answer) = post(b.addr, "/api/disconnect", body).await;
        assert_eq!((status, answer), (400, json!({ "error": error })), "{body}");
    }
    let long = format!(r#"{{"user": "alice", "reason": "{}"}}"#, "r".repeat(124));
    let (status, answer) = post(b.addr, "/api/disconnect", &long).await;
    assert_eq!(
        (status, answer),
        (400, json!({ "error": "reason must be at most 123 bytes" }))
    );

    let (status, answer) = post(
        b.addr,
        "/api/disconnect",
        r#"{"user": "alice", "code": 4000, "reason": "account closed"}"#,
    )
    .await;
    assert_eq!((status, answer), (200, json!({ "disconnected": 2 })));
    for alice in [&mut alice_b, &mut alice_a] {
        assert_eq!(
            common::recv_close(alice).await,
            (4000, "account closed".to_owned())
        );
    }
    // Bob stays, and hears her go.
    assert_eq!(next_text(&mut bob).await, "alice left");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_openapi_description_lists_every_route() {
    let server = TestServer::start(&["--api-key", KEY]).await;
    // Read without a key: the description is no secret.
    let (status, headers, doc) = call(server.addr, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        common::header(&headers, "content-type"),
        Some("application/json")
    );
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    let mut routes: Vec<String> = paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().unwrap().keys();
            methods.map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            "GET /api/rooms",
            "GET /api/rooms/{room}/history",
            "GET /api/rooms/{room}/members",
            "POST /api/broadcast",
            "POST /api/disconnect",
            "POST /api/publish",
            "POST /api/send",
        ]
    );
    // Each operation says what it takes and answers, and needs the key.
    let publish = &paths["/api/publish"]["post"];
    assert!(
        publish["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap()
            .ends_with("/PublishRequest")
    );
    for status in ["200", "400", "401", "503"] {
        assert!(
            publish["responses"][status].is_object(),
            "{status}: {publish}"
        );
    }
    assert_eq!(doc["security"], json!([{ "api_key": [] }]));
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"],
        json!({ "type": "http", "scheme": "bearer" })
    );
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in ["PublishRequest", "Placed", "History", "ApiError", "Members"] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    server.stop().await;
}
