//! ICMP through the gateway, seen from a host's own sockets: a ping, and probes whose answer is
//! an ICMP error. The kernel hands a ping reply to the socket whose echo id it carries, and an
//! ICMP error (IP_RECVERR) to the socket whose packet it quotes, so a probe that gets its
//! answer proves the gateway translated the reply, or the quoted packet, back exactly.

use std::{
    io::IoSliceMut,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    cmsg_space,
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{
        AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, connect, recv,
        recvmsg, send, setsockopt, socket, sockopt,
    },
};

use crate::Netns;

/// What answered a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An echo reply (ping) from this address.
    EchoReply { from: Ipv4Addr },
    /// An ICMP error about the probe, sent by `offender`.
    IcmpError { offender: Ipv4Addr, icmp_type: u8, icmp_code: u8 },
}

pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_PORT_UNREACH: u8 = 3;

/// Pings `to` once from `ns` with `ttl`, from an unprivileged ICMP socket (the kernel picks
/// the echo id, and delivers only replies and errors that carry it).
pub fn ping(ns: &Netns, to: Ipv4Addr, ttl: u8, timeout: Duration) -> anyhow::Result<Answer> {
    // Ping sockets are open to the groups in this range (none by default, root included).
    ns.sysctl("net.ipv4.ping_group_range", "0 2147483647")?;
    ns.run(move || {
        let fd = probe_socket(SockType::Datagram, SockProtocol::Icmp, SocketAddrV4::new(to, 0), ttl)?;
        // Echo request; the kernel fills in the id and the checksum.
        let mut msg = vec![8u8, 0, 0, 0, 0, 0, 0, 1];
        msg.extend_from_slice(b"hairpin lab ping");
        send(fd.as_raw_fd(), &msg, MsgFlags::empty()).context("sending the echo request")?;
        wait(&fd, timeout, |reply| (reply.first() == Some(&0)).then_some(Answer::EchoReply { from: to }))
    })?
}

/// Sends one UDP datagram from `ns` to `to` with `ttl` and waits for an ICMP error about it
/// (a reply datagram is an error of the test).
pub fn udp_probe(ns: &Netns, to: SocketAddrV4, ttl: u8, timeout: Duration) -> anyhow::Result<Answer> {
    ns.run(move || {
        let fd = probe_socket(SockType::Datagram, SockProtocol::Udp, to, ttl)?;
        send(fd.as_raw_fd(), b"hairpin lab probe", MsgFlags::empty()).context("sending the probe")?;
        wait(&fd, timeout, |_| None)
    })?
}

fn probe_socket(ty: SockType, proto: SockProtocol, to: SocketAddrV4, ttl: u8) -> anyhow::Result<OwnedFd> {
    let fd = socket(AddressFamily::Inet, ty, SockFlag::SOCK_NONBLOCK, proto).context("creating the probe socket")?;
    setsockopt(&fd, sockopt::Ipv4Ttl, &i32::from(ttl))?;
    setsockopt(&fd, sockopt::Ipv4RecvErr, &true)?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).with_context(|| format!("connecting to {to}"))?;
    Ok(fd)
}

/// Waits for a datagram that `accept` turns into an answer, or for an ICMP error.
fn wait(fd: &OwnedFd, timeout: Duration, accept: impl Fn(&[u8]) -> Option<Answer>) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no answer within {timeout:?}");
        }
        let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).expect("bounded");
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, ms).context("poll")?;
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.contains(PollFlags::POLLERR) {
            return read_error(fd);
        }
        if revents.contains(PollFlags::POLLIN) {
            let mut buf = [0u8; 2048];
            match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => match accept(&buf[..n]) {
                    Some(a) => return Ok(a),
                    None => bail!("unexpected datagram of {n} bytes"),
                },
                // The pending error is reported here too; its details are in the queue.
                Err(_) => return read_error(fd),
            }
        }
    }
}

/// The first ICMP error queued on the socket (MSG_ERRQUEUE).
fn read_error(fd: &OwnedFd) -> anyhow::Result<Answer> {
    const SO_EE_ORIGIN_ICMP: u8 = 2;
    let mut data = [0u8; 2048];
    let mut iov = [IoSliceMut::new(&mut data)];
    let mut cmsg = cmsg_space!(libc::sock_extended_err, libc::sockaddr_in);
    let msg = recvmsg::<SockaddrIn>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_ERRQUEUE)
        .context("reading the socket's error queue")?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4RecvErr(ee, Some(offender)) = c
            && ee.ee_origin == SO_EE_ORIGIN_ICMP
        {
            let offender = Ipv4Addr::from(u32::from_be(offender.sin_addr.s_addr));
            return Ok(Answer::IcmpError { offender, icmp_type: ee.ee_type, icmp_code: ee.ee_code });
        }
    }
    bail!("the socket's error is not an ICMP error")
}

/// Sends `frame` (Ethernet header included) out of `iface` in `ns` as it is, through a packet
/// socket: for frames no socket of the host's own would build (VLAN tags, bad headers).
pub fn send_frame(ns: &Netns, iface: &str, frame: &[u8]) -> anyhow::Result<()> {
    let (iface, frame) = (iface.to_owned(), frame.to_vec());
    ns.run(move || -> anyhow::Result<()> {
        let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).with_context(|| format!("no {iface}"))?;
        // SAFETY: plain syscalls on a descriptor owned here; the address is a zeroed
        // sockaddr_ll filled in below.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("creating a packet socket");
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if sent < 0 {
                return Err(std::io::Error::last_os_error()).context("sending the frame");
            }
        }
        Ok(())
    })?
}

/// The frames `iface` in a namespace receives from its link (not those it sends), recorded by
/// a packet socket from the moment it is opened: what a host on the far side of the gateway
/// actually got.
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    pub fn open(ns: &Netns, iface: &str) -> anyhow::Result<Self> {
        let iface = iface.to_owned();
        let fd = ns.run(move || -> anyhow::Result<OwnedFd> {
            let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).with_context(|| format!("no {iface}"))?;
            let all = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain syscalls on a descriptor owned here; the address is a zeroed
            // sockaddr_ll filled in below.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error()).context("creating a packet socket");
                }
                let fd = OwnedFd::from_raw_fd(fd);
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = all;
                addr.sll_ifindex = ifindex as i32;
                let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                if libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) < 0 {
                    return Err(std::io::Error::last_os_error()).context("binding the packet socket");
                }
                Ok(fd)
            }
        })??;
        Ok(Self { fd })
    }

    /// The frames received since the last call, Ethernet header first.
    pub fn received(&self) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        loop {
            let mut buf = vec![0u8; 65536];
            // SAFETY: as above; `from` is written by the kernel, up to `len`.
            let (n, from) = unsafe {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                );
                (n, from)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(frames);
                }
                return Err(e).context("reading the packet socket");
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                buf.truncate(n as usize);
                frames.push(buf);
            }
        }
    }
}
