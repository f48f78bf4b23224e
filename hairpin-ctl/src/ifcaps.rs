//! What the kernel says of an interface, for placing its ingress (see
//! `hairpin_common::placement`): its driver (ethtool) and its XDP features (the generic netlink
//! `netdev` family, kernel 6.3 and later).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

/// `NETDEV_XDP_ACT_BASIC`: the driver runs XDP programs natively.
pub const XDP_ACT_BASIC: u64 = 1 << 0;
/// `NETDEV_XDP_ACT_NDO_XMIT`: the device takes frames redirected to it by XDP (a veth only
/// while its peer runs XDP or has GRO on).
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// What `up` places an interface's ingress by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// The driver's name as ethtool reports it (`veth`, `bridge`, `virtio_net`, ...).
    pub driver: String,
    /// `NETDEV_XDP_ACT_*` bits; `None` on kernels without the `netdev` family (before 6.3).
    pub xdp_features: Option<u64>,
    /// Its peer's namespace and its queueing discipline.
    pub link: crate::netif::LinkFacts,
}

impl Caps {
    pub fn probe(name: &str, ifindex: u32) -> anyhow::Result<Self> {
        Ok(Self {
            driver: driver(name).with_context(|| format!("asking ethtool for {name}'s driver"))?,
            xdp_features: xdp_features(ifindex).with_context(|| format!("asking netlink for {name}'s XDP features"))?,
            link: crate::netif::link_facts(ifindex)?,
        })
    }

    /// The TC fast path may send packets for this device straight into its peer's ingress
    /// (`bpf_redirect_peer`): a veth or netkit whose peer is in another namespace (the kernel
    /// refuses a peer in the same one), with no queueing discipline that sending through the
    /// device would honour (`noqueue`, a veth's default).
    pub fn peer_target(&self) -> bool {
        self.not_peer_target().is_none()
    }

    /// Why the TC fast path may not send into this device's peer directly, if it may not.
    pub fn not_peer_target(&self) -> Option<String> {
        if !matches!(self.driver.as_str(), "veth" | "netkit") {
            return Some(format!("a {} device has no peer to send into", self.driver));
        }
        if !self.link.peer_elsewhere {
            return Some("its peer is in this namespace".into());
        }
        match self.link.qdisc.as_deref() {
            Some(q) if q != "noqueue" => Some(format!("it has a queueing discipline now ({q})")),
            _ => None,
        }
    }

    /// A device whose frames come from a local stack (a veth's peer, a tun's reader): they
    /// carry checksums left to offload, which XDP cannot see.
    pub fn software_peer(&self) -> bool {
        matches!(self.driver.as_str(), "veth" | "tun" | "netkit")
    }
}

/// The interface's driver name (`ETHTOOL_GDRVINFO`).
fn driver(name: &str) -> anyhow::Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 160] };
    // SAFETY: a plain zeroed C struct.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        bail!("interface name '{name}' is too long");
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut info).cast();
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: `ifr` points at `info`, both live for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error().into());
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface's XDP features (`NETDEV_CMD_DEV_GET`), or `None` if this kernel has no
/// `netdev` generic netlink family.
fn xdp_features(ifindex: u32) -> anyhow::Result<Option<u64>> {
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const NETDEV_CMD_DEV_GET: u8 = 1;
    const NETDEV_A_DEV_IFINDEX: u16 = 1;
    const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
    let sock = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_GENERIC)?;
    let family = match genl(&sock, libc::GENL_ID_CTRL as u16, CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME, b"netdev\0") {
        Ok(attrs) => attr(&attrs, CTRL_ATTR_FAMILY_ID).context("no family id in the reply")?.to_vec(),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e).context("resolving the netdev family"),
    };
    let family = u16::from_ne_bytes(family.get(..2).context("short family id")?.try_into()?);
    let attrs = genl(&sock, family, NETDEV_CMD_DEV_GET, NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())?;
    let features = attr(&attrs, NETDEV_A_DEV_XDP_FEATURES).context("no xdp-features in the reply")?;
    Ok(Some(u64::from_ne_bytes(features.get(..8).context("short xdp-features")?.try_into()?)))
}

/// Sends one generic netlink request with one attribute and returns the attributes of its
/// reply.
fn genl(sock: &OwnedFd, family: u16, cmd: u8, attr_type: u16, payload: &[u8]) -> io::Result<Vec<u8>> {
    const HDR: usize = 16 + 4;
    let attr_len = 4 + payload.len();
    let len = HDR + attr_len.next_multiple_of(4);
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&family.to_ne_bytes());
    msg.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(&[cmd, 1, 0, 0]); // genlmsghdr: command, version 1
    msg.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    msg.extend_from_slice(&attr_type.to_ne_bytes());
    msg.extend_from_slice(payload);
    msg.resize(len, 0);
    // SAFETY: a valid buffer for the call.
    if unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: as above.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = &buf[..n as usize];
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply");
    let ty = u16::from_ne_bytes(reply.get(4..6).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    if ty == libc::NLMSG_ERROR as u16 {
        let errno = i32::from_ne_bytes(reply.get(16..20).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        return Err(io::Error::from_raw_os_error(-errno));
    }
    let msg_len = u32::from_ne_bytes(reply.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    Ok(reply.get(HDR..msg_len.min(reply.len())).ok_or_else(bad)?.to_vec())
}

/// The payload of attribute `ty` in a run of netlink attributes.
fn attr(mut attrs: &[u8], ty: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let t = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if t == ty {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_found_past_padding() {
        // A 5-byte attribute (padded to 8), then an 8-byte one.
        let mut a = vec![5, 0, 2, 0, b'x', 0, 0, 0];
        a.extend_from_slice(&[12, 0, 3, 0]);
        a.extend_from_slice(&7u64.to_ne_bytes());
        assert_eq!(attr(&a, 2), Some(&b"x"[..]));
        assert_eq!(attr(&a, 3).map(|b| u64::from_ne_bytes(b.try_into().unwrap())), Some(7));
        assert_eq!(attr(&a, 4), None);
        assert_eq!(attr(&[200, 0, 1, 0], 1), None, "a length past the end");
    }
}
