//! Requests per operation for `rlayerfs bench`: the mounted daemon is asked for its
//! per-opcode counters (`SIGUSR1` with `RLAYERFS_STATS` naming a file, see
//! `crate::transport::Transport::report_requests`) between the measured phases, and the
//! difference of two snapshots divided by the operations of the phase is what each
//! operation cost in FUSE requests. The transport that served them comes with the counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long the daemon may take to write its report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The counters of a running daemon, read through its report file.
pub struct DaemonStats {
    pub path: PathBuf,
    pid: rustix::process::Pid,
}

/// One report: the transport and the requests served so far per opcode.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub transport: String,
    pub counts: BTreeMap<String, u64>,
}

/// What one operation of a phase cost: all requests, and those of each opcode.
#[derive(Debug, Clone, Serialize)]
pub struct PerOp {
    pub total: f64,
    pub by_opcode: BTreeMap<String, f64>,
}

/// Requests per operation of each measured phase (per file for lookups and reads, per
/// listing for readdir).
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRequests {
    pub lookup_hit: PerOp,
    pub lookup_miss: PerOp,
    pub readdir_first: PerOp,
    pub readdir_again: PerOp,
    pub small_read: PerOp,
}

impl DaemonStats {
    /// The report file for a daemon started with `RLAYERFS_STATS=path`.
    pub fn new(path: &Path, child: &std::process::Child) -> DaemonStats {
        DaemonStats {
            path: path.to_path_buf(),
            pid: rustix::process::Pid::from_child(child),
        }
    }

    /// Asks for a report and waits for it. The old file is removed first, so the one
    /// read is the answer to this request (the daemon replaces it atomically).
    pub fn snapshot(&self) -> Result<Snapshot, String> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove {}: {e}", self.path.display())),
        }
        rustix::process::kill_process(self.pid, rustix::process::Signal::USR1)
            .map_err(|e| format!("signal the daemon: {e}"))?;
        let start = Instant::now();
        let bytes = loop {
            match std::fs::read(&self.path) {
                Ok(b) => break b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if start.elapsed() > REPORT_TIMEOUT {
                        return Err("the daemon wrote no request counts in time".into());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(format!("read {}: {e}", self.path.display())),
            }
        };
        parse(&bytes)
    }
}

/// Parses the daemon's JSON report (`{"transport": .., "requests": {"LOOKUP": n, ..}}`).
pub fn parse(bytes: &[u8]) -> Result<Snapshot, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("request counts: {e}"))?;
    let transport = v["transport"]
        .as_str()
        .ok_or("request counts: no transport")?
        .to_string();
    let counts = v["requests"]
        .as_object()
        .ok_or("request counts: no requests")?
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect();
    Ok(Snapshot { transport, counts })
}

/// The requests served between `before` and `after`, per operation of `ops`.
pub fn per_op(before: &Snapshot, after: &Snapshot, ops: usize) -> PerOp {
    let ops = ops.max(1) as f64;
    let by_opcode: BTreeMap<String, f64> = after
        .counts
        .iter()
        .filter_map(|(k, &n)| {
            let d = n.saturating_sub(before.counts.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d as f64 / ops))
        })
        .collect();
    PerOp {
        total: by_opcode.values().sum(),
        by_opcode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_op_is_the_difference_divided_by_the_operations() {
        let before =
            parse(br#"{"transport":"classic","ring_requests":0,"requests":{"INIT":1,"LOOKUP":3}}"#)
                .unwrap();
        let after = parse(
            br#"{"transport":"classic","ring_requests":0,"requests":{"INIT":1,"LOOKUP":23,"GETATTR":5}}"#,
        )
        .unwrap();
        assert_eq!(after.transport, "classic");
        let p = per_op(&before, &after, 10);
        assert_eq!(p.total, 2.5);
        assert_eq!(p.by_opcode.get("LOOKUP"), Some(&2.0));
        assert_eq!(p.by_opcode.get("GETATTR"), Some(&0.5));
        // Opcodes with no new request are left out.
        assert!(!p.by_opcode.contains_key("INIT"));
    }

    #[test]
    fn a_report_without_counts_is_an_error() {
        assert!(parse(br#"{"transport":"io_uring"}"#).is_err());
        assert!(parse(b"not json").is_err());
    }
}
