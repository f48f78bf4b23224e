//! The forwarding benchmark: generator -> gateway -> sink in namespaces, 64-byte UDP frames
//! sent by an XDP program in live-frames mode (BPF_PROG_TEST_RUN), counted at the sink by an
//! XDP program (and a TC one beside it, for packets sent into the sink's ingress past XDP)
//! that count only packets with the expected (translated) destination.
//!
//! ```text
//!  generator g0 ── wan0 [gw] lan0 ── s0 sink          (WAN -> LAN: port-forward cases)
//!  generator l0 ── lan0 [gw] wan0 ── s0 sink          (LAN -> WAN: masquerade cases)
//!  generator l0 ── lan0 [gw]                           (hairpin: the sink counts on l0 itself)
//! ```

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};

use crate::sender;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode, tc::TcAttach,
    },
};
use hairpin_common::{Endpoint, Ipv4Be, PortBe, flow_cache};
use hairpin_lab::{Netns, netns::mac};

/// What forwards the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// An XDP program that only redirects: the ceiling, no NAT work.
    RawRedirect,
    /// The same, reading one line of a flow-cache-sized table per packet first: the floor of
    /// any per-flow state.
    RawLookup,
    /// The same, writing the header bytes any router writes (Ethernet addresses, TTL and its
    /// checksum), at fixed offsets, without parsing or a route lookup: the write floor.
    RawWrite,
    /// The kernel routing, no NAT.
    KernelForward,
    /// nftables DNAT of the forwarded port (kernel conntrack).
    NftDnat,
    /// nftables DNAT and masquerade towards the LAN (kernel conntrack both ways).
    NftDnatMasq,
    /// hairpin with --no-fast-path: XDP translates, the kernel forwards, TC rewrites sources.
    HairpinSlow,
    /// hairpin's fast path: XDP translates and redirects.
    HairpinFast,
    /// The same with --no-flow-cache: every packet looked up in conntrack.
    HairpinFastNoCache,
    /// hairpin's fast path for hairpinned traffic: LAN -> public address -> LAN, XDP_TX.
    HairpinTx,
    /// hairpin with default flags, which on veths puts ingress in TC: the TC fast path
    /// (bpf_redirect), what a user's namespaces get.
    HairpinTc,
    /// hairpin with `--xdp-mode generic`: XDP on the skb.
    HairpinGeneric,
    /// nftables masquerade of LAN hosts' traffic to the internet (kernel conntrack).
    NftMasq,
    /// hairpin's fast path masquerading LAN hosts' traffic to the internet.
    HairpinMasq,
}

impl Path {
    pub const ALL: [Path; 14] = [
        Path::RawRedirect,
        Path::RawLookup,
        Path::RawWrite,
        Path::KernelForward,
        Path::NftDnat,
        Path::NftDnatMasq,
        Path::HairpinSlow,
        Path::HairpinFast,
        Path::HairpinFastNoCache,
        Path::HairpinTx,
        Path::HairpinTc,
        Path::HairpinGeneric,
        Path::NftMasq,
        Path::HairpinMasq,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Path::RawRedirect => "raw XDP redirect (ceiling)",
            Path::RawLookup => "raw XDP redirect + a table line (memory floor)",
            Path::RawWrite => "raw XDP redirect + MAC and TTL writes (write floor)",
            Path::KernelForward => "kernel forwarding",
            Path::NftDnat => "nftables DNAT",
            Path::NftDnatMasq => "nftables DNAT + masquerade",
            Path::HairpinSlow => "hairpin slow path",
            Path::HairpinFast => "hairpin fast path",
            Path::HairpinFastNoCache => "hairpin fast path without flow cache",
            Path::HairpinTx => "hairpin XDP_TX (hairpinned)",
            Path::HairpinTc => "hairpin TC fast path (default on veth)",
            Path::HairpinGeneric => "hairpin generic XDP fast path",
            Path::NftMasq => "nftables masquerade (LAN -> WAN)",
            Path::HairpinMasq => "hairpin fast path, masquerade (LAN -> WAN)",
        }
    }
    /// A NAT with per-flow state: hairpin or nftables (the new-flow rate means something).
    pub fn nat(self) -> bool {
        self.hairpin() || matches!(self, Path::NftDnat | Path::NftDnatMasq | Path::NftMasq)
    }
    /// hairpin is the gateway.
    fn hairpin(self) -> bool {
        matches!(
            self,
            Path::HairpinSlow
                | Path::HairpinFast
                | Path::HairpinFastNoCache
                | Path::HairpinTx
                | Path::HairpinTc
                | Path::HairpinGeneric
                | Path::HairpinMasq
        )
    }
    /// The generator's interface, and the gateway's interfaces the traffic comes in and goes
    /// out of (with their MACs): from the LAN (masqueraded or hairpinned) or from the internet.
    fn interfaces(self) -> (&'static str, Iface, Iface) {
        match self {
            Path::HairpinTx | Path::NftMasq | Path::HairpinMasq => ("l0", ("lan0", MAC_LAN), ("wan0", MAC_WAN)),
            _ => ("g0", ("wan0", MAC_WAN), ("lan0", MAC_LAN)),
        }
    }
    /// What a correctly forwarded frame carries at the sink: destination address and port,
    /// and the source address (unspecified: any).
    fn expected(self) -> (Ipv4Addr, u16, Ipv4Addr) {
        match self {
            Path::NftMasq | Path::HairpinMasq => (WAN_CLIENT, PORT, PUBLIC),
            _ => (SINK, PORT, Ipv4Addr::UNSPECIFIED),
        }
    }
}

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SINK: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const WAN_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const LAN_CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 3);
const PORT: u16 = 9;
/// The generator's first source port: up to 60,000 flows stay clear of port 0 and of the
/// forwarded port.
const FIRST_PORT: u32 = 1024;
const GW_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
/// Frames per live-frames test run of the generator.
const CHUNK: u32 = 1 << 17;

const MAC_GEN: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x01];
const MAC_WAN: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x02];
const MAC_LAN: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x03];
const MAC_SINK: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x04];
/// What the write floor writes: the sink's address, then the gateway's LAN side's.
const WRITE_MACS: [u8; 12] = {
    let mut m = [0; 12];
    let mut i = 0;
    while i < 6 {
        (m[i], m[i + 6]) = (MAC_SINK[i], MAC_LAN[i]);
        i += 1;
    }
    m
};

/// A gateway interface's name and MAC address.
type Iface = (&'static str, [u8; 6]);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One measurement's result.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Frames the generator sent per second.
    pub offered_pps: f64,
    /// Correctly translated frames counted at the sink per second.
    pub delivered_pps: f64,
    /// Frames at the sink with another destination (must be 0).
    pub wrong: u64,
}

/// A built harness for one path: namespaces, programs, the gateway set up.
pub struct Harness {
    path: Path,
    ctl: PathBuf,
    pin_dir: PathBuf,
    /// The object holding generator, sink and ceiling programs (attached ones stay so while
    /// it lives).
    ebpf: Ebpf,
    gen_ifindex: u32,
    /// The NAPI kthreads pinned, for the report.
    pub pinned: String,
    // Dropped last: the namespaces (and with them every interface).
    generator: Netns,
    gw: Netns,
    sink: Option<Netns>,
}

impl Harness {
    pub fn new(path: Path, ctl: PathBuf, max_flows: u32) -> anyhow::Result<Self> {
        let prefix = format!("hpb{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let generator = Netns::new(&format!("{prefix}-gen"))?;
        let gw = Netns::new(&format!("{prefix}-gw"))?;
        let sink = if path == Path::HairpinTx { None } else { Some(Netns::new(&format!("{prefix}-sink"))?) };
        // The memory floor's table: as large as one CPU's flow cache for `max_flows`.
        let cpus = aya::util::nr_cpus().map_err(|(p, e)| anyhow::anyhow!("reading {p}: {e}"))?.get();
        let sets = if path == Path::RawLookup { flow_cache::sets_per_cpu(max_flows, cpus) } else { 0 };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("BENCH_TABLE", (sets * flow_cache::WAYS).max(1))
            .override_global("BENCH_TABLE_SETS", &sets, true)
            .override_global("BENCH_WRITE_MACS", &WRITE_MACS, true)
            .load(hairpin_lab::HELPERS_OBJECT)
            .context("loading the bench programs")?;
        for p in ["bench_gen", "bench_sink", "bench_redirect", "bench_redirect_lookup", "bench_redirect_write"] {
            <&mut Xdp>::try_from(ebpf.program_mut(p).context("bench program missing")?)?.load()?;
        }
        <&mut SchedClassifier>::try_from(ebpf.program_mut("bench_sink_tc").context("bench program missing")?)?
            .load()?;
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{prefix}"));
        let mut h = Self { path, ctl, pin_dir, ebpf, gen_ifindex: 0, pinned: String::new(), generator, gw, sink };
        h.wire(max_flows).with_context(|| format!("building the harness for {}", path.name()))?;
        Ok(h)
    }

    fn wire(&mut self, max_flows: u32) -> anyhow::Result<()> {
        let link = |a: &Netns, an: &str, am: [u8; 6], b: &Netns, bn: &str, bm: [u8; 6]| -> anyhow::Result<()> {
            run(Command::new("ip").args([
                "link",
                "add",
                an,
                "netns",
                &a.name,
                "address",
                &mac(am),
                "type",
                "veth",
                "peer",
                "name",
                bn,
                "netns",
                &b.name,
                "address",
                &mac(bm),
            ]))?;
            a.ip(&["link", "set", an, "up"])?;
            b.ip(&["link", "set", bn, "up"])?;
            Ok(())
        };
        let gw = &self.gw;
        let hairpinned = self.path == Path::HairpinTx;
        let (gen_if, (ingress, ingress_mac), (egress, egress_mac)) = self.path.interfaces();
        link(&self.generator, gen_if, MAC_GEN, gw, ingress, ingress_mac)?;
        match &self.sink {
            Some(sink) => link(gw, egress, egress_mac, sink, "s0", MAC_SINK)?,
            None => {
                // Hairpinned: the WAN only needs to exist.
                gw.ip(&["link", "add", egress, "type", "dummy"]).or_else(|_| {
                    // No dummy module: a veth with its peer left in the gateway.
                    gw.ip(&["link", "add", egress, "type", "veth", "peer", "name", "wan0p"])
                })?;
                gw.ip(&["link", "set", egress, "up"])?;
            }
        }
        gw.ip(&["addr", "add", "203.0.113.1/24", "dev", "wan0"])?;
        gw.ip(&["addr", "add", "192.168.0.1/24", "dev", "lan0"])?;
        gw.ip(&["route", "add", "198.51.100.0/24", "dev", "wan0"])?;
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        gw.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        gw.sysctl("net.ipv4.conf.lan0.send_redirects", "0")?;
        // The server is a known neighbour: no ARP in the measurement.
        let server_mac = if hairpinned { MAC_GEN } else { MAC_SINK };
        gw.ip(&["neigh", "add", "192.168.0.2", "lladdr", &mac(server_mac), "dev", "lan0", "nud", "permanent"])?;
        gw.ip(&["neigh", "add", "192.168.0.3", "lladdr", &mac(MAC_GEN), "dev", "lan0", "nud", "permanent"])?;
        // The forwards' replies go to the generator, the internet host (see `reply`).
        if ingress == "wan0" {
            gw.ip(&[
                "neigh",
                "add",
                &WAN_CLIENT.to_string(),
                "lladdr",
                &mac(MAC_GEN),
                "dev",
                "wan0",
                "nud",
                "permanent",
            ])?;
        }
        // The masquerade cases' sink is the internet host behind the WAN: a known neighbour too.
        if egress == "wan0" && self.sink.is_some() {
            gw.ip(&[
                "neigh",
                "add",
                &WAN_CLIENT.to_string(),
                "lladdr",
                &mac(MAC_SINK),
                "dev",
                "wan0",
                "nud",
                "permanent",
            ])?;
        }

        // The sink counts on the sink's interface, or for hairpinned traffic on the generator's.
        let (sink_ns, sink_if) = match &self.sink {
            Some(ns) => (ns, "s0"),
            None => (&self.generator, gen_if),
        };
        // HAIRPIN_BENCH_TC_SINK_ONLY leaves the XDP sink out (then only the skb paths deliver,
        // counted at TC as on a user's plain veth): to check that the XDP sink's skb-to-XDP
        // conversion does not flatter the TC fast path against nftables (bench/NOTES.md).
        if std::env::var_os("HAIRPIN_BENCH_TC_SINK_ONLY").is_none() {
            attach(&mut self.ebpf, "bench_sink", sink_ns, sink_if)?;
        }
        // And at TC ingress, for frames sent into the device's ingress past its XDP program
        // (the TC fast path's `bpf_redirect_peer`).
        let tc: &mut SchedClassifier =
            self.ebpf.program_mut("bench_sink_tc").context("bench program missing")?.try_into()?;
        let index = sink_ns.ifindex(sink_if)?;
        // TCX resolves the index in the calling thread's namespace.
        sink_ns.scoped(|| {
            let tcx = TcAttach::Tcx { attach_type: TcAttachType::Ingress, order: LinkOrder::default() };
            tc.attach(index, tcx).with_context(|| format!("attaching bench_sink_tc to {sink_if}"))?;
            Ok(())
        })?;
        let (dst, dport, src) = self.path.expected();
        let want = [
            Endpoint::new(Ipv4Be::from_octets(dst.octets()), PortBe::from_host(dport)),
            Endpoint::new(Ipv4Be::from_octets(src.octets()), PortBe::from_host(0)),
        ];
        Array::<_, [Endpoint; 2]>::try_from(self.ebpf.map_mut("BENCH_SINK").context("BENCH_SINK")?)?
            .set(0, &want, 0)?;

        match self.path {
            Path::RawRedirect | Path::RawLookup | Path::RawWrite => {
                let lan = gw.ifindex("lan0")?;
                let mut out = DevMap::try_from(self.ebpf.map_mut("BENCH_OUT").context("BENCH_OUT")?)?;
                // A device map resolves the ifindex in the updating thread's namespace.
                gw.scoped(|| out.set(0, lan, None, 0).context("filling BENCH_OUT"))?;
                let prog = match self.path {
                    Path::RawLookup => "bench_redirect_lookup",
                    Path::RawWrite => "bench_redirect_write",
                    _ => "bench_redirect",
                };
                attach(&mut self.ebpf, prog, gw, "wan0")?;
            }
            Path::KernelForward | Path::NftDnat | Path::NftDnatMasq | Path::NftMasq => {
                // Frames the generator sends with XDP_TX reach a veth only through its NAPI,
                // which GRO turns on when it runs no XDP program.
                gw.exec("ethtool", &["-K", ingress, "gro", "on"])?;
                match self.path {
                    Path::NftDnat => nft(gw, NFT_DNAT)?,
                    Path::NftDnatMasq => nft(gw, &format!("{NFT_DNAT}{NFT_MASQ_LAN}"))?,
                    Path::NftMasq => nft(gw, NFT_MASQ_WAN)?,
                    _ => {}
                }
            }
            // hairpin is the gateway.
            _ => {
                let mut args = vec!["up", "--lan", "lan0", "--wan", "wan0"];
                let flows = max_flows.to_string();
                args.extend(["--max-flows", &flows]);
                match self.path {
                    Path::HairpinSlow => args.extend(["--xdp-mode", "native", "--no-fast-path"]),
                    Path::HairpinFastNoCache => args.extend(["--xdp-mode", "native", "--no-flow-cache"]),
                    Path::HairpinGeneric => args.extend(["--xdp-mode", "generic"]),
                    // Default flags: `up` chooses (TC on these veths).
                    Path::HairpinTc => {}
                    _ => args.extend(["--xdp-mode", "native"]),
                }
                // Without XDP of its own, the gateway's receiving veth takes the generator's
                // XDP frames only through the NAPI that GRO turns on.
                if matches!(self.path, Path::HairpinTc | Path::HairpinGeneric) {
                    gw.exec("ethtool", &["-K", ingress, "gro", "on"])?;
                }
                self.ctl(&args)?;
                self.ctl(&["map", "add", "udp", "203.0.113.1:9", "192.168.0.2:9"])?;
            }
        }
        // Threaded NAPI for the gateway's receiving interface, on CPU 1; the generator runs
        // on CPU 0.
        self.gen_ifindex = self.generator.ifindex(gen_if)?;
        if std::env::var_os("HAIRPIN_BENCH_NO_THREADED").is_none() {
            self.pinned = pin_napi(gw, ingress, 1)?;
        }
        Ok(())
    }

    /// `hairpin-ctl --pin-dir <bench pins> args` in the gateway.
    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = self.gw.command(self.ctl.to_str().context("non-UTF-8 path")?);
        c.arg("--pin-dir").arg(&self.pin_dir).args(args);
        run(&mut c)
    }

    pub fn path(&self) -> Path {
        self.path
    }

    /// The pinned conntrack map of the gateway (hairpin paths).
    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        self.path.hairpin().then_some(self.pin_dir.as_path()).filter(|p| p.exists())
    }

    /// The 64-byte frame the generator sends (its source port is set per packet).
    fn frame(&self) -> Vec<u8> {
        self.frame_from(None)
    }

    /// The same from another source address, if given (new tuples for the same path).
    fn frame_from(&self, other_src: Option<Ipv4Addr>) -> Vec<u8> {
        let (src, dst, dmac) = match self.path {
            Path::HairpinTx => (LAN_CLIENT, PUBLIC, MAC_LAN),
            Path::NftMasq | Path::HairpinMasq => (LAN_CLIENT, WAN_CLIENT, MAC_LAN),
            Path::RawRedirect | Path::RawLookup | Path::RawWrite | Path::KernelForward => (WAN_CLIENT, SINK, MAC_WAN),
            _ => (WAN_CLIENT, PUBLIC, MAC_WAN),
        };
        crate::frame::udp(dmac, MAC_GEN, other_src.unwrap_or(src), FIRST_PORT as u16, dst, PORT)
    }

    /// One pass of `flows` frames, each from a tuple never seen (repetition `rep` from its own
    /// source address), so that every packet opens a flow: what reaches the sink per second of
    /// sending. Replies are not sent: a new flow's first packet is what is measured.
    pub fn measure_new_flows(&mut self, flows: u32, rep: u8) -> anyhow::Result<Rate> {
        let from_lan = matches!(self.path, Path::HairpinTx | Path::NftMasq | Path::HairpinMasq);
        let src = if from_lan { Ipv4Addr::new(192, 168, 0, 100 + rep) } else { Ipv4Addr::new(198, 51, 100, 100 + rep) };
        let frame = self.frame_from(Some(src));
        let frames = sender::Frames { frame: &frame, first_port: FIRST_PORT, flows, vary_dst: false };
        set_frames(&mut self.ebpf, &frames)?;
        let before = self.wait_sink_stable()?;
        let gen_if = self.gen_ifindex;
        let (sent, elapsed) = generate(&mut self.ebpf, &self.generator, gen_if, &frames, flows, |sent, _| sent > 0)?;
        let after = self.wait_sink_stable()?;
        let t = elapsed.as_secs_f64();
        Ok(Rate {
            offered_pps: sent as f64 / t,
            delivered_pps: (after.0 - before.0) as f64 / t,
            wrong: after.1 - before.1,
        })
    }

    fn sink_counts(&self) -> anyhow::Result<(u64, u64)> {
        let m: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("BENCH_SINK_COUNT").context("BENCH_SINK_COUNT")?)?;
        Ok((m.get(&0, 0)?.iter().sum(), m.get(&1, 0)?.iter().sum()))
    }

    /// Sends with `flows` source ports: first `warmup` frames (so every flow exists; for
    /// hairpin, then a reply to each and `warmup` frames again, so that every flow is
    /// confirmed), then for `secs` seconds, measured.
    pub fn measure(&mut self, flows: u32, warmup: u64, secs: f64) -> anyhow::Result<Rate> {
        let frame = self.frame();
        let gen_if = self.gen_ifindex;
        let frames = sender::Frames { frame: &frame, first_port: FIRST_PORT, flows, vary_dst: false };
        set_frames(&mut self.ebpf, &frames)?;
        generate(&mut self.ebpf, &self.generator, gen_if, &frames, CHUNK, |sent, _| sent >= warmup)?;
        if self.path.hairpin()
            && let Some((reply, ns, ifindex)) = reply(self.path, &self.generator, gen_if, &self.sink)?
        {
            // Each flow's reply once: after the first, confirmed, it takes the fast path.
            let replies = sender::Frames { frame: &reply, first_port: FIRST_PORT, flows, vary_dst: true };
            set_frames(&mut self.ebpf, &replies)?;
            generate(&mut self.ebpf, ns, ifindex, &replies, flows.max(64), |sent, _| sent > 0)
                .context("sending a reply to each flow")?;
            set_frames(&mut self.ebpf, &frames)?;
            generate(&mut self.ebpf, &self.generator, gen_if, &frames, CHUNK, |sent, _| sent >= warmup)
                .context("sending after the replies")?;
        }
        self.wait_sink_stable()?;
        let before = self.sink_counts()?;
        let limit = Duration::from_secs_f64(secs);
        let (sent, elapsed) = generate(&mut self.ebpf, &self.generator, gen_if, &frames, CHUNK, |_, t| t >= limit)?;
        let after = self.wait_sink_stable()?;
        if std::env::var_os("HAIRPIN_BENCH_DEBUG").is_some() {
            let gen_if = self.path.interfaces().0;
            for (ns, dev) in [(&self.generator, gen_if), (&self.gw, "wan0"), (&self.gw, "lan0")] {
                if let Ok(s) = ns.exec("ethtool", &["-S", dev]) {
                    eprintln!(
                        "{dev}: {}",
                        s.lines().filter(|l| !l.trim_end().ends_with(": 0")).collect::<Vec<_>>().join(" |")
                    );
                }
                if let Ok(s) = ns.ip(&["-s", "-s", "link", "show", dev]) {
                    eprintln!("{}", s.replace('\n', " / "));
                }
            }
            if let Some(Ok(s)) = self.pin_dir().map(|_| self.ctl(&["stats"])) {
                eprintln!("{s}");
            }
            if let Ok(s) = self.gw.exec("nstat", &["-a"]) {
                eprintln!(
                    "{}",
                    s.lines()
                        .filter(|l| l.contains("Discard")
                            || l.contains("Drop")
                            || l.contains("Forw")
                            || l.contains("InReceives")
                            || l.contains("NoRoute"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
        let t = elapsed.as_secs_f64();
        Ok(Rate {
            offered_pps: sent as f64 / t,
            delivered_pps: (after.0 - before.0) as f64 / t,
            wrong: after.1 - before.1,
        })
    }

    /// The sink's counters once they stop moving (frames in flight have landed), or after 2 s.
    fn wait_sink_stable(&self) -> anyhow::Result<(u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.sink_counts()?;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.sink_counts()?;
            if now == last || Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            let _ = self.ctl(&["down"]);
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    hairpin_lab::netns::run(cmd)
}

/// Tells the generator program what to send.
fn set_frames(ebpf: &mut Ebpf, frames: &sender::Frames) -> anyhow::Result<()> {
    // GenConfig: first port, flows, the 42 header bytes, which port varies, padding.
    let mut cfg: Vec<u8> = [frames.first_port, frames.flows].iter().flat_map(|w| w.to_ne_bytes()).collect();
    cfg.extend_from_slice(&frames.frame[..42]);
    cfg.push(u8::from(frames.vary_dst));
    cfg.resize(56, 0);
    let mut gen_cfg: Array<&mut MapData, [u8; 56]> = Array::try_from(ebpf.map_mut("BENCH_GEN").context("BENCH_GEN")?)?;
    gen_cfg.set(0, &<[u8; 56]>::try_from(cfg.as_slice()).expect("56 bytes"), 0)?;
    Ok(())
}

/// A reply to each flow, from the far side of the gateway, and where it is sent from
/// (namespace, interface): hairpin's fast path serves a flow only once the kernel has
/// forwarded it both ways (confirmation), as a real flow's first replies do. `None` for
/// the paths without NAT state.
fn reply<'a>(
    path: Path,
    generator: &'a Netns,
    gen_ifindex: u32,
    sink: &'a Option<Netns>,
) -> anyhow::Result<Option<(Vec<u8>, &'a Netns, u32)>> {
    let udp = |src, dst, dmac, smac| crate::frame::udp(dmac, smac, src, PORT, dst, FIRST_PORT as u16);
    Ok(match (path, sink) {
        (Path::RawRedirect | Path::RawLookup | Path::RawWrite | Path::KernelForward, _) => None,
        (Path::HairpinTx, _) => Some((udp(SINK, GW_LAN, MAC_LAN, MAC_GEN), generator, gen_ifindex)),
        (Path::NftMasq | Path::HairpinMasq, Some(sink)) => {
            Some((udp(WAN_CLIENT, PUBLIC, MAC_WAN, MAC_SINK), sink, sink.ifindex("s0")?))
        }
        (_, Some(sink)) => Some((udp(SINK, WAN_CLIENT, MAC_LAN, MAC_SINK), sink, sink.ifindex("s0")?)),
        (_, None) => None,
    })
}

/// Runs the generator on CPU 0 in `ns`, sending `frames` (as `set_frames` also told the
/// generator program) out of interface `ifindex` in runs of `chunk` frames, until
/// `done(sent, elapsed)`: live XDP frames, or a packet socket where the kernel refuses those.
fn generate(
    ebpf: &mut Ebpf,
    ns: &Netns,
    ifindex: u32,
    frames: &sender::Frames,
    chunk: u32,
    done: impl Fn(u64, Duration) -> bool + Sync,
) -> anyhow::Result<(u64, Duration)> {
    let frame = frames.frame;
    let md: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let prog: &mut Xdp = ebpf.program_mut("bench_gen").context("bench_gen")?.try_into()?;
    ns.scoped(|| {
        hairpin_lab::pin_thread_to_cpu(0)?;
        let start = Instant::now();
        let mut sent = 0u64;
        while !sender::live_refused() && !done(sent, start.elapsed()) {
            let opts = TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&md),
                repeat: chunk,
                attrs: TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            };
            match prog.test_run(opts) {
                Ok(_) => sent += u64::from(chunk),
                Err(e) if refused(&e) && sent == 0 => sender::refuse_live(),
                Err(e) => return Err(e).context("live-frames test run of the generator"),
            }
        }
        if sender::live_refused() {
            return sender::send(ifindex, frames, chunk, &done);
        }
        Ok((sent, start.elapsed()))
    })
}

/// Whether the kernel refused the live-frames test run itself (EPERM).
fn refused(e: &aya::programs::ProgramError) -> bool {
    matches!(e, aya::programs::ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EPERM))
}

/// Attaches bench program `prog` to `iface` in `ns` (native XDP); it stays attached while the
/// object lives.
fn attach(ebpf: &mut Ebpf, prog: &str, ns: &Netns, iface: &str) -> anyhow::Result<()> {
    let index = ns.ifindex(iface)?;
    let p: &mut Xdp = ebpf.program_mut(prog).context("bench program missing")?.try_into()?;
    // XDP attaches by ifindex through a netlink socket of the calling thread's namespace.
    ns.scoped(|| {
        p.attach(index, XdpMode::Driver).with_context(|| format!("attaching {prog} to {iface}"))?;
        Ok(())
    })
}

/// The nftables rule an operator writes for the port-forward.
const NFT_DNAT: &str = "  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n    \
                        ip daddr 203.0.113.1 udp dport 9 dnat to 192.168.0.2\n  }\n";
/// Forwarded traffic also masqueraded towards the LAN (what hairpinning needs).
const NFT_MASQ_LAN: &str = "  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"lan0\" masquerade\n  }\n";
/// LAN hosts masqueraded to the internet.
const NFT_MASQ_WAN: &str = "  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"wan0\" masquerade\n  }\n";

/// Loads `chains` as table `ip hpbench` in the gateway.
fn nft(gw: &Netns, chains: &str) -> anyhow::Result<()> {
    hairpin_lab::nft::script(gw, &format!("table ip hpbench {{\n{chains}}}\n"))
}

/// Turns on threaded NAPI for `dev` in `ns` and pins its kthread (`napi/<dev>-<id>`) to
/// `cpu`. Returns what was pinned, for the report.
fn pin_napi(ns: &Netns, dev: &str, cpu: usize) -> anyhow::Result<String> {
    // `ip netns exec` mounts the namespace's own /sys for this one command.
    let threaded = format!("echo 1 > /sys/class/net/{dev}/threaded");
    run(Command::new("ip").args(["netns", "exec", &ns.name, "sh", "-c", &threaded]))?;
    let ps = run(Command::new("ps").args(["-eo", "pid=,comm="]))?;
    let mut pinned = Vec::new();
    for line in ps.lines() {
        let mut it = line.split_whitespace();
        let (Some(pid), Some(comm)) = (it.next(), it.next()) else { continue };
        if comm.starts_with(&format!("napi/{dev}-")) {
            run(Command::new("taskset").args(["-pc", &cpu.to_string(), pid]))?;
            pinned.push(format!("{comm} (pid {pid}) on CPU {cpu}"));
        }
    }
    ensure!(!pinned.is_empty(), "no NAPI kthread for {dev} after turning threaded NAPI on");
    Ok(pinned.join(", "))
}
