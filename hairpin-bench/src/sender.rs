//! Where the kernel refuses live XDP frames (`BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` answers EPERM, as a sandbox's BPF LSM may), the generator's
//! frames go out of a packet socket instead: far fewer a second (one CPU's `sendmmsg`), so the
//! figures are bounded by it, and the report says so.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// Set once the kernel has refused live frames: every later run sends with a packet socket.
static LIVE_REFUSED: AtomicBool = AtomicBool::new(false);

pub fn live_refused() -> bool {
    LIVE_REFUSED.load(Ordering::Relaxed)
}

/// Records the refusal, and says it once.
pub fn refuse_live() {
    if !LIVE_REFUSED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "note: this kernel refuses live XDP frames (BPF_PROG_TEST_RUN: EPERM); the generator sends \
             with a packet socket instead, and every rate is bounded by it"
        );
    }
}

/// What the generator sends: `frame`, its UDP source port (destination port if `vary_dst`)
/// cycling through `flows` ports from `first_port`.
pub struct Frames<'a> {
    pub frame: &'a [u8],
    pub first_port: u32,
    pub flows: u32,
    pub vary_dst: bool,
}

/// Offset of the UDP header in the generator's frames (IPv4 without options).
const UDP_OFF: usize = 14 + 20;
/// Frames per `sendmmsg`.
const BATCH: usize = 64;

/// Sends `frames` out of interface `ifindex` of the calling thread's namespace in runs of
/// `chunk` frames until `done(sent, elapsed)`.
pub fn send(
    ifindex: u32,
    frames: &Frames,
    chunk: u32,
    done: impl Fn(u64, Duration) -> bool,
) -> anyhow::Result<(u64, Duration)> {
    let port_off = if frames.vary_dst { UDP_OFF + 2 } else { UDP_OFF };
    let all: Vec<Vec<u8>> = (0..frames.flows.max(1))
        .map(|i| {
            let mut f = frames.frame.to_vec();
            f[port_off..port_off + 2].copy_from_slice(&((frames.first_port + i) as u16).to_be_bytes());
            f
        })
        .collect();
    // SAFETY: plain socket calls; the descriptor is owned from here on.
    let sock = unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening a packet socket");
        }
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are the ones bind reads.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: `addr` is a sockaddr_ll of `len` bytes.
    if unsafe { libc::bind(sock.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) } < 0 {
        return Err(std::io::Error::last_os_error()).context("binding the packet socket");
    }
    let one: libc::c_int = 1;
    // SAFETY: an int option. Straight to the driver, past the qdisc, as XDP frames go.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    let start = Instant::now();
    let (mut sent, mut next) = (0u64, 0usize);
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
    while !done(sent, start.elapsed()) {
        let mut left = chunk as usize;
        while left > 0 {
            let n = left.min(BATCH);
            iov.clear();
            msgs.clear();
            for _ in 0..n {
                let f = &all[next];
                next = (next + 1) % all.len();
                iov.push(libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() });
            }
            for v in iov.iter_mut() {
                // SAFETY: a zeroed msghdr is valid; it points at one iovec that outlives the call.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                msgs.push(h);
            }
            // SAFETY: `msgs` holds `n` initialised headers.
            let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                // A full queue: the receiver is behind; the frames are dropped, as live frames are.
                if e.raw_os_error() != Some(libc::ENOBUFS) && e.raw_os_error() != Some(libc::EAGAIN) {
                    return Err(e).context("sending with the packet socket");
                }
            }
            // What the socket took is what was offered.
            sent += r.max(0) as u64;
            left -= n;
        }
    }
    Ok((sent, start.elapsed()))
}
