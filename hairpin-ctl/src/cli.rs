//! The command line. Values are parsed into checked types here ([`Proto`], [`PublicEndpoint`]),
//! so a bad argument is rejected by clap with a one-line error before anything is touched.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    str::FromStr,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use hairpin_common::consts::{DEFAULT_MAX_FLOWS, DEFAULT_PORT_MAX, DEFAULT_PORT_MIN, IPPROTO_TCP, IPPROTO_UDP};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/hairpin";

/// hairpin: port forwarding and hairpin NAT for a Linux gateway, in eBPF.
///
/// hairpin translates a gateway's port-forwards in XDP and TC programs. A LAN host that dials
/// the gateway's public address reaches the forwarded LAN server too ("hairpin" or NAT
/// loopback): the gateway rewrites the source to its own LAN address so the server's reply comes
/// back through it. Other LAN traffic routed out of the WAN is masqueraded to the public address.
///
/// Typical use:
///   hairpin-ctl up --lan eth1 --wan eth0
///   hairpin-ctl map add tcp 203.0.113.1:80 192.168.0.2:80
///   hairpin-ctl flows
///   hairpin-ctl down
#[derive(Debug, Parser)]
#[command(name = "hairpin-ctl", version, verbatim_doc_comment, propagate_version = true)]
pub struct Cli {
    /// Directory in bpffs where the maps and program links are pinned. Several gateways (in
    /// different network namespaces) can run side by side with different pin directories.
    #[arg(long, global = true, env = "HAIRPIN_PIN_DIR", default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the dataplane to the LAN and WAN interfaces and pin its state, then exit.
    ///
    /// Loads the XDP programs (ingress, destination rewrites) on both interfaces and the TC
    /// programs (egress, source rewrites) on both, and pins maps and links under the pin
    /// directory: the dataplane keeps running after this command returns, until `down`.
    /// Either everything is attached and pinned, or nothing is. LAN traffic that the kernel
    /// routes out of the WAN interface is masqueraded to the public address.
    Up(UpArgs),
    /// Detach the dataplane and remove everything pinned under the pin directory.
    Down,
    /// Add, delete or list port-forward mappings.
    #[command(subcommand)]
    Map(MapCommand),
    /// Show the per-reason packet counters of every hook (summed over CPUs), new flows dropped
    /// for want of a public port or table space (per protocol), and how full the tables and
    /// public port pools are.
    Stats(JsonArg),
    /// Show the conntrack entries (one per direction of each flow; an ICMP echo flow shows its
    /// identifier as the port), or flush them.
    Flows(FlowsArgs),
    /// Attach like `up` (or adopt a dataplane already pinned here), then expire idle flows
    /// until SIGTERM or SIGINT, leaving the dataplane running on exit. At every sweep it also
    /// reads what the kernel says of the interfaces (whether they take XDP frames) and the XDP
    /// frames the kernel refused, and stops or resumes the XDP fast path into each, saying so.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    #[command(subcommand)]
    pub action: Option<FlowsAction>,
    /// Print a JSON array, one object per entry.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum FlowsAction {
    /// Remove every flow (both directions and their rewrites) and every binding. Established
    /// connections through the gateway break; port-forwards and masquerade create new flows
    /// for new traffic, and LAN hosts may get other public ports.
    Flush,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub up: UpArgs,
    /// Seconds between two sweeps of the flow table.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600), value_name = "SECS")]
    pub sweep_interval: u32,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// LAN-side interface (where the servers and LAN clients are).
    #[arg(long, value_name = "IFACE")]
    pub lan: String,
    /// WAN-side interface (towards the internet).
    #[arg(long, value_name = "IFACE")]
    pub wan: String,
    /// The gateway's public address [default: the WAN interface's primary IPv4 address].
    #[arg(long, value_name = "ADDR")]
    pub public_ip: Option<Ipv4Addr>,
    /// The gateway's LAN address, the source of hairpinned flows [default: the LAN
    /// interface's primary IPv4 address].
    #[arg(long, value_name = "ADDR")]
    pub lan_ip: Option<Ipv4Addr>,
    /// The LAN prefix, e.g. 192.168.0.0/24 [default: the LAN interface's primary address and
    /// prefix]. LAN sources outside it are not forwarded; WAN packets from or to it are dropped.
    #[arg(long, value_name = "CIDR")]
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
    /// client's own port is kept when it lies in the range and is free).
    #[arg(long, default_value_t = PortRange { min: DEFAULT_PORT_MIN, max: DEFAULT_PORT_MAX }, value_name = "MIN-MAX")]
    pub port_range: PortRange,
    /// Which internet hosts may send to the public UDP port a LAN host's traffic was given:
    /// address-and-port-dependent allows only those it has sent to (like netfilter);
    /// endpoint-independent allows any ("full cone", what peer-to-peer games and calls want).
    /// TCP is always address-and-port-dependent. Either way a LAN host keeps one public port
    /// for all its destinations.
    #[arg(long, value_enum, default_value_t = UdpFiltering::AddressAndPortDependent, value_name = "MODE")]
    pub udp_filtering: UdpFiltering,
    /// Flows the gateway can track at once (each takes two conntrack entries and up to two
    /// egress rewrites, about 350 bytes, allocated up front, and 128-256 bytes of flow
    /// cache). When full, the least recently used flows are evicted (with the flow cache,
    /// "used" is looked up in conntrack: every few seconds for a busy flow). Fixed once up:
    /// `run` adopting a dataplane keeps its size.
    #[arg(long, default_value_t = DEFAULT_MAX_FLOWS, value_parser = clap::value_parser!(u32).range(1024..=16_777_216), value_name = "N")]
    pub max_flows: u32,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// Where ingress runs. auto: per interface, native XDP where the driver has it and
    /// receives from a wire (NICs, virtio-net, bonds of them), TC ingress elsewhere (veth,
    /// tun, bridge, VLAN, ...: XDP cannot see the checksum offload of a local sender, and a
    /// veth loses XDP frames unless its peer runs XDP). xdp: XDP on both (native, else
    /// generic). tc: TC ingress on both. The translation and the fast path are the same code
    /// in XDP and TC; `up` prints what it chose per interface and why.
    #[arg(long, value_enum, default_value_t = crate::dataplane::Mode::Auto, value_name = "MODE")]
    pub mode: crate::dataplane::Mode,
    /// Attach XDP on both interfaces this way, overriding the choice of --mode auto: native
    /// (in the driver; fails where the driver has none) or generic (on the skb, any
    /// interface; it cannot see checksums left to offload, so only for senders with complete
    /// ones). auto: as --mode decides.
    #[arg(long, value_enum, default_value_t = XdpAttachMode::Auto, value_name = "MODE")]
    pub xdp_mode: XdpAttachMode,
    /// How the TC programs attach: tcx (bpf_links, kernel 6.6 and later, pinned under the pin
    /// directory), netlink (a clsact qdisc and cls_bpf filters, any kernel: they stay until
    /// `down`, which removes exactly hairpin's, by program name), or auto (TCX where the kernel
    /// takes it, else netlink).
    #[arg(long, value_enum, default_value_t = crate::dataplane::TcAttachMode::Auto, value_name = "MODE")]
    pub tc_attach: crate::dataplane::TcAttachMode,
}

/// Idle timeouts (seconds), enforced by `hairpin-ctl run`.
#[derive(Debug, Args, Clone, Copy)]
pub struct TimeoutArgs {
    /// Idle timeout of established TCP flows (RFC 5382 asks at least 7440).
    #[arg(long, default_value_t = 7440, value_parser = clap::value_parser!(u32).range(1..), value_name = "SECS")]
    pub tcp_established_timeout: u32,
    /// Idle timeout of TCP flows opening (SYN seen) or closing (FIN or RST seen).
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u32).range(1..), value_name = "SECS")]
    pub tcp_transitory_timeout: u32,
    /// Idle timeout of UDP flows, refreshed by outbound packets only (RFC 4787 asks at least 120).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..), value_name = "SECS")]
    pub udp_timeout: u32,
    /// Idle timeout of ICMP flows.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..), value_name = "SECS")]
    pub icmp_timeout: u32,
}

impl TimeoutArgs {
    pub fn to_timeouts(self) -> hairpin_common::Timeouts {
        hairpin_common::Timeouts {
            tcp_established: self.tcp_established_timeout,
            tcp_transitory: self.tcp_transitory_timeout,
            udp: self.udp_timeout,
            icmp: self.icmp_timeout,
        }
    }
}

/// An IPv4 prefix `ADDR/LEN` (host bits are cleared: 192.168.0.1/24 means 192.168.0.0/24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, len: u8) -> Self {
        let net = Ipv4Addr::from(u32::from(addr) & u32::from(Self::mask_of(len)));
        Self { addr: net, len }
    }
    fn mask_of(len: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0))
    }
    pub fn mask(&self) -> Ipv4Addr {
        Self::mask_of(self.len)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not an IPv4 prefix ADDR/LEN (e.g. 192.168.0.0/24)");
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        if !(1..=32).contains(&len) {
            return Err(format!("'{s}': the prefix length must be 1 to 32"));
        }
        Ok(Self::new(addr, len))
    }
}

/// An inclusive, non-empty range of non-zero ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a port range MIN-MAX (e.g. 1024-65535)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (min, max): (u16, u16) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if min == 0 || min > max {
            return Err(format!("'{s}': the range must be non-empty and start above 0"));
        }
        Ok(Self { min, max })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UdpFiltering {
    EndpointIndependent,
    AddressAndPortDependent,
}

impl UpArgs {
    /// The `Config::flags` these arguments ask for.
    pub fn config_flags(&self) -> u32 {
        use hairpin_common::{CFG_F_FAST_PATH, CFG_F_HAIRPIN, CFG_F_UDP_EIF};
        let hairpin = if self.no_hairpin { 0 } else { CFG_F_HAIRPIN };
        let eif = if self.udp_filtering == UdpFiltering::EndpointIndependent { CFG_F_UDP_EIF } else { 0 };
        let fast = if self.no_fast_path { 0 } else { CFG_F_FAST_PATH };
        hairpin | eif | fast
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpAttachMode {
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Forward PUBLIC_IP:PORT to PRIVATE_IP:PORT for one protocol.
    ///
    /// Example: hairpin-ctl map add tcp 203.0.113.1:80 192.168.0.2:80
    /// The public address must be the gateway's public address given to `up`.
    Add {
        #[arg(value_enum)]
        proto: Proto,
        /// Public address and port, e.g. 203.0.113.1:80.
        #[arg(value_name = "PUBLIC_IP:PORT")]
        public: Endpoint,
        /// LAN server address and port, e.g. 192.168.0.2:80.
        #[arg(value_name = "PRIVATE_IP:PORT")]
        private: Endpoint,
    },
    /// Delete a mapping, and the flows it created (the forward stops at once).
    Del {
        #[arg(value_enum)]
        proto: Proto,
        #[arg(value_name = "PUBLIC_IP:PORT")]
        public: Endpoint,
    },
    /// List the mappings.
    List(JsonArg),
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print a JSON array, one object per entry.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            IPPROTO_TCP => Some(Proto::Tcp),
            IPPROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// An IPv4 `ADDR:PORT` with a non-zero port and a usable unicast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(pub SocketAddrV4);

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let sa: SocketAddrV4 =
            s.parse().map_err(|_| format!("'{s}' is not an IPv4 ADDR:PORT (e.g. 192.168.0.2:80)"))?;
        if sa.port() == 0 {
            return Err(format!("'{s}': port 0 cannot be forwarded"));
        }
        let ip = sa.ip();
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(format!("'{s}': {ip} is not a unicast host address"));
        }
        Ok(Endpoint(sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hairpin-ctl").chain(args.iter().copied()))
    }

    #[test]
    fn pin_dir_is_global_before_or_after_the_subcommand() {
        let a = parse(&["--pin-dir", "/sys/fs/bpf/a", "map", "list"]).unwrap();
        let b = parse(&["map", "list", "--pin-dir", "/sys/fs/bpf/b"]).unwrap();
        assert_eq!(a.pin_dir, PathBuf::from("/sys/fs/bpf/a"));
        assert_eq!(b.pin_dir, PathBuf::from("/sys/fs/bpf/b"));
        assert!(matches!(b.command, Command::Map(MapCommand::List(JsonArg { json: false }))));
    }

    #[test]
    fn map_add_parses_protocol_and_endpoints() {
        let c = parse(&["map", "add", "udp", "203.0.113.1:5353", "192.168.0.2:53"]).unwrap();
        let Command::Map(MapCommand::Add { proto, public, private }) = c.command else { panic!("{c:?}") };
        assert_eq!(proto, Proto::Udp);
        assert_eq!(public.0, "203.0.113.1:5353".parse().unwrap());
        assert_eq!(private.0, "192.168.0.2:53".parse().unwrap());
    }

    #[test]
    fn bad_arguments_are_rejected_with_a_reason() {
        for (args, needle) in [
            (&["map", "add", "sctp", "203.0.113.1:80", "192.168.0.2:80"][..], "invalid value 'sctp'"),
            (&["map", "add", "tcp", "203.0.113.1:0", "192.168.0.2:80"][..], "port 0"),
            (&["map", "add", "tcp", "203.0.113.1:80", "192.168.0.2"][..], "not an IPv4 ADDR:PORT"),
            (&["map", "add", "tcp", "203.0.113.300:80", "192.168.0.2:80"][..], "not an IPv4 ADDR:PORT"),
            (&["map", "add", "tcp", "224.0.0.1:80", "192.168.0.2:80"][..], "not a unicast"),
            (&["map", "add", "tcp", "203.0.113.1:80"][..], "PRIVATE_IP:PORT"),
            (&["map", "del", "tcp", "[::1]:80"][..], "not an IPv4"),
            (&["up", "--lan", "a"][..], "--wan"),
            (&["up", "--lan", "a", "--wan", "b", "--public-ip", "nope"][..], "invalid value 'nope'"),
            (&["up", "--lan", "a", "--wan", "b", "--port-range", "2000-1000"][..], "non-empty"),
            (&["up", "--lan", "a", "--wan", "b", "--port-range", "0-10"][..], "start above 0"),
            (&["up", "--lan", "a", "--wan", "b", "--port-range", "1024"][..], "MIN-MAX"),
            (&["up", "--lan", "a", "--wan", "b", "--udp-timeout", "0"][..], "--udp-timeout"),
            (&["up", "--lan", "a", "--wan", "b", "--lan-prefix", "192.168.0.0"][..], "ADDR/LEN"),
            (&["up", "--lan", "a", "--wan", "b", "--lan-prefix", "192.168.0.0/0"][..], "1 to 32"),
            (&["run", "--lan", "a", "--wan", "b", "--sweep-interval", "0"][..], "--sweep-interval"),
            (&["up", "--lan", "a", "--wan", "b", "--udp-filtering", "full-cone"][..], "endpoint-independent"),
            (&["up", "--lan", "a", "--wan", "b", "--max-flows", "10"][..], "--max-flows"),
            (&["up", "--lan", "a", "--wan", "b", "--mode", "ebpf"][..], "[possible values: auto, xdp, tc]"),
            (&["flows", "purge"][..], "unrecognized subcommand"),
        ] {
            let e = parse(args).expect_err(&format!("{args:?} should fail")).to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn run_takes_the_flags_of_up_and_timeouts_default_to_the_rfc_values() {
        let c = parse(&["run", "--lan", "l", "--wan", "w", "--udp-timeout", "30"]).unwrap();
        let Command::Run(r) = c.command else { panic!() };
        assert_eq!((r.up.lan.as_str(), r.up.wan.as_str()), ("l", "w"));
        let t = r.up.timeouts.to_timeouts();
        assert_eq!((t.tcp_established, t.tcp_transitory, t.udp, t.icmp), (7440, 240, 30, 60));
        // Address-and-port-dependent UDP filtering by default, like netfilter; hairpin and the
        // fast path on.
        assert_eq!(r.up.config_flags(), hairpin_common::CFG_F_HAIRPIN | hairpin_common::CFG_F_FAST_PATH);
        let eif = parse(&[
            "up",
            "--lan",
            "l",
            "--wan",
            "w",
            "--udp-filtering",
            "endpoint-independent",
            "--no-hairpin",
            "--no-fast-path",
        ]);
        let Command::Up(u) = eif.unwrap().command else { panic!() };
        assert_eq!(u.config_flags(), hairpin_common::CFG_F_UDP_EIF);
        assert_eq!(u.max_flows, hairpin_common::consts::DEFAULT_MAX_FLOWS);
        assert!(matches!(
            parse(&["flows", "flush"]).unwrap().command,
            Command::Flows(FlowsArgs { action: Some(FlowsAction::Flush), .. })
        ));
    }

    #[test]
    fn lan_prefix_clears_host_bits() {
        let n: Ipv4Net = "192.168.0.1/24".parse().unwrap();
        assert_eq!((n.addr, n.mask()), (Ipv4Addr::new(192, 168, 0, 0), Ipv4Addr::new(255, 255, 255, 0)));
        let h: Ipv4Net = "10.1.2.3/32".parse().unwrap();
        assert_eq!((h.addr, h.mask()), (Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::BROADCAST));
    }

    #[test]
    fn help_renders() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("hairpin") && help.contains("--pin-dir"));
    }
}
