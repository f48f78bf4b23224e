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

/// A flow's protocol by name; an ICMP echo flow's "port" is its identifier.
pub fn proto_name(proto: u8) -> &'static str {
    use hairpin_common::consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// Prints `rows` as a JSON array (one object per entry) followed by a newline.
pub fn json<T: Serialize>(rows: &[T]) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(rows)?);
    Ok(())
}
