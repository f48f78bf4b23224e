//! A [`Spec`] against this machine and the live dataplane: resolving its interfaces and
//! addresses, the one place a dataplane [`Config`] is made from it, reading the live
//! configuration back as a spec (`show`), and the plan that moves the live dataplane to a new
//! spec without a moment where a forward is missing or doubled (`apply`, `run`).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use hairpin_common::{
    CFG_F_CT_PRESSURE, CFG_F_FAST_PATH, CFG_F_HAIRPIN, CFG_F_PUBLIC_FROM_WAN, CFG_F_UDP_EIF, Config, Endpoint, Ipv4Be,
    MappingKey, PortBe,
    consts::{map_names, prog_names},
    placement::{Ingress, Placement, Why},
};
use ipnet::Ipv4Net;

use crate::{
    dataplane::{Maps, PinDir},
    expire,
    ifcaps::Caps,
    netif, output, placement,
    spec::{Addresses, Forward, Mode, Problem, Spec, TcAttachMode, UdpFiltering, XdpAttachMode},
};

/// Where a spec came from, to point at the culprit of a problem: a flag, or a file's line.
pub enum Origin {
    Flags,
    File {
        path: PathBuf,
        text: String,
    },
    /// The live dataplane overlaid with flags (`run` adopting).
    Live,
}

impl Origin {
    /// Reads and checks a file.
    pub fn load(path: PathBuf) -> anyhow::Result<(Spec, Origin)> {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let spec = Spec::parse(&text).map_err(|e| anyhow::anyhow!("{}{e}", path.display()))?;
        Ok((spec, Origin::File { path, text }))
    }

    /// One line naming the flag or the file, line and key.
    pub fn explain(&self, p: &Problem) -> String {
        match self {
            Origin::File { path, text } => match crate::spec::key_line(text, &p.key) {
                Some(line) => format!("{}:{line}: {}: {}", path.display(), p.key, p.what),
                None => format!("{}: {}: {}", path.display(), p.key, p.what),
            },
            Origin::Flags | Origin::Live => format!("{}: {}", flag_of(&p.key), p.what),
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

/// The command-line flag that sets a spec key.
fn flag_of(key: &str) -> String {
    let flag = match key {
        "lan.interface" => "--lan",
        "wan.interface" => "--wan",
        "lan.address" => "--lan-ip",
        "lan.prefix" => "--lan-prefix",
        "wan.public_address" => "--public-ip",
        "nat.hairpin" => "--no-hairpin",
        "nat.port_range" => "--port-range",
        "nat.udp_filtering" => "--udp-filtering",
        "dataplane.mode" => "--mode",
        "dataplane.xdp_mode" => "--xdp-mode",
        "dataplane.tc_attach" => "--tc-attach",
        "dataplane.fast_path" => "--no-fast-path",
        "dataplane.flow_cache" => "--no-flow-cache",
        "dataplane.max_flows" => "--max-flows",
        k if k.starts_with("timeouts.") => return format!("--{}-timeout", k[9..].replace('_', "-")),
        k => return k.to_string(),
    };
    flag.to_string()
}

/// A spec on this machine: its interfaces' indexes and the addresses it resolves to.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub lan_ifindex: u32,
    pub wan_ifindex: u32,
    /// The interfaces' Ethernet addresses (see `Config::addressed_to_us`).
    pub macs: [[u8; 6]; 2],
    pub addrs: Addresses,
}

/// Finds the interfaces and fills the addresses the spec leaves to them; then checks the
/// addresses (see [`Spec::check_addresses`]).
pub fn resolve(spec: &Spec, origin: &Origin) -> anyhow::Result<Resolved> {
    origin.check(spec.check())?;
    let problem =
        |key: &str, e: anyhow::Error| anyhow::anyhow!("{}", origin.explain(&Problem::new(key, format!("{e:#}"))));
    let lan = &spec.lan.interface;
    let wan = &spec.wan.interface;
    let lan_ifindex = netif::ifindex(lan).map_err(|e| problem("lan.interface", e))?;
    let wan_ifindex = netif::ifindex(wan).map_err(|e| problem("wan.interface", e))?;
    for (key, name) in [("lan.interface", lan), ("wan.interface", wan)] {
        if netif::is_loopback(name) {
            bail!("{}", origin.explain(&Problem::new(key, "the loopback interface cannot be a gateway side")));
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
    origin.check(spec.check_addresses(&addrs))?;
    let macs = [netif::link_facts(lan_ifindex)?.mac, netif::link_facts(wan_ifindex)?.mac];
    Ok(Resolved { lan_ifindex, wan_ifindex, macs, addrs })
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
    Config {
        lan_addr: Ipv4Be::from_octets(a.lan_ip.octets()),
        public_addr: Ipv4Be::from_octets(a.public_ip.octets()),
        port_min: spec.nat.port_range.min,
        port_max: spec.nat.port_range.max,
        flags,
        wan_ifindex: r.wan_ifindex,
        timeouts: spec.timeouts,
        lan_net: Ipv4Be::from_octets(a.lan_prefix.network().octets()),
        lan_mask: Ipv4Be::from_octets(a.lan_prefix.netmask().octets()),
        lan_ifindex: r.lan_ifindex,
        lan_placement: placements[0],
        wan_placement: placements[1],
        lan_mac: r.macs[0],
        wan_mac: r.macs[1],
    }
}

/// A forward's mapping-table entry on the public address `public`.
pub fn mapping(f: &Forward, public: Ipv4Be) -> (MappingKey, Endpoint) {
    let key = MappingKey::new(f.proto.number(), Endpoint::new(public, PortBe::from_host(f.port)));
    (key, Endpoint::new(Ipv4Be::from_octets(f.to.ip().octets()), PortBe::from_host(f.to.port())))
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

/// The live dataplane as a spec: what `show` prints, and what `apply` and `run` compare with.
/// Keys that only pick a default (`mode = "auto"`) read back as what they chose where the
/// placements say so; addresses read back as in use.
pub fn live(pins: &PinDir, maps: &Maps) -> anyhow::Result<Spec> {
    let cfg = maps.config()?;
    let name = |ifindex| netif::name(ifindex).unwrap_or_else(|| format!("ifindex-{ifindex}"));
    let mut spec = Spec::new(&name(cfg.lan_ifindex), &name(cfg.wan_ifindex));
    let addrs = addresses(&cfg);
    spec.lan.address = Some(addrs.lan_ip);
    spec.lan.prefix = Some(addrs.lan_prefix);
    if cfg.flags & CFG_F_PUBLIC_FROM_WAN == 0 {
        spec.wan.public_address = Some(output::ip(cfg.public_addr));
    }
    spec.nat.hairpin = cfg.hairpin();
    spec.nat.port_range = crate::spec::PortRange { min: cfg.port_min, max: cfg.port_max };
    spec.nat.udp_filtering = match cfg.udp_endpoint_independent_filtering() {
        true => UdpFiltering::EndpointIndependent,
        false => UdpFiltering::AddressAndPortDependent,
    };
    spec.timeouts = cfg.timeouts;
    let d = &mut spec.dataplane;
    d.fast_path = cfg.fast_path();
    let info = |name: &str| {
        let path = pins.map(name);
        aya::maps::MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))
    };
    // The loader gives the flow cache one unused slot when it is off, and conntrack two entries
    // per flow.
    d.flow_cache = info(map_names::FLOW_CACHE)?.max_entries() > 1;
    d.max_flows = info(map_names::CONNTRACK)?.max_entries() / 2;
    d.tc_attach = if pins.link(prog_names::TC_LAN).exists() { TcAttachMode::Tcx } else { TcAttachMode::Netlink };
    let placements = [Placement::decode(cfg.lan_placement), Placement::decode(cfg.wan_placement)];
    let placed: Vec<Placement> = placements.into_iter().flatten().collect();
    let all = |f: &dyn Fn(&Placement) -> bool| !placed.is_empty() && placed.iter().all(f);
    let any = |f: &dyn Fn(&Placement) -> bool| placed.iter().any(f);
    (d.mode, d.xdp_mode) = if any(&|p| p.why == Why::ModeTc) {
        (Mode::Tc, XdpAttachMode::Auto)
    } else if all(&|p| p.why == Why::Forced && p.ingress == Ingress::XdpGeneric) {
        (Mode::Auto, XdpAttachMode::Generic)
    } else if any(&|p| p.why == Why::Forced) {
        // `--mode xdp` (native where it attached, generic where it fell back).
        (Mode::Xdp, XdpAttachMode::Auto)
    } else {
        (Mode::Auto, XdpAttachMode::Auto)
    };
    let mut forwards = Vec::new();
    for entry in maps.mappings.iter() {
        let (k, v) = entry.context("reading the mappings")?;
        let Some(proto) = crate::cli::Proto::from_number(k.proto) else { continue };
        if k.addr != cfg.public_addr {
            continue;
        }
        forwards.push(Forward { proto, port: k.port.host(), to: output::endpoint(v) });
    }
    forwards.sort_by_key(|f| (f.proto.name(), f.port));
    spec.forwards = forwards;
    Ok(spec)
}

/// What moving the live dataplane to a new spec takes.
#[derive(Debug, Default)]
pub struct Plan {
    /// The difference, one line each: `+` added, `-` removed, `~` changed.
    pub lines: Vec<String>,
    /// Differences that need the dataplane attached again, one line each.
    pub refused: Vec<String>,
    config: Option<Config>,
    add: Vec<(MappingKey, Endpoint)>,
    retarget: Vec<(MappingKey, Endpoint, Endpoint)>,
    remove: Vec<MappingKey>,
    /// The addresses changed: the flows and bindings made for the old ones go.
    flush: bool,
    /// The configuration before the change.
    old: Config,
}

/// The settings fixed while up that differ between the live spec and `want`, one line each:
/// checked before `want` is resolved, so that it is these an operator hears of.
pub fn fixed_differences(have: &Spec, want: &Spec) -> Vec<String> {
    let mut out = Vec::new();
    let (hd, wd) = (have.dataplane, want.dataplane);
    for (key, from, to) in [
        ("lan.interface", have.lan.interface.clone(), want.lan.interface.clone()),
        ("wan.interface", have.wan.interface.clone(), want.wan.interface.clone()),
        ("dataplane.max_flows", hd.max_flows.to_string(), wd.max_flows.to_string()),
        ("dataplane.flow_cache", hd.flow_cache.to_string(), wd.flow_cache.to_string()),
    ] {
        if from != to {
            out.push(refusal(key, &from, &to));
        }
    }
    if wd.tc_attach != TcAttachMode::Auto && wd.tc_attach != hd.tc_attach {
        out.push(refusal("dataplane.tc_attach", &enum_name(&hd.tc_attach), &enum_name(&wd.tc_attach)));
    }
    out
}

fn refusal(key: &str, from: &str, to: &str) -> String {
    format!("{key}: {from} -> {to} (fixed while up: `hairpin-ctl down` first; the flows are lost)")
}

/// Compares `want` (resolved as `r`) with the live dataplane (`have`, read by [`live`]).
pub fn plan(maps: &Maps, have: &Spec, want: &Spec, r: &Resolved) -> anyhow::Result<Plan> {
    let cfg = maps.config()?;
    let mut p = Plan { refused: fixed_differences(have, want), old: cfg, ..Plan::default() };
    let (hd, wd) = (have.dataplane, want.dataplane);
    let mut refuse = |key: &str, from: String, to: String| p.refused.push(refusal(key, &from, &to));
    // Where ingress would run now under the wanted modes, against where it runs.
    for (key, name, ifindex, code) in [
        ("lan", &want.lan.interface, r.lan_ifindex, cfg.lan_placement),
        ("wan", &want.wan.interface, r.wan_ifindex, cfg.wan_placement),
    ] {
        let Some(live) = Placement::decode(code) else { continue };
        let caps = Caps::probe(name, ifindex)?;
        let chosen = placement::choose(&caps, wd.mode, wd.xdp_mode);
        // Native XDP that would not attach fell back (to TC, or to generic XDP with --mode
        // xdp): that is where the same settings put it.
        let fell_back = chosen.ingress == Ingress::Xdp
            && wd.xdp_mode != XdpAttachMode::Native
            && placement::fallback(&caps, chosen).ingress == live.ingress;
        let same = chosen.ingress == live.ingress || fell_back;
        if !same {
            refuse(
                &format!("dataplane.mode ({key} ingress)"),
                live.ingress.name().to_string(),
                chosen.ingress.name().to_string(),
            );
        }
    }

    // Live settings: one configuration write.
    // Placements stay as attached (a change that would move one was refused above).
    let mut next = config(want, r, [cfg.lan_placement, cfg.wan_placement]);
    next.flags |= cfg.flags & CFG_F_CT_PRESSURE;
    let changes = [
        ("lan.address", show_opt(&have.lan.address), show_opt(&Some(r.addrs.lan_ip))),
        ("lan.prefix", show_opt(&have.lan.prefix), show_opt(&Some(r.addrs.lan_prefix))),
        ("wan.public_address", output::ip(cfg.public_addr).to_string(), r.addrs.public_ip.to_string()),
        ("nat.hairpin", have.nat.hairpin.to_string(), want.nat.hairpin.to_string()),
        ("nat.port_range", have.nat.port_range.to_string(), want.nat.port_range.to_string()),
        ("nat.udp_filtering", enum_name(&have.nat.udp_filtering), enum_name(&want.nat.udp_filtering)),
        (
            "timeouts.tcp_established",
            have.timeouts.tcp_established.to_string(),
            want.timeouts.tcp_established.to_string(),
        ),
        ("timeouts.tcp_transitory", have.timeouts.tcp_transitory.to_string(), want.timeouts.tcp_transitory.to_string()),
        ("timeouts.udp", have.timeouts.udp.to_string(), want.timeouts.udp.to_string()),
        ("timeouts.icmp", have.timeouts.icmp.to_string(), want.timeouts.icmp.to_string()),
        ("dataplane.fast_path", hd.fast_path.to_string(), wd.fast_path.to_string()),
    ];
    for (key, from, to) in changes {
        if from != to {
            p.lines.push(format!("~ {key}: {from} -> {to}"));
        }
    }
    if have.wan.public_address.is_some() != want.wan.public_address.is_some() {
        let follows = |s: &Spec| if s.wan.public_address.is_none() { "follows the WAN interface" } else { "fixed" };
        p.lines.push(format!("~ wan.public_address: {} -> {}", follows(have), follows(want)));
    }
    p.flush = next.public_addr != cfg.public_addr
        || next.lan_addr != cfg.lan_addr
        || (next.lan_net, next.lan_mask) != (cfg.lan_net, cfg.lan_mask);
    for (name, from, to) in
        [(&want.lan.interface, cfg.lan_mac, next.lan_mac), (&want.wan.interface, cfg.wan_mac, next.wan_mac)]
    {
        if from != to {
            p.lines.push(format!("~ {name} MAC address: {} -> {}", output::mac(from), output::mac(to)));
        }
    }
    if p.flush {
        p.lines.push("  (the addresses changed: the flows and bindings made for the old ones are removed)".into());
    }
    if next != cfg {
        p.config = Some(next);
    }

    // Forwards: keyed by protocol and port on the public address in use after the change.
    let old_public = cfg.public_addr;
    let new_public = next.public_addr;
    let have_fwd: std::collections::BTreeMap<_, _> =
        have.forwards.iter().map(|f| ((f.proto.name(), f.port), f)).collect();
    let want_fwd: std::collections::BTreeMap<_, _> =
        want.forwards.iter().map(|f| ((f.proto.name(), f.port), f)).collect();
    for (k, f) in &want_fwd {
        match have_fwd.get(k) {
            None => p.lines.push(format!("+ forward {f}")),
            Some(old) if old.to != f.to => p.lines.push(format!("~ forward {} {}: {} -> {}", k.0, k.1, old.to, f.to)),
            Some(_) => {}
        }
        let (key, target) = mapping(f, new_public);
        match have_fwd.get(k) {
            Some(old) if new_public == old_public && old.to != f.to => {
                p.retarget.push((key, target, mapping(old, old_public).1))
            }
            Some(_) if new_public == old_public => {}
            _ => {
                if let Ok(b) = maps.bound_ports.get(&key, 0) {
                    bail!(
                        "forward {f}: public {} port {} is held by {}'s masquerade binding; pick another port, \
                         or release it with `hairpin-ctl flows flush`",
                        f.proto.name(),
                        f.port,
                        output::endpoint(b)
                    );
                }
                p.add.push((key, target));
            }
        }
    }
    for (k, f) in &have_fwd {
        if !want_fwd.contains_key(k) {
            p.lines.push(format!("- forward {f}"));
            p.remove.push(mapping(f, old_public).0);
        } else if new_public != old_public {
            p.remove.push(mapping(f, old_public).0);
        }
    }
    Ok(p)
}

/// A setting's value as the file and the flags spell it.
fn enum_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value().map_or_else(String::new, |p| p.get_name().to_string())
}

fn show_opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("(default)".into(), T::to_string)
}

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct Applied {
    pub flows_removed: usize,
    /// The original entries of the flows removed.
    pub removed: Vec<(hairpin_common::FlowKey, hairpin_common::CtEntry)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.config.is_none() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Moves the dataplane: new forwards go in first and retargeted ones are replaced in place
    /// (each one atomic), then the configuration is written, and only then do removed forwards
    /// go, with their flows. A failure before the configuration write undoes what was done.
    pub fn apply(&self, maps: &mut Maps) -> anyhow::Result<Applied> {
        if !self.refused.is_empty() {
            bail!("{}", self.refused[0]);
        }
        let mut added = Vec::new();
        let mut retargeted = Vec::new();
        let undo = |maps: &mut Maps, added: &[MappingKey], retargeted: &[(MappingKey, Endpoint)]| {
            for k in added {
                let _ = maps.mappings.remove(k);
            }
            for (k, old) in retargeted {
                let _ = maps.mappings.insert(k, old, 0);
            }
        };
        for (key, target) in &self.add {
            if let Err(e) = maps.add_mapping(key, target) {
                undo(maps, &added, &retargeted);
                return Err(anyhow::Error::from(e)).context("adding a forward (nothing was changed)");
            }
            added.push(*key);
        }
        for (key, target, old) in &self.retarget {
            if let Err(e) = maps.mappings.insert(key, target, 0) {
                undo(maps, &added, &retargeted);
                return Err(e).context("changing a forward's target (nothing was changed)");
            }
            retargeted.push((*key, *old));
        }
        if let Some(cfg) = &self.config
            && let Err(e) = maps.replace_config(&self.old, cfg)
        {
            undo(maps, &added, &retargeted);
            return Err(e).context("writing the configuration (nothing was changed)");
        }
        let mut applied = Applied::default();
        for key in &self.remove {
            let _ = maps.mappings.remove(key);
        }
        // From here the new settings are live: a failure leaves them so, and says it.
        let after = "the new settings are live, but removing what they replace failed";
        // Flows made by removed forwards, or by retargeted ones towards their old targets, or
        // (addresses changed) made for the old addresses.
        let (flows, lone) = expire::snapshot(maps).context(after)?;
        let old = &self.old;
        let new = self.config.unwrap_or(*old);
        let stale_addr = |a: Ipv4Be| {
            (a == old.public_addr && a != new.public_addr)
                || (a == old.lan_addr && a != new.lan_addr)
                || (old.in_lan(a) && !new.in_lan(a))
        };
        let stale = |k: &hairpin_common::FlowKey| stale_addr(k.src) || stale_addr(k.dst);
        let gone: Vec<_> = flows
            .iter()
            .filter(|f| {
                (self.flush && (stale(&f.orig_key) || stale(&f.orig.xlate)))
                    || self.remove.iter().any(|k| f.made_by(k))
                    || self.retarget.iter().any(|(k, _, old)| f.made_by(k) && f.orig.xlate.dst_ep() == *old)
            })
            .collect();
        applied.flows_removed = gone.len();
        applied.removed = gone.iter().map(|f| (f.orig_key, f.orig)).collect();
        let lone: Vec<_> = lone.into_iter().filter(|(k, e)| self.flush && (stale(k) || stale(&e.xlate))).collect();
        maps.remove_entries(gone.iter().flat_map(|f| f.entries()).chain(lone)).context(after)?;
        if self.flush && new.public_addr != old.public_addr {
            // Ports bound on the old public address, and the bindings that hold them; those
            // the dataplane makes on the new one meanwhile stay.
            let bound: Vec<(MappingKey, Endpoint)> =
                maps.bound_ports.iter().collect::<Result<_, _>>().context(after)?;
            for (claim, internal) in bound.into_iter().filter(|(k, _)| k.addr == old.public_addr) {
                let internal = MappingKey::new(claim.proto, internal);
                if maps.bindings.get(&internal, 0).is_ok_and(|b| b.port == claim.port) {
                    let _ = maps.bindings.remove(&internal);
                }
                let _ = maps.bound_ports.remove(&claim);
            }
            crate::dataplane::flows_removed(&mut maps.ct_gen).context(after)?;
        }
        Ok(applied)
    }
}
