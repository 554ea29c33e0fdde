//! How requests reach the adapter. fuser's classic loop reads them from `/dev/fuse` on a few
//! threads; with FUSE-over-io_uring (kernel 6.14+ with the `fuse` module parameter
//! `enable_uring=Y`) one worker per CPU serves that CPU's queue, so a request is answered on
//! the CPU that issued it instead of waking a thread on another one, and fetching the next
//! request and committing a reply is one system call. The classic loop keeps running beside
//! the rings: the kernel still sends FORGET and INTERRUPT, and everything until the rings are
//! registered, that way.
//!
//! The queue workers run at the `SCHED_IDLE` policy (`-o uring_sched=idle`, the default).
//! The kernel wakes the client whose reply a worker commits with a plain wake-up, while the
//! worker still runs on the client's CPU; a CPU that runs only `SCHED_IDLE` work counts as
//! idle when the scheduler places the woken client, so the client stays where it was (and
//! preempts the worker, which is about to sleep until its next request anyway). At the
//! normal policy the CPU looks busy and the scheduler may move the client to another idle
//! CPU, whose queue then answers its next request and moves it back: measured on 2 CPUs,
//! `cp -a` of 3,000 files ran either at 1.4-1.6 s (the client stays) or at 2.2-2.9 s
//! (12,000-28,000 migrations of the client) from mount to mount, and at `SCHED_IDLE` at
//! 1.2-1.5 s every time. The workers keep up under load: with four busy loops per CPU the
//! same copy took as long at either policy. `uring_sched=normal` keeps the normal policy.
//!
//! The choice (`-o uring=auto|on|off`) is made in two steps: before the mount, whether this
//! process can make a ring at all ([`Transport::plan`]); in INIT, whether the kernel offers
//! `FUSE_OVER_IO_URING` (the adapter asks for it only with a plan). `auto` falls back to the
//! classic transport at either step, `on` refuses to mount instead.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use fuser::{Dispatcher, Filesystem, ReplySink};

use crate::sys::fuse_uring::{self, Fetched, Queue, RingEnd};

/// `-o uring=`: which transport serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UringChoice {
    /// io_uring when the kernel offers it, else classic.
    #[default]
    Auto,
    /// io_uring or no mount.
    On,
    /// Always the classic `/dev/fuse` transport.
    Off,
}

/// `-o uring_sched=`: the scheduling policy of the queue workers (see module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueSched {
    /// `SCHED_IDLE`: the clients they wake stay on their CPU.
    #[default]
    Idle,
    /// The policy the daemon was started with.
    Normal,
}

/// Ring entries per queue: requests the kernel can hand one CPU's worker at once.
const DEPTH: usize = 8;
/// The kernel's smallest payload buffer (`FUSE_MIN_READ_BUFFER`).
const MIN_PAYLOAD: usize = 8192;
/// How often an idle worker checks that the connection still exists.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The transport chosen for a mount, shared by the mount code and the adapter.
#[derive(Debug)]
pub struct Transport {
    choice: UringChoice,
    sched: QueueSched,
    /// A ring can be made here (checked before the mount).
    ring_possible: bool,
    /// INIT negotiated `FUSE_OVER_IO_URING`.
    negotiated: AtomicBool,
    /// Requests served by the rings (the rest came by `/dev/fuse`).
    ring_requests: AtomicU64,
}

impl Transport {
    /// Decides what may be tried before the mount. `Err` only for `uring=on` when this process
    /// cannot make a ring.
    pub fn plan(choice: UringChoice, sched: QueueSched) -> Result<Arc<Transport>, String> {
        let ring_possible = match choice {
            UringChoice::Off => false,
            _ => match Queue::probe() {
                Ok(()) => true,
                Err(e) if choice == UringChoice::On => {
                    return Err(format!("uring=on: cannot create an io_uring here: {e}"));
                }
                Err(e) => {
                    tracing::info!(error = %e, "no io_uring here: classic FUSE transport");
                    false
                }
            },
        };
        Ok(Arc::new(Transport {
            choice,
            sched,
            ring_possible,
            negotiated: AtomicBool::new(false),
            ring_requests: AtomicU64::new(0),
        }))
    }

    /// The classic transport only (tests and callers without a choice).
    pub fn classic() -> Arc<Transport> {
        Arc::new(Transport {
            choice: UringChoice::Off,
            sched: QueueSched::Normal,
            ring_possible: false,
            negotiated: AtomicBool::new(false),
            ring_requests: AtomicU64::new(0),
        })
    }

    /// INIT: whether to ask for `FUSE_OVER_IO_URING`, given whether the kernel offers it.
    /// `Err` when `uring=on` cannot be honoured (the mount then fails with that message).
    pub fn negotiate(&self, offered: bool) -> Result<bool, String> {
        let want = self.ring_possible && offered;
        if self.choice == UringChoice::On && !want {
            return Err("uring=on: the kernel does not offer FUSE-over-io_uring \
                        (needs Linux 6.14+ and the fuse module parameter enable_uring=Y)"
                .into());
        }
        self.negotiated.store(want, Ordering::Relaxed);
        Ok(want)
    }

    /// The transport serving this mount, for the log and `rlayerfs bench`.
    pub fn name(&self) -> &'static str {
        if self.negotiated.load(Ordering::Relaxed) {
            "io_uring"
        } else {
            "classic"
        }
    }

    /// The requests dispatched so far, per opcode: logged (at debug level when `at_exit`),
    /// and written as JSON to the file named by `RLAYERFS_STATS` when it is set (replaced
    /// atomically, so a reader never sees half of it). `kill -USR1` asks for it.
    pub fn report_requests(&self, at_exit: bool) {
        let report = RequestReport {
            transport: self.name(),
            ring_requests: self.ring_requests.load(Ordering::Relaxed),
            requests: fuser::stats::request_counts()
                .into_iter()
                .map(|(op, n)| (opcode_name(op), n))
                .collect(),
        };
        let total: u64 = report.requests.values().sum();
        if at_exit {
            tracing::debug!(transport = report.transport, total, requests = ?report.requests, "requests served");
        } else {
            tracing::info!(transport = report.transport, total, requests = ?report.requests, "requests served");
        }
        if let Some(path) = std::env::var_os("RLAYERFS_STATS") {
            let path = std::path::PathBuf::from(path);
            let tmp = path.with_extension("tmp");
            let written = serde_json::to_vec(&report)
                .map_err(std::io::Error::other)
                .and_then(|json| std::fs::write(&tmp, json))
                .and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the request counts");
            }
        }
    }

    /// Starts one worker per queue when INIT negotiated io_uring (nothing otherwise).
    /// `fuse` is the connection's `/dev/fuse`; `max_payload` its largest request or reply.
    pub fn start<FS: Filesystem>(
        self: &Arc<Self>,
        dispatcher: Dispatcher<FS>,
        fuse: OwnedFd,
        max_payload: usize,
    ) -> std::io::Result<Vec<JoinHandle<std::io::Result<()>>>> {
        if !self.negotiated.load(Ordering::Relaxed) {
            tracing::info!(transport = "classic", "serving requests from /dev/fuse");
            return Ok(Vec::new());
        }
        let fuse = Arc::new(fuse);
        let queues = fuse_uring::possible_cpus();
        let payload = max_payload.max(MIN_PAYLOAD);
        tracing::info!(
            transport = "io_uring",
            queues,
            depth = DEPTH,
            "serving requests from rings"
        );
        let mut workers = Vec::with_capacity(queues);
        for qid in 0..queues {
            let d = dispatcher.clone();
            let fuse = fuse.clone();
            let me = self.clone();
            let worker = std::thread::Builder::new()
                .name(format!("uring-{qid}"))
                .spawn(move || serve(d, &fuse, qid, payload, me.sched, &me.ring_requests))?;
            workers.push(worker);
        }
        Ok(workers)
    }
}

/// What `report_requests` writes.
#[derive(Debug, serde::Serialize)]
struct RequestReport {
    transport: &'static str,
    ring_requests: u64,
    requests: std::collections::BTreeMap<&'static str, u64>,
}

/// The name of a FUSE opcode (`linux/fuse.h`'s `enum fuse_opcode`, without `FUSE_`).
pub fn opcode_name(op: u32) -> &'static str {
    const NAMES: [&str; 53] = [
        "0",
        "LOOKUP",
        "FORGET",
        "GETATTR",
        "SETATTR",
        "READLINK",
        "SYMLINK",
        "7",
        "MKNOD",
        "MKDIR",
        "UNLINK",
        "RMDIR",
        "RENAME",
        "LINK",
        "OPEN",
        "READ",
        "WRITE",
        "STATFS",
        "RELEASE",
        "19",
        "FSYNC",
        "SETXATTR",
        "GETXATTR",
        "LISTXATTR",
        "REMOVEXATTR",
        "FLUSH",
        "INIT",
        "OPENDIR",
        "READDIR",
        "RELEASEDIR",
        "FSYNCDIR",
        "GETLK",
        "SETLK",
        "SETLKW",
        "ACCESS",
        "CREATE",
        "INTERRUPT",
        "BMAP",
        "DESTROY",
        "IOCTL",
        "POLL",
        "NOTIFY_REPLY",
        "BATCH_FORGET",
        "FALLOCATE",
        "READDIRPLUS",
        "RENAME2",
        "LSEEK",
        "COPY_FILE_RANGE",
        "SETUPMAPPING",
        "REMOVEMAPPING",
        "SYNCFS",
        "TMPFILE",
        "STATX",
    ];
    NAMES.get(op as usize).copied().unwrap_or("OTHER")
}

/// Collects the one reply of the request being served.
#[derive(Debug, Default)]
struct RingReply {
    buf: Mutex<Vec<u8>>,
}

impl ReplySink for RingReply {
    fn send(&self, data: &[std::io::IoSlice<'_>]) -> std::io::Result<()> {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        buf.clear();
        for d in data {
            buf.extend_from_slice(d);
        }
        Ok(())
    }
}

/// The EIO reply to a request that got none (or could not be read).
fn eio_reply(unique: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&16u32.to_ne_bytes());
    out[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
    out[8..16].copy_from_slice(&unique.to_ne_bytes());
    out
}

/// One queue's worker: fetch, dispatch, commit, until the connection goes away.
fn serve<FS: Filesystem>(
    d: Dispatcher<FS>,
    fuse: &OwnedFd,
    qid: usize,
    payload: usize,
    sched: QueueSched,
    served: &AtomicU64,
) -> std::io::Result<()> {
    if sched == QueueSched::Idle {
        if let Err(e) = crate::sys::process::set_idle_policy() {
            tracing::debug!(qid, error = %e, "queue worker keeps the normal policy");
        }
    }
    if let Err(e) = fuse_uring::pin_to_cpu(qid) {
        // An offline CPU or one outside the daemon's affinity: its queue must exist all the
        // same, served from wherever this thread may run.
        tracing::debug!(qid, error = %e, "queue worker not pinned");
    }
    let mut queue = Queue::new(fuse.as_fd(), qid as u16, DEPTH, payload)?;
    queue.register_all()?;
    let reply = Arc::new(RingReply::default());
    let sink: Arc<dyn ReplySink> = reply.clone();
    let mut live = DEPTH;
    loop {
        let fetched: Fetched = match queue.next(IDLE_CHECK)? {
            Some(Ok(f)) => f,
            Some(Err(RingEnd::Disconnected)) => return Ok(()),
            Some(Err(RingEnd::Refused(errno))) => {
                // A refused REGISTER turns io_uring off for the connection (the classic loop
                // serves everything); a refused COMMIT loses that one entry.
                tracing::warn!(qid, errno, "ring command refused");
                live -= 1;
                if live == 0 {
                    return Ok(());
                }
                continue;
            }
            None if connection_gone(fuse) => return Ok(()),
            None => continue,
        };
        served.fetch_add(1, Ordering::Relaxed);
        let dispatched = match queue.request(fetched) {
            Some(req) => d.dispatch(req, &sink),
            None => false,
        };
        let mut buf = reply.buf.lock().unwrap_or_else(|p| p.into_inner());
        if !dispatched || buf.is_empty() {
            let unique = queue.unique(fetched);
            tracing::error!(qid, unique, "request over io_uring got no reply: EIO");
            queue.commit(fetched, &eio_reply(unique))?;
        } else {
            queue.commit(fetched, &buf)?;
        }
        buf.clear();
    }
}

/// True once the connection is aborted or unmounted (`/dev/fuse` then polls as an error).
fn connection_gone(fuse: &OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(fuse, PollFlags::empty())];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        && fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP)
}
