//! Machine output (`--json`) and human output, kept apart from the commands' logic.

use std::net::{Ipv4Addr, SocketAddrV4};

use hairpin_common::{Endpoint, FlowKey};
use serde::Serialize;

pub fn ip(a: hairpin_common::Ipv4Be) -> Ipv4Addr {
    Ipv4Addr::from(a.octets())
}

pub fn endpoint(e: Endpoint) -> SocketAddrV4 {
    SocketAddrV4::new(ip(e.addr), e.port.host())
}

pub fn src(k: &FlowKey) -> SocketAddrV4 {
    endpoint(k.src_ep())
}

pub fn dst(k: &FlowKey) -> SocketAddrV4 {
    endpoint(k.dst_ep())
}

/// Prints `rows` as a JSON array (one object per entry) followed by a newline.
pub fn json<T: Serialize>(rows: &[T]) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(rows)?);
    Ok(())
}
