//! `hairpin-ctl up`: load, configure, attach and pin; all of it or none of it.

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
use hairpin_common::{
    Config, Ipv4Be,
    consts::{Hook, map_names, prog_names},
    placement::{Ingress, Placement},
};

use clap::ValueEnum as _;

use crate::{
    cli::{Ipv4Net, UpArgs, XdpAttachMode},
    dataplane::{self, Mode, PinDir, TcAttachMode},
    ifcaps::Caps,
    netif, placement,
};

pub fn run(pins: &PinDir, a: &UpArgs) -> anyhow::Result<()> {
    if pins.exists() {
        bail!(
            "hairpin is already up here (pins at {}): run `hairpin-ctl down` first, or use another --pin-dir",
            pins.root.display()
        );
    }
    check_bpffs(pins)?;
    if a.lan == a.wan {
        bail!("--lan and --wan are both '{}': they must be different interfaces", a.lan);
    }
    if a.mode == Mode::Tc && a.xdp_mode != XdpAttachMode::Auto {
        bail!("--mode tc attaches no XDP: drop --xdp-mode, or use --mode xdp");
    }
    let lan_ifindex = netif::ifindex(&a.lan).context("--lan")?;
    let wan_ifindex = netif::ifindex(&a.wan).context("--wan")?;
    let lan_ip = match a.lan_ip {
        Some(ip) => ip,
        None => netif::primary_ipv4(&a.lan).context("--lan-ip")?,
    };
    let lan_prefix = match a.lan_prefix {
        Some(net) => net,
        None => {
            let (addr, len) = netif::primary_ipv4_net(&a.lan).context("--lan-prefix")?;
            Ipv4Net::new(addr, len)
        }
    };
    let public_ip = match a.public_ip {
        Some(ip) => ip,
        None => netif::primary_ipv4(&a.wan).context("--public-ip")?,
    };
    let lan_caps = Caps::probe(&a.lan, lan_ifindex)?;
    let wan_caps = Caps::probe(&a.wan, wan_ifindex)?;
    let mut sides = [
        Side {
            iface: &a.lan,
            ifindex: lan_ifindex,
            placement: placement::choose(&lan_caps, a.mode, a.xdp_mode),
            caps: lan_caps,
        },
        Side {
            iface: &a.wan,
            ifindex: wan_ifindex,
            placement: placement::choose(&wan_caps, a.mode, a.xdp_mode),
            caps: wan_caps,
        },
    ];
    let mut cfg = Config {
        lan_addr: Ipv4Be::from_octets(lan_ip.octets()),
        public_addr: Ipv4Be::from_octets(public_ip.octets()),
        port_min: a.port_range.min,
        port_max: a.port_range.max,
        flags: a.config_flags(),
        wan_ifindex,
        timeouts: a.timeouts.to_timeouts(),
        lan_net: Ipv4Be::from_octets(lan_prefix.addr.octets()),
        lan_mask: Ipv4Be::from_octets(lan_prefix.mask().octets()),
        lan_ifindex,
        lan_placement: sides[0].placement.encode(),
        wan_placement: sides[1].placement.encode(),
    };

    let mut ebpf = dataplane::load(a.max_flows, !a.no_flow_cache && !a.no_fast_path)?;
    write_config(&mut ebpf, &cfg)?;
    // XDP redirects go only to these two, and the dataplane sends into neither unless its
    // placement says the device takes XDP frames.
    let mut devices = DevMapHash::try_from(ebpf.map_mut(map_names::DEVICES).context("device map missing")?)?;
    for ifindex in [lan_ifindex, wan_ifindex] {
        devices.insert(ifindex, ifindex, None, 0).context("filling the fast path's device map")?;
    }
    // Until pinned (or, for netlink filters, let go of), each link lives only as long as this
    // process: an error below detaches it.
    let (mut links, mut filters) = (Vec::new(), Vec::new());
    let (mut tc_mode, mut tc_why) = (a.tc_attach, None);
    for (side, hook) in [(0, Hook::LanIngress), (1, Hook::WanIngress)] {
        let s = &mut sides[side];
        let strict = a.xdp_mode == XdpAttachMode::Native;
        match attach_ingress(&mut ebpf, hook, s, strict, &mut tc_mode, &mut tc_why)
            .with_context(|| format!("attaching ingress to {}", s.iface))?
        {
            Attached::Pinned(link) => links.push((dataplane::program(hook, s.placement.ingress), link)),
            Attached::Filter(link) => filters.push(link),
        }
    }
    // A fallback may have changed a placement: the dataplane must see the final ones.
    (cfg.lan_placement, cfg.wan_placement) = (sides[0].placement.encode(), sides[1].placement.encode());
    write_config(&mut ebpf, &cfg)?;
    for (side, hook) in [(0, Hook::LanEgress), (1, Hook::WanEgress)] {
        let prog = dataplane::program(hook, Ingress::Tc);
        match attach_tc(&mut ebpf, prog, sides[side].ifindex, TcAttachType::Egress, &mut tc_mode, &mut tc_why)
            .with_context(|| format!("attaching {prog} to {}", sides[side].iface))?
        {
            Attached::Pinned(link) => links.push((prog, link)),
            Attached::Filter(link) => filters.push(link),
        }
    }
    // XDP frames the kernel refuses are counted for stats and run, if it lets us watch.
    if sides.iter().any(|s| s.placement.ingress != Ingress::Tc) {
        match attach_refused(&mut ebpf) {
            Ok(watch) => links.extend(watch),
            Err(e) => eprintln!(
                "warning: XDP frames the kernel refuses will not be counted ({e:#}); is tracefs mounted at \
                 /sys/kernel/tracing?"
            ),
        }
    }
    pin_all(pins, &mut ebpf, links).inspect_err(|_| {
        let _ = pins.remove_all();
    })?;
    // Everything is in place: the netlink filters stay (dropping them would detach them);
    // `down` finds them by program name.
    for f in filters {
        std::mem::forget(f);
    }

    warn_sysctls(&a.lan, !a.no_hairpin);
    println!(
        "hairpin up: lan {} ({lan_ip}, prefix {lan_prefix}), wan {} ({public_ip}), hairpin {}, fast path {}, udp filtering {}, pinned at {}",
        a.lan,
        a.wan,
        if a.no_hairpin { "off" } else { "on" },
        match (a.no_fast_path, a.no_flow_cache) {
            (true, _) => "off",
            (false, false) => "on",
            (false, true) => "on (no flow cache)",
        },
        a.udp_filtering.to_possible_value().expect("no skipped variants").get_name(),
        pins.root.display()
    );
    match (tc_mode, &tc_why) {
        (TcAttachMode::Netlink, Some(why)) => println!("  tc programs: netlink filters (TCX unavailable: {why})"),
        (TcAttachMode::Netlink, None) => println!("  tc programs: netlink filters (--tc-attach netlink)"),
        _ => println!("  tc programs: tcx links"),
    }
    for s in &sides {
        println!("  {}", placement::describe(s.iface, s.placement, !a.no_fast_path));
        if s.placement.ingress == Ingress::XdpGeneric {
            eprintln!(
                "warning: {}: generic XDP cannot see checksums a local sender left to offload; \
                 translated packets from such senders may leave with bad checksums (use --mode auto or tc)",
                s.iface
            );
        }
    }
    Ok(())
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
) -> anyhow::Result<Attached> {
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
        Ingress::XdpGeneric => xdp_link(ebpf, Ingress::XdpGeneric, XdpMode::Skb).map(Attached::Pinned),
        Ingress::Xdp => match xdp_link(ebpf, Ingress::Xdp, XdpMode::Driver) {
            Ok(link) => Ok(Attached::Pinned(link)),
            Err(e) if strict => Err(e),
            Err(e) => {
                let fallback = placement::fallback(&side.caps, side.placement);
                eprintln!("warning: {}: native XDP unavailable ({e:#}); using {}", side.iface, fallback.ingress.name());
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
enum Attached {
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
) -> anyhow::Result<Attached> {
    let tc: &mut SchedClassifier = ebpf.program_mut(prog).context("program missing")?.try_into()?;
    if *mode != TcAttachMode::Netlink {
        match tc.attach(ifindex, TcAttach::Tcx { attach_type: at, order: LinkOrder::default() }) {
            Ok(id) => {
                let link = tc.take_link(id)?.try_into().context("the TCX attachment is not a bpf_link")?;
                *mode = TcAttachMode::Tcx;
                return Ok(Attached::Pinned(link));
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
    Ok(Attached::Filter(tc.take_link(id)?))
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
        eprintln!("warning: net.ipv4.ip_forward is 0: the gateway will not forward translated packets");
    }
    let redirects = |i: &str| read(format!("/proc/sys/net/ipv4/conf/{i}/send_redirects"));
    if hairpin && (redirects("all") == Some(true) || redirects(lan) == Some(true)) {
        eprintln!(
            "warning: ICMP redirects are on for {lan}: LAN clients may be told to bypass the gateway; \
             set net.ipv4.conf.all.send_redirects=0 and net.ipv4.conf.{lan}.send_redirects=0"
        );
    }
}

/// Pins only work on a bpf filesystem; say so plainly, before anything is loaded or attached.
fn check_bpffs(pins: &PinDir) -> anyhow::Result<()> {
    use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
    let parent = pins.root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    match statfs(parent) {
        Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC => Ok(()),
        Ok(_) => bail!(
            "{} is not on a bpf filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`) or choose --pin-dir under one",
            parent.display()
        ),
        Err(e) => bail!("--pin-dir {}: {}: {e}", pins.root.display(), parent.display()),
    }
}
