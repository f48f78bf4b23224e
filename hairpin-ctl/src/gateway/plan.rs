//! What moving the live gateway to a new spec takes: typed changes (what an operator is shown),
//! refusals (what needs the dataplane attached again), and the writes [`Plan::apply`] makes.

use std::{collections::BTreeMap, fmt, net::SocketAddrV4};

use hairpin_common::{CFG_F_CT_PRESSURE, Config, placement::Placement};

use super::{
    Resolved,
    forwards::{self, Origin},
};
use crate::{
    dataplane::Maps,
    ifcaps::Caps,
    output, placement,
    spec::{Forward, Spec, TcAttachMode, XdpAttachMode},
};

/// One difference between the live gateway and the spec, as `apply` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A setting's value (`~ key: from -> to`).
    Setting {
        key: String,
        from: String,
        to: String,
    },
    ForwardAdded(Forward),
    ForwardRemoved(Forward),
    ForwardRetargeted {
        was: Forward,
        to: SocketAddrV4,
    },
    /// The file declares a port a runtime forward (`map add`) had: the file's takes it.
    ForwardTakenOver {
        was: forwards::Forward,
        to: SocketAddrV4,
    },
    /// The flows and bindings made for the old addresses go.
    Readdressed,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Setting { key, from, to } => write!(f, "~ {key}: {from} -> {to}"),
            Change::ForwardAdded(fw) => write!(f, "+ forward {fw}"),
            Change::ForwardRemoved(fw) => write!(f, "- forward {fw}"),
            Change::ForwardRetargeted { was, to } => {
                write!(f, "~ forward {} {}: {} -> {to}", was.proto.name(), was.port, was.to)
            }
            Change::ForwardTakenOver { was, to } => write!(
                f,
                "~ forward {} {}: {} (map add) -> {to} (the file's now)",
                was.proto.name(),
                was.public.port(),
                was.to
            ),
            Change::Readdressed => {
                write!(f, "  (the addresses changed: the flows and bindings made for the old ones are removed)")
            }
        }
    }
}

/// A difference that needs the dataplane attached again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: String,
    pub from: String,
    pub to: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Refusal { key, from, to } = self;
        write!(f, "{key}: {from} -> {to} (fixed while up: `hairpin-ctl down` first; the flows are lost)")
    }
}

/// What moving the live dataplane to a new spec takes.
#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub refused: Vec<Refusal>,
    pub(super) config: Option<Config>,
    pub(super) add: Vec<forwards::Forward>,
    /// Forwards replaced in place (another target, or the file's now): new, old.
    pub(super) replace: Vec<(forwards::Forward, forwards::Forward)>,
    pub(super) remove: Vec<forwards::Forward>,
    /// The addresses changed: the flows and bindings made for the old ones go.
    pub(super) flush: bool,
    /// The configuration before the change.
    pub(super) old: Config,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
            && self.config.is_none()
            && self.add.is_empty()
            && self.replace.is_empty()
            && self.remove.is_empty()
    }
}

/// The settings fixed while up that differ between the live spec and `want`: checked before
/// `want` is resolved, so that it is these an operator hears of.
pub fn fixed_differences(have: &Spec, want: &Spec) -> Vec<Refusal> {
    let mut out = Vec::new();
    let (hd, wd) = (have.dataplane, want.dataplane);
    for (key, from, to) in [
        ("lan.interface", have.lan.interface.clone(), want.lan.interface.clone()),
        ("wan.interface", have.wan.interface.clone(), want.wan.interface.clone()),
        ("dataplane.max_flows", hd.max_flows.to_string(), wd.max_flows.to_string()),
        ("dataplane.flow_cache", hd.flow_cache.to_string(), wd.flow_cache.to_string()),
    ] {
        if from != to {
            out.push(Refusal { key: key.into(), from, to });
        }
    }
    if wd.tc_attach != TcAttachMode::Auto && wd.tc_attach != hd.tc_attach {
        out.push(Refusal {
            key: "dataplane.tc_attach".into(),
            from: enum_name(&hd.tc_attach),
            to: enum_name(&wd.tc_attach),
        });
    }
    out
}

/// Compares `want` (resolved as `r`) with the live dataplane (`have`, read by
/// [`super::live::read`]).
pub fn plan(maps: &Maps, have: &Spec, want: &Spec, r: &Resolved) -> anyhow::Result<Plan> {
    let cfg = maps.config()?;
    // The settings fixed while up were refused before `want` was resolved (see `reconcile`).
    let mut p = Plan { refused: moved_ingress(want, r, &cfg)?, old: cfg, ..Plan::default() };
    // Placements stay as attached (a change that would move one was refused above).
    let mut next = super::config(want, r, [cfg.placement[0], cfg.placement[1]]);
    next.flags |= cfg.flags & CFG_F_CT_PRESSURE;
    p.changes = settings(have, want, r, &cfg, &next);
    p.flush = next.public_addr != cfg.public_addr
        || next.lan_addr != cfg.lan_addr
        || (next.lan_net, next.lan_mask) != (cfg.lan_net, cfg.lan_mask);
    if p.flush {
        p.changes.push(Change::Readdressed);
    }
    if next != cfg {
        p.config = Some(next);
    }
    plan_forwards(maps, &mut p, have, want, next.public_addr)?;
    Ok(p)
}

/// Where ingress would run under the wanted modes, against where it runs: a move is refused.
fn moved_ingress(want: &Spec, r: &Resolved, cfg: &Config) -> anyhow::Result<Vec<Refusal>> {
    let wd = want.dataplane;
    let mut out = Vec::new();
    for (key, name, ifindex, code) in [
        ("lan", &want.lan.interface, r.ifindex[0], cfg.placement[0]),
        ("wan", &want.wan.interface, r.ifindex[1], cfg.placement[1]),
    ] {
        let Some(live) = Placement::decode(code) else { continue };
        let caps = Caps::probe(name, ifindex)?;
        let chosen = placement::choose(&caps, wd.mode, wd.xdp_mode);
        // Native XDP that would not attach fell back (to TC, or to generic XDP with --mode
        // xdp): that is where the same settings put it.
        let fell_back = chosen.ingress == hairpin_common::placement::Ingress::Xdp
            && wd.xdp_mode != XdpAttachMode::Native
            && placement::fallback(&caps, chosen).ingress == live.ingress;
        if chosen.ingress != live.ingress && !fell_back {
            out.push(Refusal {
                key: format!("dataplane.mode ({key} ingress)"),
                from: live.ingress.name().into(),
                to: chosen.ingress.name().into(),
            });
        }
    }
    Ok(out)
}

/// The live settings that change, one [`Change`] each (all written in one configuration
/// write).
fn settings(have: &Spec, want: &Spec, r: &Resolved, cfg: &Config, next: &Config) -> Vec<Change> {
    let (hd, wd, ht, wt) = (have.dataplane, want.dataplane, have.timeouts, want.timeouts);
    let all = [
        ("lan.address", show_opt(&have.lan.address), show_opt(&Some(r.addrs.lan_ip))),
        ("lan.prefix", show_opt(&have.lan.prefix), show_opt(&Some(r.addrs.lan_prefix))),
        ("wan.public_address", output::ip(cfg.public_addr).to_string(), r.addrs.public_ip.to_string()),
        ("nat.hairpin", have.nat.hairpin.to_string(), want.nat.hairpin.to_string()),
        ("nat.port_range", have.nat.port_range.to_string(), want.nat.port_range.to_string()),
        ("nat.udp_filtering", enum_name(&have.nat.udp_filtering), enum_name(&want.nat.udp_filtering)),
        ("timeouts.tcp_established", ht.tcp_established.to_string(), wt.tcp_established.to_string()),
        ("timeouts.tcp_transitory", ht.tcp_transitory.to_string(), wt.tcp_transitory.to_string()),
        ("timeouts.udp", ht.udp.to_string(), wt.udp.to_string()),
        ("timeouts.icmp", ht.icmp.to_string(), wt.icmp.to_string()),
        ("dataplane.fast_path", hd.fast_path.to_string(), wd.fast_path.to_string()),
    ];
    let setting = |key: &str, from: String, to: String| Change::Setting { key: key.into(), from, to };
    let mut out: Vec<Change> = all.into_iter().filter(|(_, a, b)| a != b).map(|(k, a, b)| setting(k, a, b)).collect();
    if have.wan.public_address.is_some() != want.wan.public_address.is_some() {
        let follows = |s: &Spec| if s.wan.public_address.is_none() { "follows the WAN interface" } else { "fixed" };
        out.push(setting("wan.public_address", follows(have).into(), follows(want).into()));
    }
    for (name, from, to) in
        [(&want.lan.interface, cfg.mac[0], next.mac[0]), (&want.wan.interface, cfg.mac[1], next.mac[1])]
    {
        if from != to {
            out.push(setting(&format!("{name} MAC address"), output::mac(from), output::mac(to)));
        }
    }
    out
}

/// Forwards, keyed by protocol and port, on the public address in use after the change: the
/// file's as `want` declares them; runtime ones stay, moved with the public address, unless the
/// file declares their port (see [`forwards`]).
fn plan_forwards(
    maps: &Maps,
    p: &mut Plan,
    have: &Spec,
    want: &Spec,
    new_public: hairpin_common::Ipv4Be,
) -> anyhow::Result<()> {
    let (old_ip, new_ip) = (output::ip(p.old.public_addr), output::ip(new_public));
    let moved = old_ip != new_ip;
    let by_port = |s: &Spec| -> BTreeMap<_, Forward> { s.forwards.iter().map(|f| ((f.proto, f.port), *f)).collect() };
    let (have_fwd, want_fwd) = (by_port(have), by_port(want));
    let runtime: BTreeMap<_, forwards::Forward> = forwards::list(maps)?
        .into_iter()
        .filter(|f| f.origin == Origin::Runtime && *f.public.ip() == old_ip)
        .map(|f| ((f.proto, f.public.port()), f))
        .collect();
    for (k, f) in &want_fwd {
        let new = forwards::Forward::declared(f, new_ip);
        let old = match (have_fwd.get(k), runtime.get(k)) {
            (Some(old), _) => {
                if old.to != f.to {
                    p.changes.push(Change::ForwardRetargeted { was: *old, to: f.to });
                }
                Some(forwards::Forward::declared(old, old_ip))
            }
            (None, Some(rt)) => {
                p.changes.push(Change::ForwardTakenOver { was: *rt, to: f.to });
                Some(*rt)
            }
            (None, None) => {
                p.changes.push(Change::ForwardAdded(*f));
                None
            }
        };
        match old {
            Some(old) if !moved => {
                if old != new {
                    p.replace.push((new, old));
                }
            }
            _ => p.add.push(new),
        }
    }
    for (k, f) in &have_fwd {
        if !want_fwd.contains_key(k) {
            p.changes.push(Change::ForwardRemoved(*f));
        }
        if !want_fwd.contains_key(k) || moved {
            p.remove.push(forwards::Forward::declared(f, old_ip));
        }
    }
    for (k, rt) in runtime.iter().filter(|_| moved) {
        if !want_fwd.contains_key(k) {
            p.add.push(rt.moved_to(new_ip));
        }
        p.remove.push(*rt);
    }
    check_held(maps, &p.add)
}

/// Refuses forwards to be added on a public port a LAN host's binding holds.
fn check_held(maps: &Maps, add: &[forwards::Forward]) -> anyhow::Result<()> {
    for f in add {
        forwards::check_not_held(maps, f)
            .map_err(|e| anyhow::Error::from(e).context(format!("forward {}", f.spec())))?;
    }
    Ok(())
}

/// A setting's value as the file and the flags spell it.
fn enum_name<T: clap::ValueEnum>(v: &T) -> String {
    v.to_possible_value().map_or_else(String::new, |p| p.get_name().to_string())
}

fn show_opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("(default)".into(), T::to_string)
}
