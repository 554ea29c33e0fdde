//! `rlayerfs bench --plot FILE.svg`: lookup time against the layer count, as an SVG chart.
//!
//! Two panels, lookup hits and lookup misses, each with one line per measured system
//! (rlayerfs through its mount, kernel overlayfs, the union core in-process). The layer axis
//! is logarithmic (base 2, ticks at powers of two) and so is the time axis, because the systems differ by orders of magnitude: a warm miss in the core is
//! a fraction of a microsecond, a kernel lookup over 128 layers hundreds. Only plotters'
//! SVG backend is used: text is written as `<text>` elements, so no font files are needed.

use std::path::Path;

use plotters::prelude::*;

use super::{Report, Row, FILLERS_PER_LAYER};

/// Size of the whole chart in pixels (two panels side by side).
const WIDTH: u32 = 1100;
const HEIGHT: u32 = 480;

/// The systems in the order of the legend: the `system` of a [`Row`], its label, its colour.
const SYSTEMS: [(&str, &str, RGBColor); 3] = [
    (
        "rlayerfs",
        "rlayerfs (FUSE mount)",
        RGBColor(0xd6, 0x27, 0x28),
    ),
    ("kernel", "kernel overlayfs", RGBColor(0x1f, 0x77, 0xb4)),
    (
        "core",
        "rlayerfs core (in-process)",
        RGBColor(0x2c, 0xa0, 0x2c),
    ),
];

/// One panel: its title and the figure it plots.
struct Panel {
    title: &'static str,
    value: fn(&Row) -> f64,
}

const PANELS: [Panel; 2] = [
    Panel {
        title: "lookup hits (first lstat of an existing file)",
        value: |r| r.lookup_hit_us,
    },
    Panel {
        title: "lookup misses (lstat of a missing name)",
        value: |r| r.lookup_miss_us,
    },
];

/// Draws the chart of `report` and writes it to `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    let svg = render(report)?;
    std::fs::write(path, svg).map_err(|e| format!("bench: write {}: {e}", path.display()))
}

/// The chart of `report` as an SVG document.
pub fn render(report: &Report) -> Result<String, String> {
    let mut svg = String::new();
    draw(report, &mut svg).map_err(|e| format!("bench: plot: {e}"))?;
    Ok(svg)
}

fn draw(report: &Report, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "rlayerfs bench: lookup time against layer count ({} files in the bottom layer, \
         {FILLERS_PER_LAYER} more per layer above)",
        report.files
    );
    let root = root.titled(&title, ("sans-serif", 18))?;
    let areas = root.split_evenly((1, PANELS.len()));
    let (x0, x1) = layer_range(&report.results);
    // A tick at each measured layer count.
    let mut x_ticks: Vec<f64> = report.results.iter().map(|r| r.layers as f64).collect();
    x_ticks.sort_by(f64::total_cmp);
    x_ticks.dedup();
    for (panel, area) in PANELS.iter().zip(&areas) {
        let values: Vec<f64> = report
            .results
            .iter()
            .map(panel.value)
            .filter(|v| *v > 0.0)
            .collect();
        let (y0, y1) = time_range(&values);
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (x0..x1)
                    .log_scale()
                    .base(2.0)
                    .with_key_points(x_ticks.clone()),
                (y0..y1).log_scale().with_key_points(time_ticks(y0, y1)),
            )?;
        chart
            .configure_mesh()
            .x_desc("lower layers")
            .y_desc("µs per lookup")
            .x_label_formatter(&layer_label)
            .y_label_formatter(&|y| short(*y))
            .draw()?;
        for (system, label, colour) in SYSTEMS {
            let mut points: Vec<(f64, f64)> = report
                .results
                .iter()
                .filter(|r| r.system == system)
                .map(|r| (r.layers as f64, (panel.value)(r)))
                .filter(|(_, v)| *v > 0.0)
                .collect();
            if points.is_empty() {
                continue;
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The layer axis (log scale): from a little below the smallest count to a little above
/// the largest.
fn layer_range(rows: &[Row]) -> (f64, f64) {
    let counts = rows.iter().map(|r| r.layers.max(1) as f64);
    let lo = counts.clone().fold(f64::INFINITY, f64::min);
    let hi = counts.fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.8, 1.25);
    }
    (lo / 1.25, hi * 1.25)
}

/// The label of a tick on the layer axis: the count.
fn layer_label(x: &f64) -> String {
    format!("{}", x.round())
}

/// The time axis: from below the smallest to above the largest value (log scale, so the
/// margins are factors).
fn time_range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.1, 10.0);
    }
    (lo / 1.5, hi * 1.5)
}

/// Ticks of the time axis: 1, 2 and 5 times the powers of ten within `lo..hi`, or every
/// multiple 1 to 9 when the range is too narrow for three of those.
fn time_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let pick = |mantissas: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi {
            for m in mantissas {
                let v = m * decade;
                if (lo..=hi).contains(&v) {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        out
    };
    if !(lo > 0.0 && hi > lo) {
        return Vec::new();
    }
    let coarse = pick(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        coarse
    } else {
        pick(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

/// A tick label: 0.25, 2.5, 40 (no trailing zeros).
fn short(v: f64) -> String {
    let s = if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(layers: usize, system: &'static str, hit: f64, miss: f64) -> Row {
        Row {
            layers,
            system,
            lookup_hit_us: hit,
            lookup_miss_us: miss,
            readdir_first_ms: 1.0,
            readdir_again_ms: 1.0,
            small_read_us: 1.0,
            entries: 10,
            transport: None,
            requests: None,
        }
    }

    fn report(results: Vec<Row>) -> Report {
        Report {
            files: 2000,
            layers: vec![1, 8, 128],
            dir: "/tmp".into(),
            results,
            skipped: Vec::new(),
        }
    }

    #[test]
    fn chart_has_a_line_per_system_and_panel() {
        let mut rows = Vec::new();
        for n in [1, 8, 128] {
            rows.push(row(n, "rlayerfs", 30.0, 14.0));
            rows.push(row(n, "kernel", 2.5 * n as f64, 2.3 * n as f64));
            rows.push(row(n, "core", 6.0, 0.2));
        }
        let svg = render(&report(rows)).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "rlayerfs (FUSE mount)",
            "kernel overlayfs",
            "rlayerfs core (in-process)",
            "lookup hits",
            "lookup misses",
            "lower layers",
            "2000 files in the bottom layer",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // The legend labels appear once per panel; each series is a polyline in its colour
        // in each panel, and so is its legend sample.
        assert_eq!(svg.matches("kernel overlayfs").count(), 2);
        for (_, _, c) in SYSTEMS {
            let stroke = format!(
                "stroke=\"#{:02X}{:02X}{:02X}\" stroke-width=\"2\"",
                c.0, c.1, c.2
            );
            let lines = svg
                .lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
                .count();
            assert_eq!(lines, 4, "{stroke}: {svg}");
        }
        // The layer ticks are the counts, not their logarithms.
        for tick in ["1", "8", "128"] {
            assert!(
                svg.contains(&format!(">\n{tick}\n</text>")),
                "tick {tick}: {svg}"
            );
        }
    }

    #[test]
    fn missing_systems_are_left_out() {
        let rows = vec![row(1, "core", 5.0, 0.2), row(4, "core", 5.5, 0.25)];
        let svg = render(&report(rows)).unwrap();
        assert!(svg.contains("rlayerfs core (in-process)"));
        assert!(!svg.contains("kernel overlayfs"));
        assert!(!svg.contains("FUSE mount"));
    }

    #[test]
    fn empty_and_degenerate_reports_still_draw() {
        assert!(render(&report(Vec::new())).unwrap().contains("</svg>"));
        let one = vec![row(1, "rlayerfs", 0.0, 3.0)];
        assert!(render(&report(one)).unwrap().contains("</svg>"));
    }

    #[test]
    fn time_axis_ticks() {
        assert_eq!(time_ticks(0.15, 350.0).first(), Some(&0.2));
        assert!(time_ticks(0.15, 350.0).contains(&100.0));
        assert_eq!(time_ticks(3.5, 11.0), [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
        assert!(time_ticks(0.0, 1.0).is_empty());
    }

    #[test]
    fn tick_labels() {
        assert_eq!(layer_label(&1.0), "1");
        assert_eq!(layer_label(&128.0000001), "128");
        assert_eq!(short(100.0), "100");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(1.0), "1");
    }
}
