//! Interfaces in the caller's network namespace, as rtnetlink tells them: indexes, primary
//! addresses, and the XDP and TCX programs already on them.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, bail};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The interface's index, or a clear error if it does not exist here.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(name)
        .with_context(|| format!("no interface named '{name}' in this network namespace"))
}

/// The name of the interface `ifindex`, if it exists here.
pub fn name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

/// What the kernel says of an interface's far end and queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    /// Its peer (a veth's, netkit's) is in another network namespace (`IFLA_LINK_NETNSID`).
    pub peer_elsewhere: bool,
    /// Its root queueing discipline (`noqueue`, a veth's default; `fq_codel`...).
    pub qdisc: Option<String>,
    /// Its Ethernet address; all zero for a device without one (PPP, tun), which the
    /// dataplane then does not check frames against.
    pub mac: [u8; 6],
}

/// What one link request says of the interface `ifindex`.
pub fn link_facts(ifindex: u32) -> anyhow::Result<LinkFacts> {
    let mut facts = LinkFacts::default();
    for a in link(ifindex)?.attributes {
        match a {
            LinkAttribute::LinkNetNsId(_) => facts.peer_elsewhere = true,
            LinkAttribute::Qdisc(q) => facts.qdisc = Some(q),
            LinkAttribute::Address(a) => facts.mac = <[u8; 6]>::try_from(a.as_slice()).unwrap_or_default(),
            _ => {}
        }
    }
    Ok(facts)
}

/// The interface's primary (first, not secondary) IPv4 address.
pub fn primary_ipv4(name: &str) -> anyhow::Result<Ipv4Addr> {
    primary_ipv4_net(name).map(|(addr, _)| addr)
}

/// The interface's primary IPv4 address and its prefix length.
pub fn primary_ipv4_net(name: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let index = ifindex(name)?;
    match ipv4_addresses()?.into_iter().find(|a| a.ifindex == index) {
        Some(a) => Ok((a.addr, a.prefix_len)),
        None => bail!("interface '{name}' has no IPv4 address; give one explicitly"),
    }
}

/// An IPv4 address of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ifaddr {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// Every primary IPv4 address here, in the kernel's order (each interface's primary first).
pub fn ipv4_addresses() -> anyhow::Result<Vec<Ifaddr>> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    let mut out = Vec::new();
    for reply in request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP).context("listing IPv4 addresses")? {
        if let RouteNetlinkMessage::NewAddress(a) = reply
            && let Some(ifaddr) = ifaddr(&a)
        {
            out.push(ifaddr);
        }
    }
    Ok(out)
}

/// The primary IPv4 address an rtnetlink address message describes, if it does.
pub fn ifaddr(a: &AddressMessage) -> Option<Ifaddr> {
    if a.header.family != AddressFamily::Inet || a.header.flags.contains(AddressHeaderFlags::Secondary) {
        return None;
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on point-to-point
    // links (PPPoE) and the same as IFA_LOCAL elsewhere.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    let address = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    Some(Ifaddr { ifindex: a.header.index, addr: local.or(address)?, prefix_len: a.header.prefix_len })
}

/// Whether the interface is a loopback device.
pub fn is_loopback(name: &str) -> bool {
    ifindex(name).and_then(link).is_ok_and(|l| l.header.flags.contains(LinkFlags::Loopback))
}

/// A program attached to an interface: how (`XDP`, `TCX`, `a cls_bpf filter`), where, its id
/// and (as the kernel keeps it, cut to 15 bytes) its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub how: &'static str,
    pub hook: &'static str,
    pub id: u32,
    pub name: Option<String>,
}

impl Attached {
    /// Whether it is one of hairpin's programs (from any pin directory).
    pub fn hairpins(&self) -> bool {
        self.name
            .as_deref()
            .is_some_and(|n| !n.is_empty() && crate::dataplane::PROGRAM_NAMES.iter().any(|p| p.starts_with(n)))
    }
}

/// Every XDP, TCX and cls_bpf program attached to the interface.
pub fn attached(ifindex: u32) -> anyhow::Result<Vec<Attached>> {
    let mut found: Vec<(&'static str, &'static str, u32)> = Vec::new();
    for a in link(ifindex)?.attributes {
        let LinkAttribute::Xdp(x) = a else { continue };
        for x in x {
            if let LinkXdp::ProgId(id) = x
                && id != 0
            {
                found.push(("XDP", "ingress", id));
            }
        }
    }
    use aya::programs::{SchedClassifier, tc::TcAttachType};
    for (at, hook) in [(TcAttachType::Ingress, "ingress"), (TcAttachType::Egress, "egress")] {
        // Kernels before 6.6 have no TCX (nothing can be attached that way there).
        let Ok((_, progs)) = SchedClassifier::query_tcx(ifindex, at) else { continue };
        found.extend(progs.iter().map(|p| ("TCX", hook, p.id())));
    }
    found.extend(bpf_filters(ifindex)?.into_iter().map(|(hook, id)| ("a cls_bpf filter", hook, id)));
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let names: std::collections::HashMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_string())))
        .collect();
    Ok(found.into_iter().map(|(how, hook, id)| Attached { how, hook, id, name: names.get(&id).cloned() }).collect())
}

/// Refuses an interface that already runs an XDP, TCX or cls_bpf program (hairpin's own from
/// another pin directory, or anyone's): a second NAT, or a program hairpin would run beside
/// without knowing, is never what an operator wants. Names the program.
pub fn refuse_attached(name: &str, ifindex: u32) -> anyhow::Result<()> {
    let Some(a) = attached(ifindex)?.into_iter().next() else { return Ok(()) };
    let (what, at) = match a.how {
        "XDP" => ("XDP program", String::new()),
        "TCX" => ("TCX program", format!(" at {}", a.hook)),
        _ => ("a cls_bpf filter, program", format!(" at {}", a.hook)),
    };
    let prog = match (&a.name, a.hairpins()) {
        (Some(n), true) => format!(" ({n}: hairpin's, from another pin directory or a `down` that did not finish?)"),
        (Some(n), false) => format!(" ({n})"),
        (None, _) => String::new(),
    };
    bail!("{name} already runs {what} id {}{prog}{at}: detach it first", a.id)
}

/// Waits (up to two seconds) until none of hairpin's programs runs on these interfaces any
/// more: a link unpinned is detached by the kernel a moment later (deferred work), and an `up`
/// right after `down` must not find them.
pub fn wait_detached(ifindexes: &[u32]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let busy = ifindexes.iter().any(|&i| attached(i).is_ok_and(|a| a.iter().any(Attached::hairpins)));
        if !busy {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The programs of the cls_bpf filters under the interface's clsact qdisc (TC programs
/// attached the netlink way, any kernel), by hook.
fn bpf_filters(ifindex: u32) -> anyhow::Result<Vec<(&'static str, u32)>> {
    use netlink_packet_route::tc::TcFilterBpfOption;
    use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
    let mut out = Vec::new();
    for (hook, minor) in [("ingress", TcHandle::MIN_INGRESS), ("egress", TcHandle::MIN_EGRESS)] {
        let mut msg = TcMessage::default();
        msg.header.index = ifindex as i32;
        msg.header.parent = TcHandle { major: 0xffff, minor };
        // No clsact qdisc: nothing attached this way (the kernel says so with an error).
        let Ok(replies) = request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP) else { continue };
        for reply in replies {
            let RouteNetlinkMessage::NewTrafficFilter(f) = reply else { continue };
            for a in &f.attributes {
                let TcAttribute::Options(opts) = a else { continue };
                for o in opts {
                    if let TcOption::Bpf(TcFilterBpfOption::ProgId(id)) = o {
                        out.push((hook, *id));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What the kernel announced about interfaces and addresses (rtnetlink multicast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An IPv4 address was added or removed somewhere.
    Address,
    /// An interface appeared or changed: its index and name.
    Link(u32, String),
    /// An interface went away.
    LinkGone(u32),
}

/// A subscription to the kernel's announcements of link and IPv4 address changes, for `run`
/// to follow a WAN address that DHCP or PPPoE changes, and interfaces that go and come back.
pub struct Changes {
    socket: Socket,
}

impl Changes {
    pub fn subscribe() -> anyhow::Result<Self> {
        // RTNLGRP_LINK and RTNLGRP_IPV4_IFADDR (group numbers, not the legacy bit masks).
        const RTNLGRP_LINK: u32 = 1;
        const RTNLGRP_IPV4_IFADDR: u32 = 5;
        let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
        socket.bind_auto().context("binding the rtnetlink socket")?;
        for group in [RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR] {
            socket.add_membership(group).context("subscribing to rtnetlink's link and address changes")?;
        }
        socket.set_non_blocking(true)?;
        Ok(Self { socket })
    }

    /// What arrived since the last call (none if nothing did).
    pub fn drain(&mut self) -> anyhow::Result<Vec<Change>> {
        let mut out = Vec::new();
        let mut rx = vec![0; 64 * 1024];
        loop {
            let n = match self.socket.recv(&mut &mut rx[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
                // Announcements were lost (a burst): say something changed, so all is re-read.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    out.push(Change::Address);
                    continue;
                }
                Err(e) => return Err(e).context("reading rtnetlink announcements"),
            };
            let mut off = 0;
            while off < n {
                let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n]) else { break };
                let len = m.header.length as usize;
                if let NetlinkPayload::InnerMessage(msg) = m.payload {
                    match msg {
                        RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => {
                            out.push(Change::Address)
                        }
                        RouteNetlinkMessage::NewLink(l) => {
                            let name = l.attributes.iter().find_map(|a| match a {
                                LinkAttribute::IfName(n) => Some(n.clone()),
                                _ => None,
                            });
                            out.push(Change::Link(l.header.index, name.unwrap_or_default()));
                        }
                        RouteNetlinkMessage::DelLink(l) => out.push(Change::LinkGone(l.header.index)),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

impl std::os::fd::AsRawFd for Changes {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

/// The link message of `ifindex`.
fn link(ifindex: u32) -> anyhow::Result<LinkMessage> {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    for reply in request(RouteNetlinkMessage::GetLink(msg), 0)? {
        if let RouteNetlinkMessage::NewLink(l) = reply {
            return Ok(l);
        }
    }
    bail!("no interface with index {ifindex}")
}

/// Sends one rtnetlink request and collects the replies (all parts of a dump).
fn request(msg: RouteNetlinkMessage, flags: u16) -> anyhow::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
    socket.bind_auto().context("binding the rtnetlink socket")?;
    socket.connect(&SocketAddr::new(0, 0)).context("connecting the rtnetlink socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    req.finalize();
    let mut buf = vec![0; req.header.length as usize];
    req.serialize(&mut buf[..]);
    socket.send(&buf, 0).context("sending an rtnetlink request")?;
    let mut out = Vec::new();
    let mut rx = vec![0; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0).context("reading rtnetlink")?;
        let mut off = 0;
        while off < n {
            let m: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&rx[off..n]).context("parsing an rtnetlink reply")?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(e.to_io()).context("rtnetlink refused the request");
                }
                NetlinkPayload::InnerMessage(inner) => {
                    out.push(inner);
                    if flags & NLM_F_DUMP == 0 {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_known_and_has_its_address() {
        assert!(super::is_loopback("lo"));
        assert_eq!(super::primary_ipv4("lo").unwrap(), std::net::Ipv4Addr::LOCALHOST);
    }
}
