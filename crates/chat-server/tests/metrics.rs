//! `/metrics` after known traffic: counters equal the traffic, histogram
//! counts equal what they sampled, and the text parses with the Python
//! `prometheus_client` parsers, the strict OpenMetrics one by default and
//! the 0.0.4 one when the scraper asks for plain text.
//!
//! Needs `/usr/bin/python3` with `prometheus_client` (Debian's
//! `python3-prometheus-client`; scripts/test installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../hub-redis/tests/support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use common::{header, http_with, recv_text, send_text, wait_for_metric, TestServer};
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "0123456789abcdef0123456789abcdef";

/// Parses an exposition with Python's `prometheus_client`: `openmetrics`
/// or `classic`. Returns each sample as `name{label="value",…}` (labels
/// sorted) and its value, and each family's name and type.
fn parse(text: &str, parser: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let module = match parser {
        "openmetrics" => "prometheus_client.openmetrics.parser",
        _ => "prometheus_client.parser",
    };
    let script = format!(
        "import json, sys\n\
         from {module} import text_string_to_metric_families as parse\n\
         for family in parse(sys.stdin.read()):\n\
         \x20   print(json.dumps({{'family': family.name, 'type': family.type}}))\n\
         \x20   for s in family.samples:\n\
         \x20       print(json.dumps({{'name': s.name, 'labels': s.labels, 'value': s.value}}))\n"
    );
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 not found: install python3 and python3-prometheus-client (scripts/test does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the {parser} parser refused /metrics (is python3-prometheus-client installed?): {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (mut samples, mut families) = (BTreeMap::new(), BTreeMap::new());
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let item: Value = serde_json::from_str(line).unwrap();
        if let Some(family) = item["family"].as_str() {
            families.insert(family.to_owned(), item["type"].as_str().unwrap().to_owned());
            continue;
        }
        let labels: BTreeMap<&str, &str> = (item["labels"].as_object().unwrap().iter())
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let key = format!("{}{{{}}}", item["name"].as_str().unwrap(), labels.join(","));
        samples.insert(key, item["value"].as_f64().unwrap());
    }
    (samples, families)
}

async fn scrape(server: &TestServer, accept: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    let (status, head, body) = http_with(server.addr, "GET", "/metrics", &headers).await;
    assert_eq!(status, 200);
    (header(&head, "content-type").unwrap().to_owned(), body)
}

#[tokio::test]
async fn counters_and_histograms_equal_the_traffic_in_both_formats() {
    let server = TestServer::start(&["--api-key", KEY]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.connect("/ws").await);
    }
    common::wait_for_connections(server.addr, 3).await;
    // Five lines, each read by all three before the next: every write
    // holds one message, and the first write of each session (one in 64)
    // is sampled for latency and sizes.
    for i in 0..5 {
        send_text(&mut clients[0], &format!("hello {i}")).await;
        for client in &mut clients {
            assert_eq!(recv_text(client).await, format!("Client says: hello {i}"));
        }
    }
    let (status, _, _) = http_with(server.addr, "GET", "/api/rooms", &[]).await;
    assert_eq!(status, 401);

    let (content_type, open) = scrape(&server, None).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.ends_with("# EOF\n"));
    let (samples, families) = parse(&open, "openmetrics");
    let at = |key: &str| -> f64 {
        *samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in\n{open}"))
    };
    let ws = "endpoint=\"ws\"";
    // "hello 0" is 7 bytes, "Client says: hello 0" 20.
    for (key, value) in [
        (format!("hub_connections{{{ws}}}"), 3.0),
        (format!("hub_broadcasts_total{{{ws}}}"), 5.0),
        (format!("hub_deliveries_total{{{ws}}}"), 15.0),
        (format!("ws_messages_in_total{{{ws}}}"), 5.0),
        (format!("ws_bytes_in_total{{{ws}}}"), 35.0),
        (format!("ws_messages_out_total{{{ws}}}"), 15.0),
        (format!("ws_bytes_out_total{{{ws}}}"), 300.0),
        (format!("ws_message_in_bytes_count{{{ws}}}"), 5.0),
        (format!("ws_message_in_bytes_sum{{{ws}}}"), 35.0),
        (
            format!("ws_message_in_bytes_bucket{{{ws},le=\"64.0\"}}"),
            5.0,
        ),
        (format!("ws_message_out_bytes_count{{{ws}}}"), 3.0),
        (format!("ws_message_out_bytes_sum{{{ws}}}"), 60.0),
        (
            format!("ws_message_out_bytes_bucket{{{ws},le=\"64.0\"}}"),
            3.0,
        ),
        (format!("ws_delivery_latency_seconds_count{{{ws}}}"), 3.0),
        (
            format!("ws_delivery_latency_seconds_bucket{{{ws},le=\"+Inf\"}}"),
            3.0,
        ),
        (format!("ws_handshake_duration_seconds_count{{{ws}}}"), 3.0),
        // Every client read everything: no session waits.
        (format!("ws_queue_wait_seconds_count{{{ws}}}"), 0.0),
        (
            "api_requests_total{endpoint=\"rooms\",status=\"401\"}".to_owned(),
            1.0,
        ),
        // The other endpoints saw nothing.
        (
            "ws_delivery_latency_seconds_count{endpoint=\"rooms\"}".to_owned(),
            0.0,
        ),
        (
            "ws_handshake_duration_seconds_count{endpoint=\"echo\"}".to_owned(),
            0.0,
        ),
    ] {
        assert_eq!(at(&key), value, "{key}");
    }
    // Latencies are real times: above zero, far below the test's waits.
    let latency = at(&format!("ws_delivery_latency_seconds_sum{{{ws}}}"));
    assert!(latency > 0.0 && latency < 3.0 * 10.0, "{latency}");
    for (family, kind) in [
        ("hub_deliveries", "counter"),
        ("hub_connections", "gauge"),
        ("ws_delivery_latency_seconds", "histogram"),
        ("ws_handshakes_refused", "counter"),
        ("api_requests", "counter"),
    ] {
        assert_eq!(
            families.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }

    // Plain text for a scraper that asks for it: the same samples.
    let (content_type, classic) = scrape(&server, Some("text/plain;version=0.0.4")).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
    let (classic_samples, classic_families) = parse(&classic, "classic");
    assert_eq!(classic_families.len(), families.len());
    assert_eq!(
        classic_families.get("hub_deliveries").map(String::as_str),
        Some("counter")
    );
    for key in [
        format!("hub_deliveries_total{{{ws}}}"),
        format!("ws_message_out_bytes_count{{{ws}}}"),
        format!("ws_handshake_duration_seconds_count{{{ws}}}"),
    ] {
        // The scrape itself is not traffic on these: they hold still.
        assert_eq!(classic_samples.get(&key), samples.get(&key), "{key}");
    }
    drop(clients);
    server.stop().await;
}

#[tokio::test]
async fn the_backplane_reports_round_trips_pipelines_reconnects_and_resyncs() {
    let mut redis = redis_server::RedisServer::start().await;
    let url = redis.url();
    let server = TestServer::start(&["--redis-url", url.as_str()]).await;
    let mut client = server.connect("/ws").await;
    wait_for_metric(server.addr, "backplane_up{endpoint=\"ws\"} 1").await;
    for i in 0..3 {
        send_text(&mut client, &format!("line {i}")).await;
        assert_eq!(
            recv_text(&mut client).await,
            format!("Client says: line {i}")
        );
    }
    let (_, open) = scrape(&server, None).await;
    let (samples, families) = parse(&open, "openmetrics");
    let at = |key: &str| -> f64 {
        *samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in\n{open}"))
    };
    let ws = "endpoint=\"ws\"";
    assert_eq!(at(&format!("backplane_published_total{{{ws}}}")), 3.0);
    // Every pipeline of writes is timed and sized: as many of each, and
    // they carried the three publications at least.
    let pipelines = at(&format!("backplane_pipeline_commands_count{{{ws}}}"));
    assert!(pipelines >= 1.0, "{open}");
    assert_eq!(
        at(&format!("backplane_round_trip_seconds_count{{{ws}}}")),
        pipelines
    );
    assert!(at(&format!("backplane_pipeline_commands_sum{{{ws}}}")) >= 3.0);
    assert!(at(&format!("backplane_round_trip_seconds_sum{{{ws}}}")) > 0.0);
    for (key, value) in [
        (format!("backplane_queue_depth{{{ws}}}"), 0.0),
        (format!("backplane_reconnects_total{{{ws}}}"), 0.0),
        (format!("backplane_resyncs_total{{{ws}}}"), 0.0),
    ] {
        assert_eq!(at(&key), value, "{key}");
    }
    for family in [
        "backplane_round_trip_seconds",
        "backplane_pipeline_commands",
    ] {
        assert_eq!(
            families.get(family).map(String::as_str),
            Some("histogram"),
            "{family}"
        );
    }

    // Redis comes back empty: the link reconnects, and the topic it
    // followed started over, which its clients are told as a resync.
    redis.restart().await;
    wait_for_metric(server.addr, "backplane_reconnects_total{endpoint=\"ws\"} 1").await;
    wait_for_metric(
        server.addr,
        "backplane_disconnects_total{endpoint=\"ws\"} 1",
    )
    .await;
    wait_for_metric(server.addr, "backplane_resyncs_total{endpoint=\"ws\"} 1").await;
    drop(client);
    server.stop().await;
}

/// The metric names an expression reads: every word that starts like ours.
fn series_in(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| {
            ["hub_", "ws_", "backplane_", "api_"]
                .iter()
                .any(|p| word.starts_with(p))
        })
        .collect()
}

#[tokio::test]
async fn every_series_the_dashboard_queries_is_in_a_real_scrape() {
    let redis = redis_server::RedisServer::start().await;
    let url = redis.url();
    let server = TestServer::start(&["--redis-url", url.as_str(), "--api-key", KEY]).await;
    // One API call and one server close, so that the series labelled by
    // status and by code have a sample.
    assert_eq!(
        http_with(server.addr, "GET", "/api/rooms", &[]).await.0,
        401
    );
    let mut echo = server.connect("/echo").await;
    echo.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(common::recv_close(&mut echo).await.0, 1003);
    let (_, open) = scrape(&server, None).await;
    let (samples, _) = parse(&open, "openmetrics");
    let names: std::collections::BTreeSet<&str> = (samples.keys())
        .map(|key| key.split('{').next().unwrap())
        .collect();

    let dashboard: Value =
        serde_json::from_str(include_str!("../../../docs/grafana-dashboard.json")).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty(),
            "panel {} queries nothing",
            panel["title"]
        );
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let series = series_in(expr);
            assert!(!series.is_empty(), "{expr} reads none of our series");
            for name in series {
                assert!(
                    names.contains(name),
                    "the dashboard queries {name}, which /metrics lacks ({expr})"
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 40, "{queried}");
    // Its endpoint variable lists what the scrape labels.
    let variable = &dashboard["templating"]["list"][1];
    assert_eq!(
        variable["definition"],
        "label_values(hub_connections, endpoint)"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_histograms_the_counters_go_on_and_the_histograms_stay_empty() {
    let server = TestServer::start(&["--no-histograms"]).await;
    let mut client = server.connect("/ws").await;
    send_text(&mut client, "hi").await;
    assert_eq!(recv_text(&mut client).await, "Client says: hi");
    let (_, open) = scrape(&server, None).await;
    let (samples, _) = parse(&open, "openmetrics");
    let ws = "endpoint=\"ws\"";
    for (key, value) in [
        (format!("ws_messages_out_total{{{ws}}}"), 1.0),
        (format!("ws_delivery_latency_seconds_count{{{ws}}}"), 0.0),
        (format!("ws_message_out_bytes_count{{{ws}}}"), 0.0),
        (format!("ws_message_in_bytes_count{{{ws}}}"), 0.0),
        (format!("ws_handshake_duration_seconds_count{{{ws}}}"), 0.0),
    ] {
        assert_eq!(samples.get(&key), Some(&value), "{key}");
    }
    drop(client);
    server.stop().await;
}
