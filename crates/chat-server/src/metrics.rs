//! `/metrics`: every endpoint's hub and WebSocket counters in the
//! Prometheus text format (version 0.0.4), labelled by endpoint.

use std::fmt::Write;

use hub::Stats;
use hub_ws::{Handler, WsServer, WsStats};

/// One endpoint's counters, read at once.
pub(crate) struct Endpoint {
    name: &'static str,
    hub: Stats,
    ws: WsStats,
}

impl Endpoint {
    pub(crate) fn of<H: Handler>(name: &'static str, server: &WsServer<H>) -> Self {
        Self {
            name,
            hub: server.hub().stats(),
            ws: server.stats(),
        }
    }
}

/// A series with one value per endpoint: name, type, help, value.
type Series<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

const HUB: [Series<Stats>; 16] = [
    ("hub_connections", "gauge", "Connections open now.", |s| {
        s.connections as u64
    }),
    ("hub_rooms", "gauge", "Rooms with members now.", |s| {
        s.rooms as u64
    }),
    (
        "hub_history_bytes",
        "gauge",
        "Bytes kept in history: payloads, and the frames rendered from them.",
        |s| s.history_bytes as u64,
    ),
    (
        "hub_queued_bytes",
        "gauge",
        "Bytes of personal messages waiting in queues.",
        |s| s.queued_bytes as u64,
    ),
    (
        "hub_shed_total",
        "counter",
        "Connections closed for holding the most when the queue budget was exceeded.",
        |s| s.shed,
    ),
    (
        "hub_connected_total",
        "counter",
        "Connections ever opened.",
        |s| s.connected_total,
    ),
    ("hub_joins_total", "counter", "Room joins.", |s| s.joins),
    (
        "hub_leaves_total",
        "counter",
        "Room leaves, disconnections included.",
        |s| s.leaves,
    ),
    ("hub_broadcasts_total", "counter", "Broadcasts sent.", |s| {
        s.broadcasts
    }),
    (
        "hub_deliveries_total",
        "counter",
        "Messages handed to connections by broadcasts.",
        |s| s.deliveries,
    ),
    (
        "hub_personal_total",
        "counter",
        "Personal messages queued.",
        |s| s.personal,
    ),
    (
        "hub_lagged_total",
        "counter",
        "Times a connection fell behind.",
        |s| s.lagged,
    ),
    (
        "hub_missed_total",
        "counter",
        "Broadcast messages lagging connections did not get.",
        |s| s.missed,
    ),
    (
        "hub_repaired_total",
        "counter",
        "Broadcast messages refilled from history.",
        |s| s.repaired,
    ),
    (
        "hub_replayed_total",
        "counter",
        "Messages replayed to resuming connections.",
        |s| s.replayed,
    ),
    (
        "hub_resyncs_total",
        "counter",
        "Gaps history could not fill.",
        |s| s.resyncs,
    ),
];

const WS: [Series<WsStats>; 15] = [
    (
        "ws_sessions",
        "gauge",
        "WebSocket sessions running now.",
        |s| s.sessions as u64,
    ),
    (
        "ws_sessions_opened_total",
        "counter",
        "WebSocket sessions ever started.",
        |s| s.opened,
    ),
    (
        "ws_messages_in_total",
        "counter",
        "Messages read from clients.",
        |s| s.messages_in,
    ),
    (
        "ws_bytes_in_total",
        "counter",
        "Payload bytes read from clients.",
        |s| s.bytes_in,
    ),
    (
        "ws_messages_out_total",
        "counter",
        "Messages written to clients.",
        |s| s.messages_out,
    ),
    (
        "ws_bytes_out_total",
        "counter",
        "Payload bytes written to clients.",
        |s| s.bytes_out,
    ),
    (
        "ws_rate_limited_total",
        "counter",
        "Client messages dropped by the rate limit.",
        |s| s.throttled,
    ),
    (
        "ws_client_closes_total",
        "counter",
        "Sessions closed by the client.",
        |s| s.closed_by_client,
    ),
    (
        "ws_lost_total",
        "counter",
        "Sessions whose connection was lost without a close handshake.",
        |s| s.lost,
    ),
    (
        "ws_compressed_sessions_total",
        "counter",
        "Sessions that agreed on permessage-deflate.",
        |s| s.compressed_sessions,
    ),
    (
        "ws_deflate_bytes_in_total",
        "counter",
        "Payload bytes of messages to compressing clients, before compression.",
        |s| s.deflate_bytes_in,
    ),
    (
        "ws_deflate_bytes_out_total",
        "counter",
        "Payload bytes written for them (deflated, or as they were when deflate did not shrink them).",
        |s| s.deflate_bytes_out,
    ),
    (
        "ws_deflate_chained_total",
        "counter",
        "Messages to compressing clients deflated against the messages before them (once for every client in step).",
        |s| s.deflate_chained,
    ),
    (
        "ws_inflate_bytes_in_total",
        "counter",
        "Payload bytes of compressed messages from clients, as they came.",
        |s| s.inflate_bytes_in,
    ),
    (
        "ws_inflate_bytes_out_total",
        "counter",
        "The same messages' bytes, inflated.",
        |s| s.inflate_bytes_out,
    ),
];

const BACKPLANE: [Series<hub_redis::Stats>; 8] = [
    (
        "backplane_up",
        "gauge",
        "1 while Redis is reachable and fan-out is shared with the other nodes.",
        |s| u64::from(s.up),
    ),
    (
        "backplane_disconnects_total",
        "counter",
        "Times the connection to Redis was lost.",
        |s| s.disconnects,
    ),
    (
        "backplane_published_total",
        "counter",
        "Broadcasts written to Redis.",
        |s| s.published,
    ),
    (
        "backplane_delivered_total",
        "counter",
        "Broadcasts read from Redis and delivered on this node.",
        |s| s.delivered,
    ),
    (
        "backplane_local_only_total",
        "counter",
        "Broadcasts delivered on this node only, Redis being out of reach.",
        |s| s.local_only,
    ),
    (
        "backplane_notices_total",
        "counter",
        "Notices written to tell the other nodes what they missed from this one.",
        |s| s.notices,
    ),
    (
        "backplane_dropped_total",
        "counter",
        "Private and user messages for other nodes lost to an outage or a gone client.",
        |s| s.dropped,
    ),
    (
        "backplane_script_reloads_total",
        "counter",
        "Times Redis had lost the scripts and they were loaded again.",
        |s| s.script_reloads,
    ),
];

/// The exposition of all endpoints' counters, and those of their
/// backplanes if any.
pub(crate) fn render(
    endpoints: &[Endpoint],
    backplanes: &[(&'static str, hub_redis::Stats)],
    api: Option<&[(&'static str, u16, u64)]>,
) -> String {
    let mut out = String::new();
    if let Some(calls) = api {
        let name = "api_requests_total";
        family(
            &mut out,
            name,
            "counter",
            "Server API calls, by endpoint and status.",
        );
        for (endpoint, status, n) in calls {
            sample(
                &mut out,
                name,
                endpoint,
                Some(("status", &status.to_string())),
                *n,
            );
        }
    }
    if !backplanes.is_empty() {
        for (name, kind, help, value) in BACKPLANE {
            family(&mut out, name, kind, help);
            for (endpoint, stats) in backplanes {
                sample(&mut out, name, endpoint, None, value(stats));
            }
        }
    }
    for (name, kind, help, value) in HUB {
        family(&mut out, name, kind, help);
        for endpoint in endpoints {
            sample(&mut out, name, endpoint.name, None, value(&endpoint.hub));
        }
    }
    for (name, kind, help, value) in WS {
        family(&mut out, name, kind, help);
        for endpoint in endpoints {
            sample(&mut out, name, endpoint.name, None, value(&endpoint.ws));
        }
    }
    let name = "ws_handshakes_refused_total";
    family(
        &mut out,
        name,
        "counter",
        "WebSocket handshakes refused, by reason.",
    );
    for endpoint in endpoints {
        for (reason, n) in &endpoint.ws.refused {
            sample(&mut out, name, endpoint.name, Some(("reason", reason)), *n);
        }
    }
    let name = "ws_server_closes_total";
    family(
        &mut out,
        name,
        "counter",
        "Sessions closed by the server, by close code.",
    );
    for endpoint in endpoints {
        for (code, n) in &endpoint.ws.closed_by_server {
            let code = code.0.to_string();
            sample(&mut out, name, endpoint.name, Some(("code", &code)), *n);
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample; label values here are fixed identifiers and numbers, never
/// client input, so they need no escaping.
fn sample(out: &mut String, name: &str, endpoint: &str, label: Option<(&str, &str)>, value: u64) {
    match label {
        None => {
            let _ = writeln!(out, "{name}{{endpoint=\"{endpoint}\"}} {value}");
        }
        Some((key, label)) => {
            let _ = writeln!(
                out,
                "{name}{{endpoint=\"{endpoint}\",{key}=\"{label}\"}} {value}"
            );
        }
    }
}
