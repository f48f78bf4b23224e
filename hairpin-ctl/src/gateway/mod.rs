//! A [`Spec`] against this machine and the live dataplane, the gateway's operations: resolving
//! a spec's interfaces and addresses, the one place a dataplane [`Config`] is made from it
//! ([`config`]), reading the live gateway back as a spec ([`live`]), planning and applying the
//! move to a new one ([`plan`], [`apply`]), the one writer of forwards ([`forwards`]),
//! attaching ([`attach`]) and taking down ([`teardown`]). Commands and the service call these;
//! nothing here parses arguments or prints what a command reports.

pub mod apply;
pub mod attach;
pub mod forwards;
pub mod live;
pub mod plan;
pub mod teardown;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use hairpin_common::{CFG_F_FAST_PATH, CFG_F_HAIRPIN, CFG_F_PUBLIC_FROM_WAN, CFG_F_UDP_EIF, Config, Ipv4Be};
use ipnet::Ipv4Net;

use crate::{
    netif, output,
    spec::{Addresses, Problem, Spec, UdpFiltering},
};

/// Where a spec came from, to point at the culprit of a problem: a flag, or a file's line.
pub enum Source {
    /// Settings given as flags: `flag` names the flag that sets a spec key.
    Flags {
        flag: fn(&str) -> String,
    },
    File {
        path: PathBuf,
        text: String,
    },
    /// The live dataplane, as `run` follows what the kernel changes.
    Live,
}

impl Source {
    /// Reads and checks a file.
    pub fn load(path: PathBuf) -> anyhow::Result<(Spec, Source)> {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let spec = Spec::parse(&text).map_err(|e| anyhow::anyhow!("{}{e}", path.display()))?;
        Ok((spec, Source::File { path, text }))
    }

    /// One line naming the flag or the file, line and key.
    pub fn explain(&self, p: &Problem) -> String {
        match self {
            Source::File { path, text } => match crate::spec::key_line(text, &p.key) {
                Some(line) => format!("{}:{line}: {}: {}", path.display(), p.key, p.what),
                None => format!("{}: {}: {}", path.display(), p.key, p.what),
            },
            Source::Flags { flag } => format!("{}: {}", flag(&p.key), p.what),
            Source::Live => format!("{}: {}", p.key, p.what),
        }
    }

    /// Fails with the first problem, if any.
    pub fn check(&self, problems: Vec<Problem>) -> anyhow::Result<()> {
        match problems.first() {
            Some(p) => bail!("{}", self.explain(p)),
            None => Ok(()),
        }
    }
}

/// A spec on this machine: its interfaces' indexes and the addresses it resolves to.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    /// Per side (`Side::index`), the interface's index.
    pub ifindex: [u32; 2],
    /// The interfaces' Ethernet addresses (see `Config::addressed_to_us`).
    pub macs: [[u8; 6]; 2],
    pub addrs: Addresses,
}

/// Finds the interfaces and fills the addresses the spec leaves to them; then checks the
/// addresses (see [`Spec::check_addresses`]).
pub fn resolve(spec: &Spec, source: &Source) -> anyhow::Result<Resolved> {
    source.check(spec.check())?;
    let problem =
        |key: &str, e: anyhow::Error| anyhow::anyhow!("{}", source.explain(&Problem::new(key, format!("{e:#}"))));
    let lan = &spec.lan.interface;
    let wan = &spec.wan.interface;
    let lan_ifindex = netif::ifindex(lan).map_err(|e| problem("lan.interface", e))?;
    let wan_ifindex = netif::ifindex(wan).map_err(|e| problem("wan.interface", e))?;
    for (key, name) in [("lan.interface", lan), ("wan.interface", wan)] {
        if netif::is_loopback(name) {
            bail!("{}", source.explain(&Problem::new(key, "the loopback interface cannot be a gateway side")));
        }
    }
    let lan_ip = match spec.lan.address {
        Some(ip) => ip,
        None => netif::primary_ipv4(lan).map_err(|e| problem("lan.address", e))?,
    };
    let lan_prefix = match spec.lan.prefix {
        Some(net) => net.trunc(),
        None => {
            let (addr, len) = netif::primary_ipv4_net(lan).map_err(|e| problem("lan.prefix", e))?;
            Ipv4Net::new(addr, len).expect("a prefix length from the kernel").trunc()
        }
    };
    let public_ip = match spec.wan.public_address {
        Some(ip) => ip,
        None => netif::primary_ipv4(wan).map_err(|e| problem("wan.public_address", e))?,
    };
    let addrs = Addresses { lan_ip, lan_prefix, public_ip };
    source.check(spec.check_addresses(&addrs))?;
    let macs = [netif::link_facts(lan_ifindex)?.mac, netif::link_facts(wan_ifindex)?.mac];
    Ok(Resolved { ifindex: [lan_ifindex, wan_ifindex], macs, addrs })
}

/// The dataplane configuration for a spec resolved here with these placements (encoded, as
/// `Placement::encode` gives them): the one place
/// a [`Config`] is made.
pub fn config(spec: &Spec, r: &Resolved, placements: [u16; 2]) -> Config {
    let a = &r.addrs;
    let mut flags = 0;
    for (on, flag) in [
        (spec.nat.hairpin, CFG_F_HAIRPIN),
        (spec.nat.udp_filtering == UdpFiltering::EndpointIndependent, CFG_F_UDP_EIF),
        (spec.dataplane.fast_path, CFG_F_FAST_PATH),
        (spec.wan.public_address.is_none(), CFG_F_PUBLIC_FROM_WAN),
    ] {
        if on {
            flags |= flag;
        }
    }
    let be = |ip: std::net::Ipv4Addr| Ipv4Be::from_octets(ip.octets());
    Config {
        port_min: spec.nat.port_range.min,
        port_max: spec.nat.port_range.max,
        flags,
        timeouts: spec.timeouts,
        ifindex: r.ifindex,
        placement: placements,
        mac: r.macs,
        ..Config::new(be(a.lan_ip), be(a.lan_prefix.network()), be(a.lan_prefix.netmask()), be(a.public_ip))
    }
}

/// The addresses a live configuration uses.
pub fn addresses(cfg: &Config) -> Addresses {
    let len = u32::from(output::ip(cfg.lan_mask)).count_ones() as u8;
    Addresses {
        lan_ip: output::ip(cfg.lan_addr),
        // A mask from a configuration `config` made: its length is 0 to 32.
        lan_prefix: Ipv4Net::new(output::ip(cfg.lan_net), len).unwrap_or_default(),
        public_ip: output::ip(cfg.public_addr),
    }
}
