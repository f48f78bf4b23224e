//! Interface lookups in the caller's network namespace.

use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};

/// The interface's index, or a clear error if it does not exist here.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(name)
        .with_context(|| format!("no interface named '{name}' in this network namespace"))
}

/// The interface's primary (first listed) IPv4 address.
pub fn primary_ipv4(name: &str) -> anyhow::Result<Ipv4Addr> {
    let addrs = nix::ifaddrs::getifaddrs().context("listing interface addresses")?;
    for ifa in addrs {
        if ifa.interface_name != name {
            continue;
        }
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return Ok(sin.ip());
        }
    }
    bail!("interface '{name}' has no IPv4 address; give one explicitly")
}
