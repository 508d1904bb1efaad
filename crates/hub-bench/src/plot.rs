//! Charts of a `scripts/compare` run, drawn with `plotters` as SVG and
//! PNG: deliveries per second, p99 latency and server CPU per delivery
//! against the number of clients, on log axes, one line per server or
//! scenario, medians of the runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// Why the charts could not be drawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The results file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The results file is not what `scripts/compare` writes.
    #[error("{path} is not a compare run's results.json: {problem}")]
    Results {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// No font to write the labels with.
    #[error(
        "no TrueType font for the charts' labels (looked for {looked}); install \
         fonts-dejavu-core, or set HUB_BENCH_FONT to a .ttf file"
    )]
    Font {
        /// Where it looked.
        looked: String,
    },
    /// The drawing backend failed (a file could not be written, say).
    #[error("cannot draw {path}: {problem}")]
    Draw {
        /// The chart's file.
        path: PathBuf,
        /// What the backend said.
        problem: String,
    },
}

/// One line of a chart: its label, and which runs it is drawn from (the
/// run names' prefix before `-CLIENTS`, and the server).
#[derive(Clone, Copy, Debug)]
struct Line {
    label: &'static str,
    kind: &'static str,
    server: &'static str,
}

/// A measure, as a path into a run's report, with its axis label.
#[derive(Clone, Copy, Debug)]
struct Measure {
    title: &'static str,
    path: &'static [&'static str],
}

const RATE: Measure = Measure {
    title: "deliveries per second",
    path: &["deliveries", "per_second"],
};
const P99: Measure = Measure {
    title: "p99 latency, ms",
    path: &["latency_ms", "p99"],
};
const CPU: Measure = Measure {
    title: "server CPU µs per delivery",
    path: &["server", "cpu", "micros_per_delivery"],
};

/// A file of two panels side by side, over the same lines.
#[derive(Clone, Copy, Debug)]
struct Chart {
    file: &'static str,
    title: &'static str,
    lines: &'static [Line],
    measures: [Measure; 2],
}

const fn line(label: &'static str, kind: &'static str, server: &'static str) -> Line {
    Line {
        label,
        kind,
        server,
    }
}

const CHARTS: [Chart; 4] = [
    Chart {
        file: "fanout",
        title: "Broadcast flat out, 32-byte messages",
        lines: &[
            line("chat-server /ws", "flat", "ours"),
            line("Bun (uWebSockets pub/sub)", "flat", "bun"),
            line("bare server", "flat", "bare"),
            line("FastAPI seed", "flat", "seed"),
        ],
        measures: [RATE, P99],
    },
    Chart {
        file: "rooms",
        title: "Room chat against /ws, flat out, in the same runs",
        lines: &[
            line("/ws", "ws", "ours"),
            line("JSON room", "jroom", "ours"),
            line("text room", "room", "ours"),
            line("/ws, 171-byte messages", "wsjf", "ours"),
        ],
        measures: [RATE, P99],
    },
    Chart {
        file: "compression",
        title: "Compression: plain, each message alone, chains (200-byte lines)",
        lines: &[
            line("JSON room, plain", "pj", "ours"),
            line("JSON room, alone", "aj", "ours"),
            line("JSON room, chains", "zj", "ours"),
            line("/ws, plain", "pw", "ours"),
            line("/ws, chains", "zw", "ours"),
            line("Bun, plain", "pw", "bun"),
            line("Bun, deflate", "zw", "bun"),
        ],
        measures: [RATE, CPU],
    },
    Chart {
        file: "histograms",
        title: "What the histograms cost: on and off, in the same runs",
        lines: &[
            line("/ws, histograms on", "hw", "ours"),
            line("/ws, off", "nw", "ours"),
            line("JSON room, histograms on", "hj", "ours"),
            line("JSON room, off", "nj", "ours"),
        ],
        measures: [RATE, CPU],
    },
];

/// The runs of a compare: `name-CLIENTS/server` to its reports.
type Runs = BTreeMap<String, Vec<Value>>;

/// Draws every chart the results hold data for into `out`, as
/// `NAME.svg` and `NAME.png`; returns the files written.
///
/// # Errors
///
/// A [`PlotError`] if the results cannot be read, no font is found for
/// the labels, or a file cannot be written.
pub fn draw(results: &Path, out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let text = std::fs::read_to_string(results).map_err(|source| PlotError::Read {
        path: results.to_owned(),
        source,
    })?;
    let runs: Runs = serde_json::from_str(&text).map_err(|error| PlotError::Results {
        path: results.to_owned(),
        problem: error.to_string(),
    })?;
    load_font()?;
    let mut written = Vec::new();
    for chart in CHARTS {
        let panels = chart
            .measures
            .map(|measure| panel_lines(&runs, &chart, measure));
        if panels.iter().all(|lines| lines.is_empty()) {
            continue;
        }
        let svg = out.join(format!("{}.svg", chart.file));
        let png = out.join(format!("{}.png", chart.file));
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |problem: String| PlotError::Draw { path, problem }
        };
        render(
            SVGBackend::new(&svg, SIZE).into_drawing_area(),
            &chart,
            &panels,
        )
        .map_err(failed(&svg))?;
        render(
            BitMapBackend::new(&png, SIZE).into_drawing_area(),
            &chart,
            &panels,
        )
        .map_err(failed(&png))?;
        written.extend([svg, png]);
    }
    Ok(written)
}

/// Pixels of a chart file.
const SIZE: (u32, u32) = (1100, 460);

/// A panel's lines: each label with its points (clients, median value).
type Panel = Vec<(&'static str, Vec<(f64, f64)>)>;

fn panel_lines(runs: &Runs, chart: &Chart, measure: Measure) -> Panel {
    let mut panel = Vec::new();
    for line in chart.lines {
        let mut points: Vec<(f64, f64)> = (runs.iter())
            .filter_map(|(key, reports)| {
                let (name, server) = key.rsplit_once('/')?;
                let (kind, clients) = name.rsplit_once('-')?;
                (kind == line.kind && server == line.server).then_some(())?;
                let clients: f64 = clients.parse().ok()?;
                let value = median(reports.iter().filter_map(|r| number(r, measure.path)))?;
                (value > 0.0).then_some((clients, value))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            panel.push((line.label, points));
        }
    }
    panel
}

fn number(report: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(report, |value, key| value.get(key))?
        .as_f64()
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Draws a chart's panels side by side on `root`.
fn render<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: &Chart,
    panels: &[Panel; 2],
) -> Result<(), String> {
    let text = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(text)?;
    let root = (root.titled(chart.title, ("sans-serif", 20))).map_err(text)?;
    let halves = root.split_evenly((1, 2));
    for ((area, lines), measure) in halves.iter().zip(panels).zip(chart.measures) {
        draw_panel(area, measure.title, lines).map_err(text)?;
    }
    root.present().map_err(text)
}

/// One log-log panel, with a legend.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    lines: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let points = || lines.iter().flat_map(|(_, points)| points.iter());
    let (Some(x_min), Some(x_max)) = (
        points().map(|p| p.0).min_by(f64::total_cmp),
        points().map(|p| p.0).max_by(f64::total_cmp),
    ) else {
        return Ok(());
    };
    let y_min = points().map(|p| p.1).min_by(f64::total_cmp).unwrap_or(1.0);
    let y_max = points().map(|p| p.1).max_by(f64::total_cmp).unwrap_or(1.0);
    // Room around the points, so the axes never collapse; ticks at the
    // client counts measured, and at 1, 2 and 5 of each decade.
    let (x_low, x_high) = (x_min / 1.5, x_max * 1.5);
    let (y_low, y_high) = (y_min / 2.0, y_max * 2.0);
    let mut clients: Vec<f64> = points().map(|p| p.0).collect();
    clients.sort_by(f64::total_cmp);
    clients.dedup();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_low..x_high).log_scale().with_key_points(clients),
            (y_low..y_high)
                .log_scale()
                .with_key_points(decades(y_low, y_high)),
        )?;
    chart
        .configure_mesh()
        .x_desc("clients")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| compact(*y))
        .draw()?;
    for (i, (label, points)) in lines.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
}

/// 1, 2 and 5 times each power of ten between `low` and `high`.
fn decades(low: f64, high: f64) -> Vec<f64> {
    let (first, last) = (low.log10().floor() as i32, high.log10().ceil() as i32);
    (first..=last)
        .flat_map(|power| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(power)))
        .filter(|value| (low..=high).contains(value))
        .collect()
}

/// `1.2M`, `35k`, `0.16`: short tick labels.
fn compact(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e3 => format!("{:.0}k", v / 1e3),
        v if v >= 1.0 => format!("{v:.0}"),
        v => format!("{v:.2}"),
    }
}

/// Fonts tried for the labels, after `HUB_BENCH_FONT`.
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a font as `sans-serif`, once per process.
fn load_font() -> Result<(), PlotError> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let chosen = std::env::var("HUB_BENCH_FONT").ok();
        let candidates = chosen.iter().map(String::as_str).chain(FONTS);
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // Registered fonts live as long as the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    });
    match loaded {
        true => Ok(()),
        false => Err(PlotError::Font {
            looked: FONTS.join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rate: f64, p99: f64) -> Value {
        serde_json::json!({ "deliveries": { "per_second": rate }, "latency_ms": { "p99": p99 } })
    }

    #[test]
    fn ticks_fall_on_one_two_and_five() {
        assert_eq!(decades(1.75e6, 16e6), [2e6, 5e6, 1e7]);
        assert_eq!(decades(0.08, 0.6), [0.1, 0.2, 0.5]);
    }

    #[test]
    fn medians_of_each_line_by_clients() {
        let mut runs = Runs::new();
        runs.insert(
            "flat-1000/ours".into(),
            vec![report(3e6, 9.0), report(1e6, 1.0), report(2e6, 5.0)],
        );
        runs.insert(
            "flat-100/ours".into(),
            vec![report(4e6, 2.0), report(2e6, 4.0)],
        );
        runs.insert("flat-100/bun".into(), vec![report(1e6, 1.0)]);
        runs.insert("ws-100/ours".into(), vec![report(9e6, 1.0)]);
        let rate = panel_lines(&runs, &CHARTS[0], RATE);
        assert_eq!(
            rate,
            [
                ("chat-server /ws", vec![(100.0, 3e6), (1000.0, 2e6)]),
                ("Bun (uWebSockets pub/sub)", vec![(100.0, 1e6)]),
            ]
        );
        assert!(panel_lines(&runs, &CHARTS[2], CPU).is_empty());
    }

    #[test]
    fn draws_svg_and_png_for_the_charts_with_data() {
        let dir = std::env::temp_dir().join(format!("hub-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let results = dir.join("results.json");
        let mut runs = serde_json::json!({
            "flat-100/ours": [report(3e6, 2.0)],
            "flat-1000/ours": [report(2e6, 8.0)],
            "flat-1000/bun": [report(1.5e6, 9.0)],
        });
        std::fs::write(&results, runs.to_string()).unwrap();
        let written = draw(&results, &dir).unwrap();
        assert_eq!(written, [dir.join("fanout.svg"), dir.join("fanout.png")]);
        // Every chart, once the run holds its scenarios.
        let costly = |cpu: f64| {
            serde_json::json!([{ "deliveries": { "per_second": 1e6 },
                                 "server": { "cpu": { "micros_per_delivery": cpu } } }])
        };
        for key in [
            "ws-1000/ours",
            "jroom-1000/ours",
            "zj-1000/ours",
            "pw-1000/bun",
            "hw-1000/ours",
            "nj-10000/ours",
        ] {
            runs[key] = costly(0.2);
        }
        std::fs::write(&results, runs.to_string()).unwrap();
        let written = draw(&results, &dir).unwrap();
        let names: Vec<_> = (written.iter())
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "fanout.svg",
                "fanout.png",
                "rooms.svg",
                "rooms.png",
                "compression.svg",
                "compression.png",
                "histograms.svg",
                "histograms.png"
            ]
        );
        let compression = std::fs::read_to_string(dir.join("compression.svg")).unwrap();
        assert!(compression.contains("JSON room, chains") && compression.contains("Bun, plain"));
        let svg = std::fs::read_to_string(dir.join("fanout.svg")).unwrap();
        for text in [
            "Broadcast flat out",
            "chat-server /ws",
            "Bun (uWebSockets pub/sub)",
            "clients",
        ] {
            assert!(svg.contains(text), "{text} missing from the SVG");
        }
        let png = std::fs::read(dir.join("fanout.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_results_says_so() {
        let dir = std::env::temp_dir().join(format!("hub-bench-plot-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let results = dir.join("results.json");
        std::fs::write(&results, "[1, 2]").unwrap();
        let error = draw(&results, &dir).unwrap_err();
        assert!(matches!(error, PlotError::Results { .. }), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
