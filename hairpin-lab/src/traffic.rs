//! Real sockets: the LAN server's TCP and UDP echo services, and the clients that use them.
//!
//! TCP: the client sends `ECHO <n>\n` and n bytes; the server answers `PEER <addr>\n` (the peer
//! address it sees) and echoes the bytes. UDP: the server answers each datagram with
//! `PEER <addr>\n` and the datagram. So a client learns what the server saw, and every byte that
//! crossed the NAT both ways is checked.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::Netns;

/// How long a server waits on one client before giving up on it, and how often the accept and
/// receive loops look at the stop flag.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_POLL: Duration = Duration::from_millis(50);
/// The largest transfer a server accepts (bounds the traffic any test can make).
const MAX_ECHO: usize = 64 << 20;

/// The byte at offset `i` of every transfer: position-dependent, so reordering or loss shows.
pub fn pattern(i: usize) -> u8 {
    ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ (i >> 16) as u8
}

pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Binds both servers in `ns` and returns once they are listening.
    pub fn start(ns: &Netns, tcp: SocketAddrV4, udp: SocketAddrV4) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        {
            let (stop, ready) = (stop.clone(), ready_tx.clone());
            threads.push(ns.spawn(move || tcp_server(tcp, &stop, ready))?);
        }
        {
            let (stop, ready) = (stop.clone(), ready_tx);
            threads.push(ns.spawn(move || udp_server(udp, &stop, ready))?);
        }
        let servers = Self { stop, threads };
        for _ in 0..2 {
            ready_rx.recv_timeout(IO_TIMEOUT).context("server did not start")??;
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_server(addr: SocketAddrV4, stop: &AtomicBool, ready: mpsc::Sender<anyhow::Result<()>>) {
    let listener = match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|_| l)) {
        Ok(l) => l,
        Err(e) => return drop(ready.send(Err(anyhow::anyhow!("binding TCP {addr}: {e}")))),
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                // One connection at a time is plenty for the lab; a bad client only times out.
                let _ = serve_tcp(stream, peer);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(STOP_POLL),
            Err(_) => thread::sleep(STOP_POLL),
        }
    }
}

fn serve_tcp(stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let n: usize = line
        .strip_prefix("ECHO ")
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n <= MAX_ECHO)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad request"))?;
    let mut writer = stream;
    writer.write_all(format!("PEER {peer}\n").as_bytes())?;
    let mut buf = vec![0u8; 64 << 10];
    let mut left = n;
    while left > 0 {
        let got = reader.read(&mut buf[..left.min(64 << 10)])?;
        if got == 0 {
            break;
        }
        writer.write_all(&buf[..got])?;
        left -= got;
    }
    Ok(())
}

fn udp_server(addr: SocketAddrV4, stop: &AtomicBool, ready: mpsc::Sender<anyhow::Result<()>>) {
    let sock = match UdpSocket::bind(addr).and_then(|s| s.set_read_timeout(Some(STOP_POLL)).map(|_| s)) {
        Ok(s) => s,
        Err(e) => return drop(ready.send(Err(anyhow::anyhow!("binding UDP {addr}: {e}")))),
    };
    let _ = ready.send(Ok(()));
    // Any datagram whole, fragmented ones included.
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let mut reply = format!("PEER {peer}\n").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, peer);
        }
    }
}

/// Sends without the don't-fragment bit (`IP_PMTUDISC_DONT`): a router on the way fragments
/// the socket's datagrams where they do not fit, as a host with path-MTU discovery off gets.
pub fn allow_fragmentation(sock: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let v: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: an int option on a valid socket.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The I/O error kind behind a client error (connection refused, timed out...), if any.
pub fn io_kind(err: &anyhow::Error) -> Option<io::ErrorKind> {
    err.downcast_ref::<io::Error>().map(io::Error::kind)
}

/// What a TCP client saw of an echo exchange.
#[derive(Debug, Clone)]
pub struct TcpEcho {
    /// The client's own address and port.
    pub local: SocketAddr,
    /// The address the LAN server saw as its peer.
    pub seen_by_server: SocketAddr,
    /// Bytes sent and received back identical.
    pub bytes: usize,
    pub elapsed: Duration,
}

/// Connects from `ns` to `to` and echoes `bytes` bytes, verifying each one.
pub fn tcp_echo(ns: &Netns, to: SocketAddrV4, bytes: usize, connect_timeout: Duration) -> anyhow::Result<TcpEcho> {
    ns.run(move || -> anyhow::Result<TcpEcho> {
        let start = Instant::now();
        let stream = TcpStream::connect_timeout(&to.into(), connect_timeout)
            .map_err(|e| anyhow::Error::new(e).context(format!("connecting to {to}")))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let local = stream.local_addr()?;
        // Write on another thread: echoing 1 MiB while only writing would fill both windows.
        let mut w = stream.try_clone()?;
        let writer = thread::spawn(move || -> io::Result<()> {
            w.write_all(format!("ECHO {bytes}\n").as_bytes())?;
            let chunk: Vec<u8> = (0..bytes).map(pattern).collect();
            w.write_all(&chunk)
        });
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).context("reading the server's PEER line")?;
        let seen: SocketAddr = line
            .strip_prefix("PEER ")
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("bad server greeting {line:?}"))?;
        let mut got = vec![0u8; bytes];
        reader.read_exact(&mut got).context("reading the echo")?;
        writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))?.context("sending")?;
        if let Some(i) = (0..bytes).find(|&i| got[i] != pattern(i)) {
            bail!("echo differs at byte {i} of {bytes}");
        }
        Ok(TcpEcho { local, seen_by_server: seen, bytes, elapsed: start.elapsed() })
    })?
}

/// What a UDP client saw of one request/response.
#[derive(Debug, Clone)]
pub struct UdpEcho {
    pub local: SocketAddr,
    /// Where the response came from (must be the address the client sent to).
    pub reply_from: SocketAddr,
    pub seen_by_server: SocketAddr,
}

/// Sends one datagram from `ns` to `to` and waits up to `timeout` for the echo.
pub fn udp_echo(ns: &Netns, to: SocketAddrV4, payload: &[u8], timeout: Duration) -> anyhow::Result<UdpEcho> {
    let payload = payload.to_vec();
    ns.run(move || udp_echo_from(&UdpSocket::bind("0.0.0.0:0")?, to, &payload, timeout))?
}

/// As [`udp_echo`], from a socket the caller keeps (created in its namespace): the same local
/// port across exchanges.
pub fn udp_echo_from(sock: &UdpSocket, to: SocketAddrV4, payload: &[u8], timeout: Duration) -> anyhow::Result<UdpEcho> {
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(payload, to)?;
    udp_reply(sock, to, payload)
}

/// As [`udp_echo`], but the datagram (from `src`, the host's address in `ns`) is fragmented
/// by hand, 1480 bytes of it per fragment, and its fragments sent last first through a raw
/// socket: the one with the UDP header arrives last, as some stacks and paths deliver them.
pub fn udp_echo_last_first(
    ns: &Netns,
    src: std::net::Ipv4Addr,
    to: SocketAddrV4,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<UdpEcho> {
    let payload = payload.to_vec();
    ns.run(move || {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.set_read_timeout(Some(timeout))?;
        let from = SocketAddrV4::new(src, sock.local_addr()?.port());
        let mut fragments = ipv4_fragments(&udp_datagram(from, to, &payload), 0x5a5a, 1480);
        fragments.reverse();
        send_raw(&fragments, *to.ip())?;
        udp_reply(&sock, to, &payload)
    })?
}

/// A UDP datagram from `from` to `to` with `payload`: IPv4 header (DF clear) and UDP header,
/// checksums computed.
fn udp_datagram(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let sum = match hairpin_common::csum::l4_checksum(from.ip().octets(), to.ip().octets(), 17, &udp) {
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&sum.to_ne_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&from.ip().octets());
    ip.extend_from_slice(&to.ip().octets());
    [ip, udp].concat()
}

/// `datagram` (an IPv4 header and its payload) as a sender fragments it: pieces of `chunk`
/// bytes of payload (a multiple of 8), each with its own copy of the header (DF clear,
/// identification `id`, more-fragments and offset set, checksum computed).
pub fn ipv4_fragments(datagram: &[u8], id: u16, chunk: usize) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0, "fragment payloads are multiples of 8 bytes");
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    let (header, payload) = datagram.split_at(ihl);
    let n = payload.len().div_ceil(chunk);
    (0..n)
        .map(|i| {
            let piece = &payload[i * chunk..((i + 1) * chunk).min(payload.len())];
            let mut h = header.to_vec();
            h[2..4].copy_from_slice(&((ihl + piece.len()) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&id.to_be_bytes());
            let more: u16 = if i + 1 < n { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&(more | (i * chunk / 8) as u16).to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let sum = hairpin_common::csum::checksum(&h);
            h[10..12].copy_from_slice(&sum.to_ne_bytes());
            [h, piece.to_vec()].concat()
        })
        .collect()
}

/// Sends IPv4 packets, headers included, as they are (a raw socket, IPPROTO_RAW).
fn send_raw(packets: &[Vec<u8>], to: std::net::Ipv4Addr) -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket(2); the descriptor is owned (and closed) below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a raw socket");
    }
    // SAFETY: a descriptor just opened, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.octets()) },
        sin_zero: [0; 8],
    };
    for p in packets {
        // SAFETY: `p` and `addr` live across the call, with the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                p.as_ptr().cast(),
                p.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error()).context("sending a fragment");
        }
    }
    Ok(())
}

/// The echo server's reply to `payload` sent to `to`, on `sock`.
fn udp_reply(sock: &UdpSocket, to: SocketAddrV4, payload: &[u8]) -> anyhow::Result<UdpEcho> {
    let mut buf = vec![0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf).with_context(|| format!("no UDP reply from {to}"))?;
    let text = &buf[..n];
    let nl = text.iter().position(|b| *b == b'\n').context("no PEER line")?;
    let seen: SocketAddr = std::str::from_utf8(&text[..nl])?
        .strip_prefix("PEER ")
        .and_then(|s| s.parse().ok())
        .context("bad PEER line")?;
    if text[nl + 1..] != payload[..] {
        bail!("UDP echo payload differs");
    }
    Ok(UdpEcho { local: sock.local_addr()?, reply_from: from, seen_by_server: seen })
}
