//! Attaching the dataplane: load, configure, attach and pin, all of it or none of it.

use std::fs;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, TracePoint, Xdp, XdpMode,
        links::FdLink,
        tc::{NlOptions, SchedClassifierLink, TcAttach, TcError, qdisc_add_clsact},
    },
};
use clap::ValueEnum as _;
use hairpin_common::{
    Config,
    consts::{Hook, map_names, prog_names},
    placement::{Ingress, Placement},
};

use super::Source;
use crate::{
    dataplane::{self, PinDir},
    ifcaps::Caps,
    placement,
    spec::{Spec, TcAttachMode, XdpAttachMode},
};

/// What [`bring_up`] attached, for the command to report.
pub struct Attached {
    pub lan: String,
    pub wan: String,
    pub addrs: crate::spec::Addresses,
    pub hairpin: bool,
    pub fast_path: bool,
    pub flow_cache: bool,
    pub udp_filtering: crate::spec::UdpFiltering,
    pub forwards: usize,
    pub pins: std::path::PathBuf,
    /// How the TC programs attached, and why netlink if TCX was not asked for.
    pub tc_attach: TcAttachMode,
    pub tc_why: Option<String>,
    /// Each interface's placement, with what the kernel says of it (as attached).
    pub placements: Vec<(String, Placement)>,
}

impl Attached {
    /// The lines `up` prints.
    pub fn summary(&self) -> Vec<String> {
        let a = &self.addrs;
        let mut out = vec![format!(
            "hairpin up: lan {} ({}, prefix {}), wan {} ({}), hairpin {}, fast path {}, udp filtering {}, {} forwards, pinned at {}",
            self.lan,
            a.lan_ip,
            a.lan_prefix,
            self.wan,
            a.public_ip,
            if self.hairpin { "on" } else { "off" },
            match (self.fast_path, self.flow_cache) {
                (false, _) => "off",
                (true, true) => "on",
                (true, false) => "on (no flow cache)",
            },
            self.udp_filtering.to_possible_value().expect("no skipped variants").get_name(),
            self.forwards,
            self.pins.display()
        )];
        out.push(match (self.tc_attach, &self.tc_why) {
            (TcAttachMode::Netlink, Some(why)) => format!("  tc programs: netlink filters (TCX unavailable: {why})"),
            (TcAttachMode::Netlink, None) => "  tc programs: netlink filters (--tc-attach netlink)".into(),
            _ => "  tc programs: tcx links".into(),
        });
        for (iface, p) in &self.placements {
            out.push(format!("  {}", placement::describe(iface, *p, self.fast_path)));
        }
        out
    }
}

/// Brings the gateway `spec` describes up: resolved and checked first, then loaded, filled
/// (configuration and forwards), attached and pinned, all of it or none of it.
pub fn bring_up(pins: &PinDir, spec: &Spec, source: &Source) -> anyhow::Result<Attached> {
    let (r, mut sides) = prepare(pins, spec, source)?;
    let d = spec.dataplane;
    let (lan, wan) = (spec.lan.interface.as_str(), spec.wan.interface.as_str());
    let mut cfg = super::config(spec, &r, [sides[0].placement.encode(), sides[1].placement.encode()]);
    let mut ebpf = dataplane::load(d.max_flows, d.flow_cache)?;
    fill(&mut ebpf, &cfg, spec, [r.ifindex[0], r.ifindex[1]])?;
    let mut attaching = Attaching { links: Vec::new(), filters: Vec::new(), tc_mode: d.tc_attach, tc_why: None };
    attaching.ingress(&mut ebpf, &mut sides, d.xdp_mode == XdpAttachMode::Native)?;
    (cfg.placement[0], cfg.placement[1]) = (sides[0].placement.encode(), sides[1].placement.encode());
    write_config(&mut ebpf, &cfg)?;
    attaching.egress(&mut ebpf, &sides)?;
    // XDP frames the kernel refuses are counted for stats and run, if it lets us watch.
    if sides.iter().any(|s| s.placement.ingress != Ingress::Tc) {
        match attach_refused(&mut ebpf) {
            Ok(watch) => attaching.links.extend(watch),
            Err(e) => warn!(
                "XDP frames the kernel refuses will not be counted ({e:#}); is tracefs mounted at \
                 /sys/kernel/tracing?"
            ),
        }
    }
    pin_all(pins, &mut ebpf, attaching.links).inspect_err(|_| {
        let _ = pins.remove_all();
    })?;
    // Everything is in place: the netlink filters stay (dropping them would detach them);
    // `down` finds them by program name.
    for f in attaching.filters {
        std::mem::forget(f);
    }
    warn_sysctls(lan, spec.nat.hairpin);
    for s in sides.iter().filter(|s| s.placement.ingress == Ingress::XdpGeneric) {
        warn!(
            "{}: generic XDP cannot see checksums a local sender left to offload; \
             translated packets from such senders may leave with bad checksums (use --mode auto or tc)",
            s.iface
        );
    }
    Ok(Attached {
        lan: lan.into(),
        wan: wan.into(),
        addrs: r.addrs,
        hairpin: spec.nat.hairpin,
        fast_path: d.fast_path,
        flow_cache: d.flow_cache,
        udp_filtering: spec.nat.udp_filtering,
        forwards: spec.forwards.len(),
        pins: pins.root.clone(),
        tc_attach: attaching.tc_mode,
        tc_why: attaching.tc_why,
        placements: sides.iter().map(|s| (s.iface.to_string(), s.placement)).collect(),
    })
}

/// The checks before anything is loaded (nothing up here, bpffs, the spec resolved here, no
/// other programs on the interfaces), and where each side's ingress is to run.
fn prepare<'a>(pins: &PinDir, spec: &'a Spec, source: &Source) -> anyhow::Result<(super::Resolved, [Side<'a>; 2])> {
    if pins.exists() {
        bail!(
            "hairpin is already up here (pins at {}): run `hairpin-ctl down` first, use `apply`, or another --pin-dir",
            pins.root.display()
        );
    }
    pins.check_bpffs()?;
    let r = super::resolve(spec, source)?;
    let d = spec.dataplane;
    let (lan, wan) = (spec.lan.interface.as_str(), spec.wan.interface.as_str());
    for (name, ifindex) in [(lan, r.ifindex[0]), (wan, r.ifindex[1])] {
        crate::netif::refuse_attached(name, ifindex)?;
    }
    let side = |iface, ifindex| -> anyhow::Result<Side> {
        let caps = Caps::probe(iface, ifindex)?;
        Ok(Side { iface, ifindex, placement: placement::choose(&caps, d.mode, d.xdp_mode), caps })
    };
    Ok((r, [side(lan, r.ifindex[0])?, side(wan, r.ifindex[1])?]))
}

/// The configuration, the forwards and the devices the fast path may redirect to, written
/// before anything is attached: the first packet meets all of them.
fn fill(ebpf: &mut Ebpf, cfg: &Config, spec: &Spec, ifindexes: [u32; 2]) -> anyhow::Result<()> {
    write_config(ebpf, cfg)?;
    let public = crate::output::ip(cfg.public_addr);
    super::forwards::fill(ebpf.map_mut(map_names::FORWARDS).context("forward table missing")?, &spec.forwards, public)?;
    // XDP redirects go only to these two, and the dataplane sends into neither unless its
    // placement says the device takes XDP frames.
    let mut devices = DevMapHash::try_from(ebpf.map_mut(map_names::DEVICES).context("device map missing")?)?;
    for ifindex in ifindexes {
        devices.insert(ifindex, ifindex, None, 0).context("filling the fast path's device map")?;
    }
    Ok(())
}

/// The links and filters attached so far. Until pinned (or, for netlink filters, let go of),
/// each lives only as long as this process: an error detaches them.
struct Attaching {
    links: Vec<(&'static str, FdLink)>,
    filters: Vec<SchedClassifierLink>,
    tc_mode: TcAttachMode,
    tc_why: Option<String>,
}

impl Attaching {
    fn keep(&mut self, prog: &'static str, a: Attachment) {
        match a {
            Attachment::Pinned(link) => self.links.push((prog, link)),
            Attachment::Filter(link) => self.filters.push(link),
        }
    }

    /// Both ingress programs; then each side's placement as the kernel says it now.
    fn ingress(&mut self, ebpf: &mut Ebpf, sides: &mut [Side; 2], strict: bool) -> anyhow::Result<()> {
        for (s, hook) in sides.iter_mut().zip([Hook::LanIngress, Hook::WanIngress]) {
            let a = attach_ingress(ebpf, hook, s, strict, &mut self.tc_mode, &mut self.tc_why)
                .with_context(|| format!("attaching ingress to {}", s.iface))?;
            self.keep(dataplane::program(hook, s.placement.ingress), a);
        }
        // A fallback may have changed a placement, and some drivers (virtio-net) say they take
        // XDP frames only once an XDP program is attached to them: asked again now that both
        // ingress programs are, the dataplane sees the final placements.
        for s in sides.iter_mut() {
            s.caps = Caps::probe(s.iface, s.ifindex)?;
            s.placement.xdp_target = placement::xdp_target(&s.caps, s.placement.ingress, s.placement.why);
            s.placement.peer_target = s.caps.peer_target();
        }
        Ok(())
    }

    fn egress(&mut self, ebpf: &mut Ebpf, sides: &[Side; 2]) -> anyhow::Result<()> {
        for (s, hook) in sides.iter().zip([Hook::LanEgress, Hook::WanEgress]) {
            let prog = dataplane::program(hook, Ingress::Tc);
            let a = attach_tc(ebpf, prog, s.ifindex, TcAttachType::Egress, &mut self.tc_mode, &mut self.tc_why)
                .with_context(|| format!("attaching {prog} to {}", s.iface))?;
            self.keep(prog, a);
        }
        Ok(())
    }
}

/// One interface as `up` attaches it.
struct Side<'a> {
    iface: &'a str,
    ifindex: u32,
    caps: Caps,
    placement: Placement,
}

fn write_config(ebpf: &mut Ebpf, cfg: &Config) -> anyhow::Result<()> {
    Array::try_from(ebpf.map_mut(map_names::CONFIG).context("config map missing")?)?
        .set(0, cfg, 0)
        .context("writing the dataplane configuration")
}

/// Attaches `hook`'s ingress program as `side.placement` says. Where native XDP was chosen and
/// will not attach, fails if `strict` (`--xdp-mode native`), else takes the fallback and
/// records it in `side`.
fn attach_ingress(
    ebpf: &mut Ebpf,
    hook: Hook,
    side: &mut Side,
    strict: bool,
    tc_mode: &mut TcAttachMode,
    tc_why: &mut Option<String>,
) -> anyhow::Result<Attachment> {
    let xdp_link = |ebpf: &mut Ebpf, ingress, mode| -> anyhow::Result<FdLink> {
        let prog = dataplane::program(hook, ingress);
        let xdp: &mut Xdp = ebpf.program_mut(prog).context("program missing")?.try_into()?;
        let id = xdp.attach(side.ifindex, mode)?;
        xdp.take_link(id)?
            .try_into()
            .context("the XDP attachment is not a bpf_link (kernel < 5.9?), so it cannot be pinned")
    };
    match side.placement.ingress {
        Ingress::Tc => {
            let prog = dataplane::program(hook, Ingress::Tc);
            attach_tc(ebpf, prog, side.ifindex, TcAttachType::Ingress, tc_mode, tc_why)
        }
        Ingress::XdpGeneric => xdp_link(ebpf, Ingress::XdpGeneric, XdpMode::Skb).map(Attachment::Pinned),
        Ingress::Xdp => match xdp_link(ebpf, Ingress::Xdp, XdpMode::Driver) {
            Ok(link) => Ok(Attachment::Pinned(link)),
            Err(e) if strict => Err(e),
            Err(e) => {
                let fallback = placement::fallback(&side.caps, side.placement);
                warn!("{}: native XDP unavailable ({e:#}); using {}", side.iface, fallback.ingress.name());
                side.placement = fallback;
                attach_ingress(ebpf, hook, side, false, tc_mode, tc_why)
            }
        },
    }
}

/// The tracepoint programs that count XDP frames the kernel refused (see the dataplane's
/// `refused.rs`), attached: all or none.
fn attach_refused(ebpf: &mut Ebpf) -> anyhow::Result<Vec<(&'static str, FdLink)>> {
    let mut links = Vec::new();
    for prog in prog_names::REFUSED {
        let tp: &mut TracePoint = ebpf.program_mut(prog).context("program missing")?.try_into()?;
        let id = tp.attach("xdp", prog).with_context(|| format!("attaching {prog} to the tracepoint xdp:{prog}"))?;
        links.push((prog, tp.take_link(id)?.try_into().context("the tracepoint link cannot be pinned")?));
    }
    Ok(links)
}

/// A program attached: through a bpf_link (XDP, TCX), pinned under the pin directory, or as a
/// netlink TC filter, which stays after this process exits once `up` lets go of it.
enum Attachment {
    Pinned(FdLink),
    Filter(SchedClassifierLink),
}

/// Attaches `prog` at `at` on `ifindex` as `mode` says. In `Auto`, TCX is tried first, and if
/// the kernel refuses it, `mode` becomes `Netlink` (with the reason in `why`) for the rest.
fn attach_tc(
    ebpf: &mut Ebpf,
    prog: &str,
    ifindex: u32,
    at: TcAttachType,
    mode: &mut TcAttachMode,
    why: &mut Option<String>,
) -> anyhow::Result<Attachment> {
    let tc: &mut SchedClassifier = ebpf.program_mut(prog).context("program missing")?.try_into()?;
    if *mode != TcAttachMode::Netlink {
        match tc.attach(ifindex, TcAttach::Tcx { attach_type: at, order: LinkOrder::default() }) {
            Ok(id) => {
                let link = tc.take_link(id)?.try_into().context("the TCX attachment is not a bpf_link")?;
                *mode = TcAttachMode::Tcx;
                return Ok(Attachment::Pinned(link));
            }
            Err(e) if *mode == TcAttachMode::Tcx => return Err(e).context("attaching with TCX (kernel 6.6 and later)"),
            Err(e) => {
                *why = Some(format!("{:#}", anyhow::Error::from(e)));
                *mode = TcAttachMode::Netlink;
            }
        }
    }
    // cls_bpf filters hang off a clsact qdisc, which may be there already (another program's).
    if let Err(e) = qdisc_add_clsact(ifindex) {
        let exists = matches!(&e, TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(e).context("adding a clsact qdisc");
        }
    }
    let id = tc.attach(ifindex, TcAttach::Netlink { parent: at.into(), options: NlOptions::default() })?;
    Ok(Attachment::Filter(tc.take_link(id)?))
}

fn pin_all(pins: &PinDir, ebpf: &mut Ebpf, links: Vec<(&str, FdLink)>) -> anyhow::Result<()> {
    for dir in [&pins.root, &pins.maps(), &pins.links()] {
        fs::create_dir_all(dir).with_context(|| format!("creating {} (is bpffs mounted?)", dir.display()))?;
    }
    for name in map_names::ALL {
        let path = pins.map(name);
        ebpf.map(name)
            .with_context(|| format!("map {name} missing from the object"))?
            .pin(&path)
            .with_context(|| format!("pinning map {}", path.display()))?;
    }
    for (prog, link) in links {
        let path = pins.link(prog);
        link.pin(&path).with_context(|| format!("pinning link {}", path.display()))?;
    }
    Ok(())
}

/// A gateway needs forwarding on, and hairpin traffic leaves the LAN interface it came in on,
/// which makes the kernel send ICMP redirects pointing the client at the server: warn, since
/// changing system settings is the operator's call.
fn warn_sysctls(lan: &str, hairpin: bool) {
    let read = |p: String| fs::read_to_string(p).map(|s| s.trim() == "1").ok();
    if read("/proc/sys/net/ipv4/ip_forward".into()) == Some(false) {
        warn!("net.ipv4.ip_forward is 0: the gateway will not forward translated packets");
    }
    let redirects = |i: &str| read(format!("/proc/sys/net/ipv4/conf/{i}/send_redirects"));
    if hairpin && (redirects("all") == Some(true) || redirects(lan) == Some(true)) {
        warn!(
            "ICMP redirects are on for {lan}: LAN clients may be told to bypass the gateway; \
             set net.ipv4.conf.all.send_redirects=0 and net.ipv4.conf.{lan}.send_redirects=0"
        );
    }
}
