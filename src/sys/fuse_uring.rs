//! The kernel side of FUSE-over-io_uring (Linux 6.14+, FUSE protocol 7.42): one ring per
//! queue, ring entries registered with `/dev/fuse`, requests fetched and replies committed with
//! `IORING_OP_URING_CMD`. The protocol is described in the kernel's
//! `Documentation/filesystems/fuse-io-uring.rst`; the layouts below are `linux/fuse.h`'s.
//!
//! - Each entry is two buffers the kernel keeps pointers to: a 288-byte header
//!   (`struct fuse_uring_req_header`: `in_out[128]` holds the `fuse_in_header` on fetch and the
//!   `fuse_out_header` on commit, `op_in[128]` the opcode's fixed header,
//!   `struct fuse_uring_ent_in_out` the commit id and the payload size) and a payload buffer of
//!   at least the connection's largest request or reply (`max(8 KiB, max_write, max_pages ×
//!   page size)`), which holds everything after the opcode header.
//! - `FUSE_IO_URING_CMD_REGISTER` (the iovec pair in `sqe->addr`, `sqe->len == 2`) gives an
//!   entry to queue `qid` and completes when a request has been copied into it;
//!   `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` (commit id = the request's `unique`) hands the reply
//!   back and re-arms the entry. The command area is `struct fuse_uring_cmd_req` (flags,
//!   commit id, qid), so the ring needs 128-byte SQEs.
//! - The kernel serves a request on the queue of the CPU that issued it, and switches the
//!   connection to the rings only once every possible CPU's queue has an entry; until then,
//!   and always for FORGET and INTERRUPT, requests still come by `read(2)` on `/dev/fuse`.
//! - Registration needs the connection initialised (INIT answered with `FUSE_OVER_IO_URING`);
//!   a failed registration turns io_uring off for the connection, which then stays classic.
//!
//! The payload buffer has [`PREFIX`] spare bytes in front of it, so the in-header and opcode
//! header can be copied just before the payload and the request handed on as one contiguous,
//! aligned slice, as `read(2)` would return it, without copying the payload.

use std::alloc::{alloc_zeroed, Layout};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// `sizeof(struct fuse_uring_req_header)`.
const HEADER_SIZE: usize = 128 + 128 + 32;
const OP_IN: usize = 128;
/// Offset of `struct fuse_uring_ent_in_out` in the header.
const ENT_IN_OUT: usize = 256;
const IN_HEADER_SIZE: usize = 40;
const OUT_HEADER_SIZE: usize = 16;
/// Room in front of the payload for the in-header and the largest opcode header.
const PREFIX: usize = 256;
/// Offset of `sqe->len` in `struct io_uring_sqe`.
const SQE_LEN_OFFSET: usize = 24;

/// A zeroed, page-aligned allocation whose address the kernel keeps. It is never freed: the
/// kernel may hold the address until the ring is torn down, and rings live as long as the
/// daemon.
struct KernelBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by one queue; the queue (and so every access from
// this side) moves between threads as a whole.
#[allow(unsafe_code)]
unsafe impl Send for KernelBuf {}

impl KernelBuf {
    fn new(len: usize) -> io::Result<KernelBuf> {
        let layout = Layout::from_size_align(len, 4096)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size (callers pass at least HEADER_SIZE).
        #[allow(unsafe_code)]
        let ptr = unsafe { alloc_zeroed(layout) };
        NonNull::new(ptr)
            .map(|ptr| KernelBuf { ptr, len })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
    }

    /// The buffer as bytes. Only called for an entry the kernel has handed to us (its command
    /// completed and is not yet committed), when the kernel does not touch it.
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe a live allocation (never freed); the kernel writes to an
        // entry's buffers only while its command is pending, and this side only reads or
        // writes them between the command's completion and the next commit.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len)
        }
    }
}

struct RingEntry {
    header: KernelBuf,
    /// PREFIX spare bytes, then the payload buffer the kernel knows.
    buf: KernelBuf,
    /// The iovec pair of the REGISTER command; read by the kernel at submission only.
    iov: Box<[libc::iovec; 2]>,
    commit_id: u64,
}

/// A request handed over by the kernel: the entry it is in.
#[derive(Debug, Clone, Copy)]
pub struct Fetched(usize);

/// Why a completion carries no request.
#[derive(Debug)]
pub enum RingEnd {
    /// The connection is gone (unmounted or aborted): stop serving.
    Disconnected,
    /// The kernel refused a command with this errno.
    Refused(i32),
}

/// One queue's ring and entries.
pub struct Queue {
    // Declared first so it is dropped first: closing the ring cancels the pending commands
    // before anything else goes away.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    entries: Vec<RingEntry>,
    fuse_fd: i32,
    qid: u16,
    payload_size: usize,
    pending: usize,
}

impl Queue {
    /// A ring for queue `qid` of the connection `fuse` with `depth` entries whose payload
    /// buffers hold `payload_size` bytes. Must be called on the thread that serves the queue.
    pub fn new(
        fuse: BorrowedFd<'_>,
        qid: u16,
        depth: usize,
        payload_size: usize,
    ) -> io::Result<Queue> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .build((depth as u32).next_power_of_two().max(2))?;
        let mut entries = Vec::with_capacity(depth);
        for _ in 0..depth {
            let mut header = KernelBuf::new(HEADER_SIZE)?;
            let mut buf = KernelBuf::new(PREFIX + payload_size)?;
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.bytes().as_mut_ptr().cast(),
                    iov_len: HEADER_SIZE,
                },
                libc::iovec {
                    iov_base: buf.bytes()[PREFIX..].as_mut_ptr().cast(),
                    iov_len: payload_size,
                },
            ]);
            entries.push(RingEntry {
                header,
                buf,
                iov,
                commit_id: 0,
            });
        }
        Ok(Queue {
            ring,
            entries,
            fuse_fd: fuse.as_raw_fd(),
            qid,
            payload_size,
            pending: 0,
        })
    }

    /// Always the probe before INIT: can this process make a ring with 128-byte SQEs?
    /// (`io_uring_disabled`, seccomp filters and old kernels say no.)
    pub fn probe() -> io::Result<()> {
        IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build(2)
            .map(drop)
    }

    fn cmd(&self, commit_id: u64) -> [u8; 80] {
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        cmd
    }

    fn push(&mut self, sqe: squeue::Entry128) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an SQE refers to (the iovec pair and the entry buffers it
            // points to) is owned by this queue and never freed.
            #[allow(unsafe_code)]
            let pushed = unsafe { self.ring.submission().push(&sqe) };
            if pushed.is_ok() {
                self.pending += 1;
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Gives every entry to the kernel. The commands complete as requests arrive.
    pub fn register_all(&mut self) -> io::Result<()> {
        for i in 0..self.entries.len() {
            let addr = self.entries[i].iov.as_ptr() as u64;
            let sqe = opcode::UringCmd80::new(types::Fd(self.fuse_fd), FUSE_IO_URING_CMD_REGISTER)
                .cmd(self.cmd(0))
                .addr(Some(addr))
                .build()
                .user_data(i as u64);
            self.push(with_len(sqe, 2))?;
        }
        self.ring.submit()?;
        self.pending = 0;
        Ok(())
    }

    /// Submits what is queued and waits up to `timeout` for the next request.
    /// `Ok(None)`: nothing arrived in time.
    pub fn next(&mut self, timeout: Duration) -> io::Result<Option<Result<Fetched, RingEnd>>> {
        if self.ring.completion().is_empty() {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
            self.pending = 0;
        }
        let Some(cqe) = self.ring.completion().next() else {
            return Ok(None);
        };
        let idx = cqe.user_data() as usize;
        let res = cqe.result();
        if res < 0 {
            let errno = -res;
            return Ok(Some(Err(match errno {
                libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV => {
                    RingEnd::Disconnected
                }
                e => RingEnd::Refused(e),
            })));
        }
        if idx >= self.entries.len() {
            return Ok(Some(Err(RingEnd::Refused(libc::EBADMSG))));
        }
        Ok(Some(Ok(Fetched(idx))))
    }

    /// The request in `f`, laid out as `read(2)` on `/dev/fuse` returns it. `None` when the
    /// kernel's header is inconsistent (then the request is answered with EIO by the caller).
    pub fn request(&mut self, f: Fetched) -> Option<&[u8]> {
        let payload_size = self.payload_size;
        let e = &mut self.entries[f.0];
        let header = e.header.bytes();
        let len = u32::from_ne_bytes(header[0..4].try_into().ok()?) as usize;
        e.commit_id = u64::from_ne_bytes(header[ENT_IN_OUT + 8..ENT_IN_OUT + 16].try_into().ok()?);
        let payload_sz =
            u32::from_ne_bytes(header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].try_into().ok()?) as usize;
        let op_len = len.checked_sub(IN_HEADER_SIZE + payload_sz)?;
        // Every FUSE opcode header is a multiple of 8 bytes, which keeps the copy aligned.
        if op_len > 128 || op_len % 8 != 0 || payload_sz > payload_size {
            return None;
        }
        let mut prefix = [0u8; IN_HEADER_SIZE + 128];
        prefix[..IN_HEADER_SIZE].copy_from_slice(&header[..IN_HEADER_SIZE]);
        prefix[IN_HEADER_SIZE..IN_HEADER_SIZE + op_len]
            .copy_from_slice(&header[OP_IN..OP_IN + op_len]);
        let start = PREFIX - IN_HEADER_SIZE - op_len;
        let buf = e.buf.bytes();
        buf[start..PREFIX].copy_from_slice(&prefix[..IN_HEADER_SIZE + op_len]);
        Some(&buf[start..PREFIX + payload_sz])
    }

    /// The request's `unique`, for an error reply when the request could not be read.
    pub fn unique(&mut self, f: Fetched) -> u64 {
        let header = self.entries[f.0].header.bytes();
        u64::from_ne_bytes(header[8..16].try_into().unwrap_or([0; 8]))
    }

    /// Hands the reply (`fuse_out_header` and payload, as written to `/dev/fuse`) back and
    /// re-arms the entry; submitted with the next wait. A reply too large for the payload
    /// buffer becomes EIO.
    pub fn commit(&mut self, f: Fetched, reply: &[u8]) -> io::Result<()> {
        let payload_size = self.payload_size;
        let e = &mut self.entries[f.0];
        let commit_id = e.commit_id;
        let header = e.header.bytes();
        let (out, payload) = match reply.split_at_checked(OUT_HEADER_SIZE) {
            Some((out, payload)) if payload.len() <= payload_size => (out, payload),
            _ => {
                tracing::error!(len = reply.len(), "reply does not fit the ring entry");
                header[0..4].copy_from_slice(&(OUT_HEADER_SIZE as u32).to_ne_bytes());
                header[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
                header[8..16].copy_from_slice(&commit_id.to_ne_bytes());
                header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&0u32.to_ne_bytes());
                return self.push_commit(f, commit_id);
            }
        };
        header[..OUT_HEADER_SIZE].copy_from_slice(out);
        header[ENT_IN_OUT..ENT_IN_OUT + 8].copy_from_slice(&0u64.to_ne_bytes());
        header[ENT_IN_OUT + 8..ENT_IN_OUT + 16].copy_from_slice(&commit_id.to_ne_bytes());
        header[ENT_IN_OUT + 16..ENT_IN_OUT + 20]
            .copy_from_slice(&(payload.len() as u32).to_ne_bytes());
        e.buf.bytes()[PREFIX..PREFIX + payload.len()].copy_from_slice(payload);
        self.push_commit(f, commit_id)
    }

    fn push_commit(&mut self, f: Fetched, commit_id: u64) -> io::Result<()> {
        let sqe =
            opcode::UringCmd80::new(types::Fd(self.fuse_fd), FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
                .cmd(self.cmd(commit_id))
                .build()
                .user_data(f.0 as u64);
        self.push(sqe)
    }
}

/// Sets `sqe->len`, which `UringCmd80` has no setter for (REGISTER passes the iovec count).
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: `Entry128` is `#[repr(C)]` around `struct io_uring_sqe` followed by 64 bytes:
    // exactly 128 bytes with the SQE's layout, in which `len` is the u32 at offset 24; any
    // byte pattern is a valid `Entry128`.
    #[allow(unsafe_code)]
    unsafe {
        let mut bytes: [u8; 128] = std::mem::transmute(sqe);
        bytes[SQE_LEN_OFFSET..SQE_LEN_OFFSET + 4].copy_from_slice(&len.to_ne_bytes());
        std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes)
    }
}

/// The CPUs the kernel makes a queue for: every possible CPU (`/sys/devices/system/cpu/possible`).
pub fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list_max(s.trim()))
        .map(|max| max + 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The highest CPU number in a kernel CPU list such as `0-3,8-11` or `0`.
fn parse_cpu_list_max(list: &str) -> Option<usize> {
    list.split(',')
        .map(|part| {
            part.rsplit('-')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
        })
        .try_fold(0usize, |max, n| n.map(|n| max.max(n)))
}

/// Pins the calling thread to `cpu`, so a request is served on the CPU that issued it. A CPU
/// outside the thread's current affinity (the daemon started under `taskset` or a cpuset) is
/// left alone: the user's restriction wins, and the thread stays where it may run.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let allowed = rustix::thread::sched_getaffinity(None).map_err(io::Error::from)?;
    if !allowed.is_set(cpu) {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list_max("0"), Some(0));
        assert_eq!(parse_cpu_list_max("0-1"), Some(1));
        assert_eq!(parse_cpu_list_max("0-3,8-11"), Some(11));
        assert_eq!(parse_cpu_list_max("0,5"), Some(5));
        assert_eq!(parse_cpu_list_max("x"), None);
    }

    #[test]
    fn register_sqe_carries_the_iovec_count() {
        let sqe = opcode::UringCmd80::new(types::Fd(3), FUSE_IO_URING_CMD_REGISTER)
            .addr(Some(0x1000))
            .build();
        let sqe = with_len(sqe, 2);
        // SAFETY: as in with_len.
        #[allow(unsafe_code)]
        let bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(
            &bytes[SQE_LEN_OFFSET..SQE_LEN_OFFSET + 4],
            &2u32.to_ne_bytes()
        );
        assert_eq!(&bytes[16..24], &0x1000u64.to_ne_bytes());
        assert_eq!(bytes[0], io_uring::opcode::UringCmd80::CODE);
    }
}
