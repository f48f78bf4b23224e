//! `flows`' arguments: which flows to list (filtered like `conntrack -L`), or which to remove.

use std::net::{Ipv4Addr, SocketAddrV4};

use clap::{Args, Subcommand, ValueEnum};

use crate::output::Kind;

#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(subcommand)]
    pub action: Option<FlowsAction>,
    #[command(flatten)]
    pub filter: Filter,
    /// Print flows as they start and end (`new`, `end` with why: expired, evicted, flushed),
    /// as `run` sees them, until interrupted; with --json, one JSON object a line. Needs a
    /// `run` serving the pin directory.
    #[arg(long)]
    pub watch: bool,
    /// Print a JSON array, one object per entry.
    #[arg(long)]
    pub json: bool,
}

/// Which flows to list: every condition given must hold (of the flow's original direction, as
/// it arrived at the gateway, or of its translation).
#[derive(Debug, Args, Default, PartialEq)]
pub struct Filter {
    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<FlowProto>,
    /// Only flows from this address (ADDR, or ADDR:PORT), before or after translation.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_addr)]
    pub src: Option<AddrPort>,
    /// Only flows to this address (ADDR, or ADDR:PORT), before or after translation.
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_addr)]
    pub dst: Option<AddrPort>,
    /// Only flows with this port (or ICMP echo id) anywhere in their tuples.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only flows of this kind: forward (from the internet to a port-forward), hairpin (a LAN
    /// host to the public address) or masquerade (a LAN host to the internet).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
}

#[derive(Debug, Subcommand)]
pub enum FlowsAction {
    /// Remove one flow: both directions, their rewrites, and the LAN host's public port if no
    /// other flow holds it. Give the tuple of either direction as `flows` shows it (ICMP: the
    /// echo id as the port, 0 on the other side).
    Del {
        #[arg(value_enum)]
        proto: FlowProto,
        #[arg(value_name = "SRC:PORT")]
        src: SocketAddrV4,
        #[arg(value_name = "DST:PORT")]
        dst: SocketAddrV4,
    },
    /// Remove every flow (both directions and their rewrites) and every binding. Established
    /// connections through the gateway break; port-forwards and masquerade create new flows
    /// for new traffic, and LAN hosts may get other public ports.
    Flush,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlowProto {
    Tcp,
    Udp,
    Icmp,
}

impl FlowProto {
    pub fn number(self) -> u8 {
        use hairpin_common::consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
        match self {
            FlowProto::Tcp => IPPROTO_TCP,
            FlowProto::Udp => IPPROTO_UDP,
            FlowProto::Icmp => IPPROTO_ICMP,
        }
    }
}

/// An address, and maybe a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrPort {
    pub addr: Ipv4Addr,
    pub port: Option<u16>,
}

impl AddrPort {
    pub fn matches(&self, ep: SocketAddrV4) -> bool {
        *ep.ip() == self.addr && self.port.is_none_or(|p| p == ep.port())
    }
}

fn parse_addr(s: &str) -> Result<AddrPort, String> {
    if let Ok(sa) = s.parse::<SocketAddrV4>() {
        return Ok(AddrPort { addr: *sa.ip(), port: Some(sa.port()) });
    }
    s.parse().map(|addr| AddrPort { addr, port: None }).map_err(|_| format!("'{s}' is not an IPv4 ADDR or ADDR:PORT"))
}
