//! The arguments of the commands that declare the gateway: `up`, `run` (the same settings as
//! flags, or a file) and `apply`. The flags become [`Overrides`] of a spec; nothing here reads
//! a file or touches the system.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::Args;
use ipnet::Ipv4Net;

use crate::spec::{self, Mode, Overrides, PortRange, TcAttachMode, UdpFiltering, XdpAttachMode};

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
    /// The settings the flags give (a `--no-*` flag given sets its key off; one not given
    /// leaves it).
    pub fn overrides(&self) -> Overrides {
        let off = |given: bool| given.then_some(false);
        let t = &self.timeouts;
        Overrides {
            lan: self.lan.clone(),
            wan: self.wan.clone(),
            public_address: self.public_ip,
            lan_address: self.lan_ip,
            lan_prefix: self.lan_prefix,
            hairpin: off(self.no_hairpin),
            fast_path: off(self.no_fast_path),
            flow_cache: off(self.no_flow_cache),
            port_range: self.port_range,
            udp_filtering: self.udp_filtering,
            max_flows: self.max_flows,
            tcp_established: t.tcp_established_timeout,
            tcp_transitory: t.tcp_transitory_timeout,
            udp: t.udp_timeout,
            icmp: t.icmp_timeout,
            mode: self.mode,
            xdp_mode: self.xdp_mode,
            tc_attach: self.tc_attach,
        }
    }
}

/// The command-line flag that sets a spec key (problems with settings given as flags name the
/// flag).
pub fn flag_of(key: &str) -> String {
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

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// How `run` logs (stdout; journald adds its own time stamps): text lines with a time
    /// stamp and a level, or JSON lines (`timestamp`, `level`, `message`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
    /// Log every flow that starts or ends (as `flows --watch` shows them), not only what
    /// needs an operator's eye.
    #[arg(long)]
    pub log_flows: bool,
    /// Seconds between two sweeps of the flow table.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600), value_name = "SECS")]
    pub sweep_interval: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The configuration file (TOML; see contrib/hairpin.toml).
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// Check the file and print the difference; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}
