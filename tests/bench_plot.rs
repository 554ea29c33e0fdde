//! `rlayerfs bench --plot FILE.svg`: the chart is written beside the usual output (the JSON
//! stays on stdout, unchanged), with a line per measured system in each of its two panels
//! (lookup hits, lookup misses); a chart that cannot be written is refused before measuring.
//! As root with /dev/fuse the run includes the rlayerfs mount and kernel overlayfs
//! (`--kernel`); otherwise only the core in-process, with a SKIP line for the mounted part.
//! The rlayerfs rows also carry the transport and the FUSE requests per operation.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::can_mount;

const BIN: &str = env!("CARGO_BIN_EXE_rlayerfs");

/// The legend label and line colour of each system (as src/bench/plot.rs draws them).
const SERIES: [(&str, &str, &str); 3] = [
    ("rlayerfs", "rlayerfs (FUSE mount)", "#D62728"),
    ("kernel", "kernel overlayfs", "#1F77B4"),
    ("core", "rlayerfs core (in-process)", "#2CA02C"),
];

/// Polylines drawn in `colour` with the series' width (data lines and legend samples).
fn lines_in(svg: &str, colour: &str) -> usize {
    let stroke = format!("stroke=\"{colour}\" stroke-width=\"2\"");
    svg.lines()
        .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
        .count()
}

#[test]
fn bench_plot_writes_an_svg_with_every_series() {
    let dir = tempfile::tempdir().unwrap();
    let layers_dir = dir.path().join("layers");
    std::fs::create_dir(&layers_dir).unwrap();
    let svg_path = dir.path().join("lookups.svg");
    let mounted = can_mount();
    let mut cmd = Command::new(BIN);
    cmd.args(["bench", "--layers", "1,4,16", "--files", "40", "--json"])
        .arg("--dir")
        .arg(&layers_dir)
        .arg("--plot")
        .arg(&svg_path)
        .stdin(Stdio::null());
    cmd.arg(if mounted { "--kernel" } else { "--no-mount" });
    let out = cmd.output().expect("run rlayerfs bench");
    assert!(out.status.success(), "bench failed: {out:?}");

    // The JSON output is what it was without --plot.
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = report["results"].as_array().expect("results");
    let systems: Vec<&str> = if mounted {
        vec!["rlayerfs", "kernel", "core"]
    } else {
        vec!["core"]
    };
    assert_eq!(rows.len(), 3 * systems.len(), "{report}");
    // The rlayerfs rows say which transport served them (uring=auto: io_uring exactly
    // when the fuse module offers it) and what each operation cost in requests; the
    // other systems have neither.
    let uring = std::fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|v| v.trim() == "Y");
    for row in rows {
        if row["system"] != "rlayerfs" {
            assert!(row.get("transport").is_none() && row.get("requests").is_none());
            continue;
        }
        let want = if uring { "io_uring" } else { "classic" };
        assert_eq!(row["transport"], want, "{row}");
        let q = &row["requests"];
        // A first lstat of a name and a miss each reach the daemon as a LOOKUP at least;
        // reading a file opens it; every listing of a cold directory asks for entries.
        for phase in ["lookup_hit", "lookup_miss"] {
            assert!(
                q[phase]["by_opcode"]["LOOKUP"].as_f64() >= Some(1.0),
                "{phase}: {q}"
            );
        }
        assert!(
            q["small_read"]["by_opcode"]["OPEN"].as_f64() >= Some(1.0),
            "{q}"
        );
        assert!(q["readdir_first"]["total"].as_f64() >= Some(1.0), "{q}");
        let sum: f64 = q["lookup_hit"]["by_opcode"]
            .as_object()
            .expect("by_opcode")
            .values()
            .filter_map(|v| v.as_f64())
            .sum();
        assert!(
            (sum - q["lookup_hit"]["total"].as_f64().unwrap()).abs() < 1e-9,
            "{q}"
        );
    }

    let svg = std::fs::read_to_string(&svg_path).expect("the chart was written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for text in [
        "lookup hits",
        "lookup misses",
        "lower layers",
        "µs per lookup",
        "40 files in the bottom layer",
    ] {
        assert!(svg.contains(text), "{text} not in the chart");
    }
    for (system, label, colour) in SERIES {
        if systems.contains(&system) {
            assert_eq!(svg.matches(label).count(), 2, "{label}: once per panel");
            // In each panel: the data line and the legend sample.
            assert_eq!(lines_in(&svg, colour), 4, "{system}'s lines");
        } else {
            assert!(!svg.contains(label), "{label} drawn but not measured");
            assert_eq!(lines_in(&svg, colour), 0);
        }
    }
    // Ticks at the measured layer counts.
    for tick in ["1", "4", "16"] {
        assert!(svg.contains(&format!(">\n{tick}\n</text>")), "tick {tick}");
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chart written to"),
        "{out:?}"
    );
    // Nothing generated is left behind.
    assert_eq!(std::fs::read_dir(&layers_dir).unwrap().count(), 0);
}

#[test]
fn bench_plot_into_a_missing_directory_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("no/such/dir/lookups.svg");
    let out = Command::new(BIN)
        .args([
            "bench",
            "--no-mount",
            "--files",
            "10",
            "--layers",
            "1",
            "--plot",
        ])
        .arg(&svg_path)
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run rlayerfs bench");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("--plot"), "{err}");
    assert!(out.stdout.is_empty(), "nothing measured: {out:?}");
    assert!(!Path::new(&svg_path).exists());
    // Nothing was generated in --dir either.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
