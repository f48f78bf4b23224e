//! `hairpin-ctl up`: load, configure, attach and pin; all of it or none of it.

use std::{fs, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, TracePoint, Xdp, XdpMode,
        links::FdLink,
        tc::{NlOptions, SchedClassifierLink, TcAttach, TcError, qdisc_add_clsact},
    },
};
use clap::Args;
use hairpin_common::{
    Config, Endpoint, MappingKey,
    consts::{Hook, map_names, prog_names},
    placement::{Ingress, Placement},
};

use clap::ValueEnum as _;

use ipnet::Ipv4Net;

use crate::{
    dataplane::{self, PinDir},
    gateway::{self, Origin},
    ifcaps::Caps,
    placement,
    spec::{self, Mode, PortRange, Spec, TcAttachMode, UdpFiltering, XdpAttachMode},
};

/// The gateway's settings as flags (or a file). Flags not given take the defaults named in
/// their help, or, for `run` adopting a pinned dataplane, keep the pinned values.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Read the whole gateway (settings and forwards) from this TOML file, as `apply` does
    /// (example: contrib/hairpin.toml); then no other setting may be given as a flag.
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with_all = [
        "lan", "wan", "public_ip", "lan_ip", "lan_prefix", "no_hairpin", "no_fast_path", "no_flow_cache",
        "port_range", "udp_filtering", "max_flows", "mode", "xdp_mode", "tc_attach",
        "tcp_established_timeout", "tcp_transitory_timeout", "udp_timeout", "icmp_timeout",
    ])]
    pub config: Option<PathBuf>,
    /// LAN-side interface (where the servers and LAN clients are). Required without --config.
    #[arg(long, value_name = "IFACE")]
    pub lan: Option<String>,
    /// WAN-side interface (towards the internet). Required without --config.
    #[arg(long, value_name = "IFACE")]
    pub wan: Option<String>,
    /// The gateway's public address [default: the WAN interface's primary IPv4 address].
    #[arg(long, value_name = "ADDR")]
    pub public_ip: Option<Ipv4Addr>,
    /// The gateway's LAN address, the source of hairpinned flows [default: the LAN
    /// interface's primary IPv4 address].
    #[arg(long, value_name = "ADDR")]
    pub lan_ip: Option<Ipv4Addr>,
    /// The LAN prefix, e.g. 192.168.0.0/24 [default: the LAN interface's primary address and
    /// prefix]. LAN sources outside it are not forwarded; WAN packets from or to it are dropped.
    #[arg(long, value_name = "CIDR", value_parser = spec::parse_prefix)]
    pub lan_prefix: Option<Ipv4Net>,
    /// Do not hairpin: LAN clients dialling the public address get destination NAT only, as on
    /// a gateway without NAT loopback (their connections fail; useful to show why hairpin is
    /// needed).
    #[arg(long)]
    pub no_hairpin: bool,
    /// Leave every packet to the kernel to forward (the slow path), translated by the ingress
    /// and egress programs. By default packets of known flows are translated whole and sent out
    /// by the ingress program itself (XDP redirect or XDP_TX, or TC's bpf_redirect) when the
    /// kernel's FIB knows the route and the neighbour.
    #[arg(long)]
    pub no_fast_path: bool,
    /// Look every fast-path packet up in conntrack. By default each CPU keeps a copy of its
    /// established flows' translation and next hop (one 64-byte line per flow direction,
    /// 128-256 bytes per --max-flows over all CPUs), so that their packets skip the
    /// conntrack hash lookup; a copy serves at most 4 s (a quarter of the shortest idle
    /// timeout if less) before conntrack is consulted again, and none once flows are removed.
    /// Fixed once up.
    #[arg(long)]
    pub no_flow_cache: bool,
    /// Source ports that hairpinned and masqueraded flows may take, MIN-MAX inclusive (the
    /// client's own port is kept when it lies in the range and is free) [default: 1024-65535].
    #[arg(long, value_name = "MIN-MAX")]
    pub port_range: Option<PortRange>,
    /// Which internet hosts may send to the public UDP port a LAN host's traffic was given:
    /// address-and-port-dependent allows only those it has sent to (like netfilter);
    /// endpoint-independent allows any ("full cone", what peer-to-peer games and calls want).
    /// TCP is always address-and-port-dependent. Either way a LAN host keeps one public port
    /// for all its destinations [default: address-and-port-dependent].
    #[arg(long, value_enum, value_name = "MODE")]
    pub udp_filtering: Option<UdpFiltering>,
    /// Flows the gateway can track at once (each takes two conntrack entries and up to two
    /// egress rewrites, about 350 bytes, allocated up front, and 128-256 bytes of flow
    /// cache). When full, the least recently used flows are evicted (with the flow cache,
    /// "used" is looked up in conntrack: every few seconds for a busy flow). Fixed once up
    /// [default: 131072].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1024..=16_777_216), value_name = "N")]
    pub max_flows: Option<u32>,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// Where ingress runs. auto: per interface, native XDP where the driver has it and
    /// receives from a wire (NICs, virtio-net, bonds of them), TC ingress elsewhere (veth,
    /// tun, bridge, VLAN, ...: XDP cannot see the checksum offload of a local sender, and a
    /// veth loses XDP frames unless its peer runs XDP). xdp: XDP on both (native, else
    /// generic). tc: TC ingress on both. The translation and the fast path are the same code
    /// in XDP and TC; `up` prints what it chose per interface and why [default: auto].
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// Attach XDP on both interfaces this way, overriding the choice of --mode auto: native
    /// (in the driver; fails where the driver has none) or generic (on the skb, any
    /// interface; it cannot see checksums left to offload, so only for senders with complete
    /// ones). auto: as --mode decides [default: auto].
    #[arg(long, value_enum, value_name = "MODE")]
    pub xdp_mode: Option<XdpAttachMode>,
    /// How the TC programs attach: tcx (bpf_links, kernel 6.6 and later, pinned under the pin
    /// directory), netlink (a clsact qdisc and cls_bpf filters, any kernel: they stay until
    /// `down`, which removes exactly hairpin's, by program name), or auto (TCX where the kernel
    /// takes it, else netlink) [default: auto].
    #[arg(long, value_enum, value_name = "MODE")]
    pub tc_attach: Option<TcAttachMode>,
}

/// Idle timeouts (seconds), enforced by `hairpin-ctl run`.
#[derive(Debug, Args, Clone, Copy)]
pub struct TimeoutArgs {
    /// Idle timeout of established TCP flows (RFC 5382 asks at least 7440) [default: 7440].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "SECS")]
    pub tcp_established_timeout: Option<u32>,
    /// Idle timeout of TCP flows opening (SYN seen) or closing (FIN or RST seen), and the most any
    /// flow not yet forwarded both ways by the kernel lives [default: 240].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "SECS")]
    pub tcp_transitory_timeout: Option<u32>,
    /// Idle timeout of UDP flows, refreshed by outbound packets only when masqueraded, by either
    /// direction when forwarded (RFC 4787 asks at least 120) [default: 300].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "SECS")]
    pub udp_timeout: Option<u32>,
    /// Idle timeout of ICMP flows [default: 60].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), value_name = "SECS")]
    pub icmp_timeout: Option<u32>,
}

impl UpArgs {
    /// Sets in `spec` what the flags give; returns the flags given, in the order above.
    pub fn overlay(&self, spec: &mut Spec) -> Vec<&'static str> {
        let mut given = Vec::new();
        // A flag given sets its key; one not given leaves the key as it is.
        fn put<T: Clone>(given: &mut Vec<&'static str>, flag: &'static str, value: &Option<T>, key: &mut T) {
            if let Some(v) = value {
                given.push(flag);
                *key = v.clone();
            }
        }
        let on = |b: bool| b.then_some(false);
        let t = &self.timeouts;
        put(&mut given, "--lan", &self.lan, &mut spec.lan.interface);
        put(&mut given, "--wan", &self.wan, &mut spec.wan.interface);
        put(&mut given, "--public-ip", &self.public_ip.map(Some), &mut spec.wan.public_address);
        put(&mut given, "--lan-ip", &self.lan_ip.map(Some), &mut spec.lan.address);
        put(&mut given, "--lan-prefix", &self.lan_prefix.map(Some), &mut spec.lan.prefix);
        put(&mut given, "--no-hairpin", &on(self.no_hairpin), &mut spec.nat.hairpin);
        put(&mut given, "--no-fast-path", &on(self.no_fast_path), &mut spec.dataplane.fast_path);
        put(&mut given, "--no-flow-cache", &on(self.no_flow_cache), &mut spec.dataplane.flow_cache);
        put(&mut given, "--port-range", &self.port_range, &mut spec.nat.port_range);
        put(&mut given, "--udp-filtering", &self.udp_filtering, &mut spec.nat.udp_filtering);
        put(&mut given, "--max-flows", &self.max_flows, &mut spec.dataplane.max_flows);
        put(&mut given, "--tcp-established-timeout", &t.tcp_established_timeout, &mut spec.timeouts.tcp_established);
        put(&mut given, "--tcp-transitory-timeout", &t.tcp_transitory_timeout, &mut spec.timeouts.tcp_transitory);
        put(&mut given, "--udp-timeout", &t.udp_timeout, &mut spec.timeouts.udp);
        put(&mut given, "--icmp-timeout", &t.icmp_timeout, &mut spec.timeouts.icmp);
        put(&mut given, "--mode", &self.mode, &mut spec.dataplane.mode);
        put(&mut given, "--xdp-mode", &self.xdp_mode, &mut spec.dataplane.xdp_mode);
        put(&mut given, "--tc-attach", &self.tc_attach, &mut spec.dataplane.tc_attach);
        given
    }

    /// The spec these flags describe from scratch (no file): both interfaces are needed.
    pub fn spec(&self) -> anyhow::Result<Spec> {
        let (Some(lan), Some(wan)) = (&self.lan, &self.wan) else {
            bail!("give --lan and --wan (the gateway's two interfaces), or --config FILE");
        };
        let mut spec = Spec::new(lan, wan);
        self.overlay(&mut spec);
        Ok(spec)
    }

    /// The spec to bring up, and where it came from: the file, or the flags.
    pub fn load(&self) -> anyhow::Result<(Spec, Origin)> {
        match &self.config {
            Some(path) => Origin::load(path.clone()),
            None => Ok((self.spec()?, Origin::Flags)),
        }
    }
}

pub fn run(pins: &PinDir, a: &UpArgs) -> anyhow::Result<()> {
    let (spec, origin) = a.load()?;
    bring_up(pins, &spec, &origin)
}

/// Brings the gateway `spec` describes up: resolved and checked first, then loaded, filled
/// (configuration and forwards), attached and pinned, all of it or none of it.
pub fn bring_up(pins: &PinDir, spec: &Spec, origin: &Origin) -> anyhow::Result<()> {
    if pins.exists() {
        bail!(
            "hairpin is already up here (pins at {}): run `hairpin-ctl down` first, use `apply`, or another --pin-dir",
            pins.root.display()
        );
    }
    pins.check_bpffs()?;
    let r = gateway::resolve(spec, origin)?;
    let d = spec.dataplane;
    let (lan, wan) = (spec.lan.interface.as_str(), spec.wan.interface.as_str());
    for (name, ifindex) in [(lan, r.lan_ifindex), (wan, r.wan_ifindex)] {
        crate::netif::refuse_attached(name, ifindex)?;
    }
    let side = |iface, ifindex| -> anyhow::Result<Side> {
        let caps = Caps::probe(iface, ifindex)?;
        Ok(Side { iface, ifindex, placement: placement::choose(&caps, d.mode, d.xdp_mode), caps })
    };
    let mut sides = [side(lan, r.lan_ifindex)?, side(wan, r.wan_ifindex)?];
    let mut cfg = gateway::config(spec, &r, [sides[0].placement.encode(), sides[1].placement.encode()]);
    let mut ebpf = dataplane::load(d.max_flows, d.flow_cache)?;
    write_config(&mut ebpf, &cfg)?;
    // The forwards go in before anything is attached: the first packet meets all of them.
    let mut mappings: HashMap<_, MappingKey, Endpoint> =
        HashMap::try_from(ebpf.map_mut(map_names::MAPPINGS).context("mapping table missing")?)?;
    for f in &spec.forwards {
        let (key, target) = gateway::mapping(f, cfg.public_addr);
        mappings.insert(&key, &target, 0).with_context(|| format!("adding forward {f}"))?;
    }
    // XDP redirects go only to these two, and the dataplane sends into neither unless its
    // placement says the device takes XDP frames.
    let mut devices = DevMapHash::try_from(ebpf.map_mut(map_names::DEVICES).context("device map missing")?)?;
    for ifindex in [r.lan_ifindex, r.wan_ifindex] {
        devices.insert(ifindex, ifindex, None, 0).context("filling the fast path's device map")?;
    }
    // Until pinned (or, for netlink filters, let go of), each link lives only as long as this
    // process: an error below detaches it.
    let (mut links, mut filters) = (Vec::new(), Vec::new());
    let (mut tc_mode, mut tc_why) = (d.tc_attach, None);
    for (side, hook) in [(0, Hook::LanIngress), (1, Hook::WanIngress)] {
        let s = &mut sides[side];
        let strict = d.xdp_mode == XdpAttachMode::Native;
        match attach_ingress(&mut ebpf, hook, s, strict, &mut tc_mode, &mut tc_why)
            .with_context(|| format!("attaching ingress to {}", s.iface))?
        {
            Attached::Pinned(link) => links.push((dataplane::program(hook, s.placement.ingress), link)),
            Attached::Filter(link) => filters.push(link),
        }
    }
    // A fallback may have changed a placement, and some drivers (virtio-net) say they take XDP
    // frames only once an XDP program is attached to them: asked again now that both ingress
    // programs are, the dataplane sees the final placements.
    for s in &mut sides {
        s.caps = Caps::probe(s.iface, s.ifindex)?;
        s.placement.xdp_target = placement::xdp_target(&s.caps, s.placement.ingress, s.placement.why);
        s.placement.peer_target = s.caps.peer_target();
    }
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
            Err(e) => warn!(
                "XDP frames the kernel refuses will not be counted ({e:#}); is tracefs mounted at \
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

    warn_sysctls(lan, spec.nat.hairpin);
    let a = &r.addrs;
    say!(
        "hairpin up: lan {lan} ({}, prefix {}), wan {wan} ({}), hairpin {}, fast path {}, udp filtering {}, {} forwards, pinned at {}",
        a.lan_ip,
        a.lan_prefix,
        a.public_ip,
        if spec.nat.hairpin { "on" } else { "off" },
        match (d.fast_path, d.flow_cache) {
            (false, _) => "off",
            (true, true) => "on",
            (true, false) => "on (no flow cache)",
        },
        spec.nat.udp_filtering.to_possible_value().expect("no skipped variants").get_name(),
        spec.forwards.len(),
        pins.root.display()
    );
    match (tc_mode, &tc_why) {
        (TcAttachMode::Netlink, Some(why)) => say!("  tc programs: netlink filters (TCX unavailable: {why})"),
        (TcAttachMode::Netlink, None) => say!("  tc programs: netlink filters (--tc-attach netlink)"),
        _ => say!("  tc programs: tcx links"),
    }
    for s in &sides {
        say!("  {}", placement::describe(s.iface, s.placement, d.fast_path));
        if s.placement.ingress == Ingress::XdpGeneric {
            warn!(
                "{}: generic XDP cannot see checksums a local sender left to offload; \
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
