//! The four cases of the hairpin story, each run with real traffic and checked against what
//! must happen. `cargo xtask lab` narrates them; the lab tests assert on the same results.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    Lab, Netns,
    probe::{self, Answer, ICMP_TIME_EXCEEDED},
    topology::{ALT_HTTP_PORT, CLIENT, DNS_PORT, FAR, GW_LAN, HTTP_PORT, INET, PUBLIC, PUBLIC_DNS_PORT},
    traffic::{self, TcpEcho, UdpEcho},
};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long case 3 waits before calling the connection failed (the kernel retries the SYN
/// after 1 s, so this covers two attempts).
pub const NO_HAIRPIN_TIMEOUT: Duration = Duration::from_secs(3);
pub const UDP_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes each way through the hairpin path in case 2.
pub const HAIRPIN_BYTES: usize = 1 << 20;
pub const WAN_BYTES: usize = 64 << 10;

/// A TCP echo of `bytes` from `from` to the public address's `public_port`, which must reach the
/// LAN server and show it `expect_seen` as the peer.
fn via_public(from: &Netns, public_port: u16, bytes: usize, expect_seen: Ipv4Addr) -> anyhow::Result<TcpEcho> {
    let to = SocketAddrV4::new(PUBLIC, public_port);
    let e = traffic::tcp_echo(from, to, bytes, CONNECT_TIMEOUT)?;
    ensure!(
        e.seen_by_server.ip() == IpAddr::V4(expect_seen),
        "server saw {} instead of {expect_seen}",
        e.seen_by_server
    );
    ensure!(e.bytes == bytes, "echoed {} of {bytes} bytes", e.bytes);
    Ok(e)
}

/// Case 1: the internet host reaches the forwarded server, which sees its real address.
pub fn port_forward(lab: &Lab, public_port: u16) -> anyhow::Result<TcpEcho> {
    via_public(&lab.inet, public_port, WAN_BYTES, INET).context("internet host -> public address")
}

/// Case 2: the LAN client reaches the server through the public address; the server sees the
/// gateway's LAN address, and every byte of the transfer comes back intact.
pub fn hairpin_tcp(lab: &Lab, public_port: u16, bytes: usize) -> anyhow::Result<TcpEcho> {
    via_public(&lab.cli, public_port, bytes, GW_LAN).context("LAN client -> public address")
}

/// Case 3 (hairpin off): the LAN client's connection must time out, as on a gateway without
/// NAT loopback. Returns the error the client got.
pub fn no_hairpin_fails(lab: &Lab) -> anyhow::Result<io::ErrorKind> {
    let to = SocketAddrV4::new(PUBLIC, HTTP_PORT);
    match traffic::tcp_echo(&lab.cli, to, 1, NO_HAIRPIN_TIMEOUT) {
        Ok(e) => bail!("LAN client connected without hairpin (server saw {}): the demo is broken", e.seen_by_server),
        Err(err) => match traffic::io_kind(&err) {
            Some(io::ErrorKind::TimedOut) => Ok(io::ErrorKind::TimedOut),
            _ => bail!("expected a connect timeout, got: {err:#}"),
        },
    }
}

/// Case 4 (UDP): request/response through `PUBLIC:5353 -> SERVER:53` from `from`; the reply
/// must come from the public address. `expect_seen` is the source the server must see.
pub fn udp_forward(from: &Netns, expect_seen: Ipv4Addr) -> anyhow::Result<UdpEcho> {
    let to = SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT);
    let e = traffic::udp_echo(from, to, b"hairpin udp probe", UDP_TIMEOUT)?;
    ensure!(e.reply_from == SocketAddr::V4(to), "reply came from {} instead of {to}", e.reply_from);
    ensure!(
        e.seen_by_server.ip() == IpAddr::V4(expect_seen),
        "server saw {} instead of {expect_seen}",
        e.seen_by_server
    );
    Ok(e)
}

/// Beyond the story: the LAN client reaches the internet host (TCP and UDP), which sees the
/// gateway's public address (masquerade). Returns what the TCP and UDP servers saw.
pub fn masquerade(lab: &Lab) -> anyhow::Result<(TcpEcho, UdpEcho)> {
    let tcp = traffic::tcp_echo(&lab.cli, SocketAddrV4::new(INET, HTTP_PORT), WAN_BYTES, CONNECT_TIMEOUT)
        .context("LAN client -> internet host (TCP)")?;
    ensure!(
        tcp.seen_by_server.ip() == IpAddr::V4(PUBLIC),
        "internet host saw {} instead of {PUBLIC}",
        tcp.seen_by_server
    );
    let to = SocketAddrV4::new(INET, DNS_PORT);
    let udp = traffic::udp_echo(&lab.cli, to, b"hairpin masquerade probe", UDP_TIMEOUT)
        .context("LAN client -> internet host (UDP)")?;
    ensure!(udp.reply_from == SocketAddr::V4(to), "UDP reply came from {}", udp.reply_from);
    ensure!(
        udp.seen_by_server.ip() == IpAddr::V4(PUBLIC),
        "internet host saw {} instead of {PUBLIC}",
        udp.seen_by_server
    );
    Ok((tcp, udp))
}

/// Beyond the story: a traceroute by ping from the LAN client to the far host. Hop 1 is the
/// gateway, hop 2 the router beyond it (its time-exceeded quotes the masqueraded packet, which
/// the gateway must translate back for the client's kernel to match it), then the host.
pub fn traceroute(lab: &Lab) -> anyhow::Result<Vec<Answer>> {
    let hops = (1..=3).map(|ttl| probe::ping(&lab.cli, FAR, ttl, UDP_TIMEOUT)).collect::<anyhow::Result<Vec<_>>>()?;
    let exceeded = |offender| Answer::IcmpError { offender, icmp_type: ICMP_TIME_EXCEEDED, icmp_code: 0 };
    let want = [exceeded(GW_LAN), exceeded(INET), Answer::EchoReply { from: FAR }];
    ensure!(hops == want, "traceroute to {FAR}: {hops:?}, expected {want:?}");
    Ok(hops)
}

/// Two LAN hosts' UDP sockets and their public endpoints.
pub struct Peers {
    pub server: UdpSocket,
    pub server_public: SocketAddr,
    pub client: UdpSocket,
    pub client_public: SocketAddr,
}

/// Beyond the story: the LAN server (port 7000) and client (port 7100) learn their public
/// endpoints from the internet host, as STUN would, then reach each other through them
/// (hairpinning on endpoint-independent bindings): each must see the other's public endpoint.
pub fn peers(lab: &Lab) -> anyhow::Result<Peers> {
    let bind = |ns: &Netns, port: u16| -> anyhow::Result<UdpSocket> {
        let sock = ns.run(move || UdpSocket::bind(("0.0.0.0", port)))??;
        sock.set_read_timeout(Some(UDP_TIMEOUT))?;
        Ok(sock)
    };
    let (server, client) = (bind(&lab.srv, 7000)?, bind(&lab.cli, 7100)?);
    let stun = |sock: &UdpSocket| -> anyhow::Result<SocketAddr> {
        let to = SocketAddrV4::new(INET, DNS_PORT);
        Ok(traffic::udp_echo_from(sock, to, b"stun", UDP_TIMEOUT).context("asking the internet host")?.seen_by_server)
    };
    let peers = Peers { server_public: stun(&server)?, client_public: stun(&client)?, server, client };
    for (from, to, to_public, from_public) in [
        (&peers.client, &peers.server, peers.server_public, peers.client_public),
        (&peers.server, &peers.client, peers.client_public, peers.server_public),
    ] {
        from.send_to(b"hello, peer", to_public)?;
        let (got, seen) = recv(to).with_context(|| format!("nothing arrived through {to_public}"))?;
        ensure!(got == b"hello, peer", "payload changed: {got:?}");
        ensure!(seen == from_public, "sent to {to_public}, arrived from {seen} instead of {from_public}");
    }
    Ok(peers)
}

/// One datagram (up to 64 bytes) and its source.
pub fn recv(sock: &UdpSocket) -> io::Result<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf)?;
    Ok((buf[..n].to_vec(), from))
}

/// Indents every line of a command's output by four spaces.
fn indent(out: &str) -> String {
    out.trim_end().lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Runs the whole story, narrating through `say`. Fails at the first case that does not
/// behave as described.
pub fn story(lab: &mut Lab, say: &mut dyn FnMut(String)) -> anyhow::Result<()> {
    lab.start_servers()?;
    say(format!("LAN server {} and internet host {INET}: TCP echo on :80, UDP echo on :53", crate::topology::SERVER));
    let config = lab.example_config();
    say(format!(
        "hairpin-ctl apply -f hairpin.toml  (contrib/hairpin.toml on lan0/wan0, plus tcp {ALT_HTTP_PORT}; pins under {})",
        lab.pin_dir.display()
    ));
    say(indent(&lab.apply(&config, &[])?));
    say(lab.ctl(&["map", "list"])?.trim_end().to_owned());

    say("\n[1] port forward: internet host 198.51.100.7 -> http://203.0.113.1:80".into());
    lab.flush_neighbours()?;
    let e = port_forward(lab, HTTP_PORT)?;
    say(format!(
        "    ok: {} bytes echoed in {:?}; the server saw the real client {}",
        e.bytes, e.elapsed, e.seen_by_server
    ));

    say(format!("\n[2] hairpin: LAN client {CLIENT} -> http://203.0.113.1:80"));
    lab.flush_neighbours()?;
    let e = hairpin_tcp(lab, HTTP_PORT, HAIRPIN_BYTES)?;
    say(format!(
        "    ok: {} bytes each way verified in {:?}; client {} -> server saw {} (the gateway)",
        e.bytes, e.elapsed, e.local, e.seen_by_server
    ));

    say("\n[4] port change and UDP: 203.0.113.1:8080 -> :80, udp 203.0.113.1:5353 -> :53".into());
    let e = port_forward(lab, ALT_HTTP_PORT)?;
    say(format!("    tcp :8080 from the internet: ok, server saw {}", e.seen_by_server));
    let e = hairpin_tcp(lab, ALT_HTTP_PORT, WAN_BYTES)?;
    say(format!("    tcp :8080 from the LAN: ok, server saw {}", e.seen_by_server));
    let e = udp_forward(&lab.inet, INET)?;
    say(format!("    udp from the internet: reply from {}, server saw {}", e.reply_from, e.seen_by_server));
    let e = udp_forward(&lab.cli, GW_LAN)?;
    say(format!("    udp from the LAN (hairpin): reply from {}, server saw {}", e.reply_from, e.seen_by_server));

    say("\n[+] masquerade: LAN client -> internet host 198.51.100.7 (TCP :80, UDP :53)".into());
    let (tcp, udp) = masquerade(lab)?;
    say(format!("    tcp: client {} -> the internet host saw {}", tcp.local, tcp.seen_by_server));
    say(format!("    udp: reply from {}, the internet host saw {}", udp.reply_from, udp.seen_by_server));

    say(format!("\n[+] traceroute by ping: LAN client -> far host {FAR}, one router beyond the gateway"));
    for (ttl, hop) in traceroute(lab)?.iter().enumerate() {
        let line = match hop {
            Answer::IcmpError { offender, .. } => format!("time exceeded from {offender}"),
            Answer::EchoReply { from } => format!("echo reply from {from}"),
        };
        say(format!("    ttl {}: {line}", ttl + 1));
    }

    say("\n[+] peers: LAN server :7000 and client :7100 learn their public endpoints, then use them".into());
    let p = peers(lab)?;
    say(format!(
        "    server is {}, client is {} to the internet; each reached the other there and saw it so",
        p.server_public, p.client_public
    ));

    say("\nflows (hairpin-ctl flows):".into());
    say(lab.ctl(&["flows"])?.trim_end().to_owned());
    say("\ncounters (hairpin-ctl stats, non-zero):".into());
    for row in lab.stats()? {
        if row["total"].as_u64().unwrap_or(0) > 0 {
            say(format!("    {:<22} {}", row["reason"].as_str().unwrap_or("?"), row["total"]));
        }
    }

    say("\n[3] the same gateway without hairpin: `hairpin = false` in the file, applied live".into());
    let no_hairpin = config.replace("hairpin = true", "hairpin = false");
    say(indent(&lab.apply(&no_hairpin, &[])?));
    lab.flush_neighbours()?;
    let kind = no_hairpin_fails(lab)?;
    say(format!(
        "    LAN client -> 203.0.113.1:80: {kind:?} after {NO_HAIRPIN_TIMEOUT:?}. The gateway rewrote only the \
         destination, the server answered {CLIENT} directly from 192.168.0.2, and the client dropped that \
         reply: it expected 203.0.113.1."
    ));
    let e = port_forward(lab, HTTP_PORT)?;
    say(format!("    internet host -> 203.0.113.1:80 still works: server saw {}", e.seen_by_server));
    lab.down()?;
    say("\nall four cases behaved as described".into());
    Ok(())
}
