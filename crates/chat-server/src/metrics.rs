//! `/metrics`: every endpoint's hub and WebSocket counters and
//! distributions, labelled by endpoint, with the backplanes' and the
//! server API's, encoded by `prometheus-client` in the OpenMetrics text
//! format, or in Prometheus's 0.0.4 text format for a scraper that
//! prefers it.

use hub::{Distribution, Stats};
use hub_ws::{Handler, WsServer, WsStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// One endpoint's counters, read at once.
#[derive(Debug)]
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

const BACKPLANE: [Series<hub_redis::Stats>; 11] = [
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
    (
        "backplane_reconnects_total",
        "counter",
        "Times the link was back after losing Redis.",
        |s| s.reconnects,
    ),
    (
        "backplane_resyncs_total",
        "counter",
        "Gaps told to this node's clients as resyncs: messages lost on the way to Redis, and topics that started over in it.",
        |s| s.resyncs,
    ),
    (
        "backplane_queue_depth",
        "gauge",
        "Publications waiting for the link to write them to Redis.",
        |s| s.queued as u64,
    ),
];

/// One family's samples: each a label set and a value.
type Samples = Vec<(Vec<(&'static str, String)>, u64)>;

/// What one scrape reads, encoded when the registry asks.
#[derive(Debug)]
struct Scrape {
    endpoints: Vec<Endpoint>,
    backplanes: Vec<(&'static str, hub_redis::Stats)>,
    api: Option<Vec<(&'static str, u16, u64)>>,
}

/// A distribution's series: its name (without the unit), help, unit, and
/// how many of its unit one observation's unit is.
type Spread<T> = (
    &'static str,
    &'static str,
    Option<Unit>,
    f64,
    fn(&T) -> &Distribution,
);

/// Nanoseconds in a second.
const NANOS: f64 = 1e-9;

const SPREADS: [Spread<WsStats>; 5] = [
    (
        "ws_handshake_duration",
        "Time from a WebSocket handshake's request to its upgraded connection being served",
        Some(Unit::Seconds),
        NANOS,
        |s| &s.handshakes,
    ),
    (
        "ws_delivery_latency",
        "Time from a broadcast to its frame being written to a socket: the oldest of every 64th write of each session",
        Some(Unit::Seconds),
        NANOS,
        |s| &s.latency,
    ),
    (
        "ws_queue_wait",
        "How long each session its socket makes wait has waited since its oldest broadcast was sent, read at the scrape (a snapshot, not cumulative)",
        Some(Unit::Seconds),
        NANOS,
        |s| &s.queue_waits,
    ),
    (
        "ws_message_in",
        "Sizes of the messages read from clients",
        Some(Unit::Bytes),
        1.0,
        |s| &s.sizes_in,
    ),
    (
        "ws_message_out",
        "Sizes of the messages written to clients, before compression: those of every 64th write of each session",
        Some(Unit::Bytes),
        1.0,
        |s| &s.sizes_out,
    ),
];

const BACKPLANE_SPREADS: [Spread<hub_redis::Stats>; 2] = [
    (
        "backplane_round_trip",
        "Time Redis took to answer each pipeline of writes",
        Some(Unit::Seconds),
        NANOS,
        |s| &s.round_trips,
    ),
    (
        "backplane_pipeline_commands",
        "Commands in each pipeline of writes to Redis",
        None,
        1.0,
        |s| &s.pipelines,
    ),
];

impl Scrape {
    fn endpoint_samples<T>(&self, of: impl Fn(&Endpoint) -> &T, value: fn(&T) -> u64) -> Samples {
        (self.endpoints.iter())
            .map(|e| (vec![("endpoint", e.name.to_owned())], value(of(e))))
            .collect()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(calls) = &self.api {
            let samples = (calls.iter())
                .map(|(endpoint, status, n)| {
                    let labels = vec![
                        ("endpoint", (*endpoint).to_owned()),
                        ("status", status.to_string()),
                    ];
                    (labels, *n)
                })
                .collect();
            let help = "Server API calls, by endpoint and status.";
            family(&mut encoder, "api_requests_total", "counter", help, samples)?;
        }
        if !self.backplanes.is_empty() {
            for (name, kind, help, value) in BACKPLANE {
                let samples = (self.backplanes.iter())
                    .map(|(endpoint, stats)| {
                        (vec![("endpoint", (*endpoint).to_owned())], value(stats))
                    })
                    .collect();
                family(&mut encoder, name, kind, help, samples)?;
            }
        }
        for (name, kind, help, value) in HUB {
            let samples = self.endpoint_samples(|e| &e.hub, value);
            family(&mut encoder, name, kind, help, samples)?;
        }
        for (name, kind, help, value) in WS {
            let samples = self.endpoint_samples(|e| &e.ws, value);
            family(&mut encoder, name, kind, help, samples)?;
        }
        let labelled =
            |label: &'static str, pairs: fn(&WsStats) -> Vec<(String, u64)>| -> Samples {
                (self.endpoints.iter())
                    .flat_map(|e| {
                        pairs(&e.ws).into_iter().map(move |(value, n)| {
                            (vec![("endpoint", e.name.to_owned()), (label, value)], n)
                        })
                    })
                    .collect()
            };
        let refused = labelled("reason", |ws| {
            ws.refused
                .iter()
                .map(|(reason, n)| ((*reason).to_owned(), *n))
                .collect()
        });
        let help = "WebSocket handshakes refused, by reason.";
        family(
            &mut encoder,
            "ws_handshakes_refused_total",
            "counter",
            help,
            refused,
        )?;
        let closes = labelled("code", |ws| {
            (ws.closed_by_server.iter())
                .map(|(code, n)| (code.0.to_string(), *n))
                .collect()
        });
        let help = "Sessions closed by the server, by close code.";
        family(
            &mut encoder,
            "ws_server_closes_total",
            "counter",
            help,
            closes,
        )?;
        for spread in SPREADS {
            let samples = self.endpoints.iter().map(|e| (e.name, &e.ws));
            histogram(&mut encoder, spread, samples)?;
        }
        if !self.backplanes.is_empty() {
            for spread in BACKPLANE_SPREADS {
                let samples = self.backplanes.iter().map(|(name, stats)| (*name, stats));
                histogram(&mut encoder, spread, samples)?;
            }
        }
        Ok(())
    }
}

/// One histogram family: a sample for each endpoint's distribution.
fn histogram<'t, T: 't>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, unit, scale, spread): Spread<T>,
    samples: impl Iterator<Item = (&'static str, &'t T)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
    for (endpoint, stats) in samples {
        let taken = spread(stats);
        let buckets: Vec<(f64, u64)> = (taken.counts.iter().enumerate())
            .map(|(i, n)| {
                let bound = taken.bounds.get(i).map_or(f64::MAX, |b| *b as f64 * scale);
                (bound, *n)
            })
            .collect();
        let labels = [("endpoint", endpoint)];
        (metric.encode_family(&labels)?).encode_histogram::<NoLabelSet>(
            taken.sum as f64 * scale,
            taken.count(),
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// One counter or gauge family. Names and helps are written as the tables
/// above give them: a counter's ends in `_total`, which the encoder adds
/// back, and the encoder ends each help with a full stop.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    kind: &str,
    help: &str,
    samples: Samples,
) -> Result<(), std::fmt::Error> {
    let help = help.strip_suffix('.').unwrap_or(help);
    if kind == "counter" {
        let name = name.strip_suffix("_total").unwrap_or(name);
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
    } else {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// The text formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0.0: the default.
    OpenMetrics,
    /// Prometheus's text format 0.0.4, for scrapers that prefer it.
    Prometheus,
}

impl Format {
    /// The format an `Accept` header prefers: OpenMetrics unless it ranks
    /// `text/plain` above it (and above `*/*`, which means OpenMetrics).
    pub(crate) fn preferred(accept: Option<&str>) -> Self {
        let (mut open, mut plain) = (None::<f32>, None::<f32>);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let kind = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = (parts.filter_map(|p| p.strip_prefix("q=")))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match kind.as_str() {
                "application/openmetrics-text" | "*/*" | "application/*" => &mut open,
                "text/plain" | "text/*" => &mut plain,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |seen| seen.max(q)));
        }
        match (open, plain) {
            (open, Some(plain)) if plain > 0.0 && open.is_none_or(|open| plain > open) => {
                Self::Prometheus
            }
            _ => Self::OpenMetrics,
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The exposition of all endpoints' counters and distributions, and those
/// of their backplanes and the server API if any, in `format`.
pub(crate) fn render(
    endpoints: Vec<Endpoint>,
    backplanes: Vec<(&'static str, hub_redis::Stats)>,
    api: Option<Vec<(&'static str, u16, u64)>>,
    format: Format,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        endpoints,
        backplanes,
        api,
    }));
    let mut text = String::new();
    // Writing to a String fails only if an encoder does, and ours do not.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(%error, "cannot encode /metrics");
    }
    match format {
        Format::OpenMetrics => text,
        Format::Prometheus => classic(&text),
    }
}

/// OpenMetrics text as Prometheus's 0.0.4 format: without `# EOF` and
/// `# UNIT`, and with each counter's `# HELP` and `# TYPE` naming its
/// samples (`x_total`) rather than its family (`x`). Nothing else differs
/// for the series here: no `_created`, no exemplars, no info or stateset.
fn classic(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = (open.lines())
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, after) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {after}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_unless_plain_text_ranks_higher() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, format) in [
            (None, Format::OpenMetrics),
            (Some("*/*"), Format::OpenMetrics),
            (Some(prometheus), Format::OpenMetrics),
            (Some("text/plain"), Format::Prometheus),
            (
                Some("text/plain;version=0.0.4;q=0.9, */*;q=0.1"),
                Format::Prometheus,
            ),
            (
                Some("text/plain;q=0.5, application/openmetrics-text"),
                Format::OpenMetrics,
            ),
            (Some("text/plain;q=0"), Format::OpenMetrics),
            (Some("text/html"), Format::OpenMetrics),
        ] {
            assert_eq!(Format::preferred(accept), format, "{accept:?}");
        }
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let open = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total{endpoint=\"ws\"} 3\n\
                    # HELP t Time.\n# TYPE t histogram\n# UNIT t seconds\nt_seconds_count 0\n\
                    # HELP g Now.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total{endpoint=\"ws\"} 3\n\
             # HELP t Time.\n# TYPE t histogram\nt_seconds_count 0\n\
             # HELP g Now.\n# TYPE g gauge\ng 1\n"
        );
    }
}
