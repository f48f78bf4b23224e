//! Interface lookups in the caller's network namespace.

use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};

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

/// The interface's primary (first listed) IPv4 address.
pub fn primary_ipv4(name: &str) -> anyhow::Result<Ipv4Addr> {
    primary_ipv4_net(name).map(|(addr, _)| addr)
}

/// The interface's primary IPv4 address and its prefix length.
pub fn primary_ipv4_net(name: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let addrs = nix::ifaddrs::getifaddrs().context("listing interface addresses")?;
    for ifa in addrs {
        if ifa.interface_name != name {
            continue;
        }
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            let mask =
                ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in()).map_or(32, |m| u32::from(m.ip()).count_ones());
            return Ok((sin.ip(), mask as u8));
        }
    }
    bail!("interface '{name}' has no IPv4 address; give one explicitly")
}
