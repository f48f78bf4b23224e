//! The gateway as an operator declares it: interfaces, addresses, NAT settings, timeouts, how
//! the dataplane attaches, and every forward. It comes from a TOML file (`apply -f`,
//! `up --config`, `run --config`), from the flags of `up` and `run`, or is read back from the
//! live dataplane (`show`), and it is checked whole before anything is touched.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use hairpin_common::consts::{
    DEFAULT_MAX_FLOWS, DEFAULT_PORT_MAX, DEFAULT_PORT_MIN, IPPROTO_TCP, IPPROTO_UDP, MAX_FORWARDS,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// A protocol a forward can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize, Deserialize)]
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

/// The whole gateway. Sections left out of a file take their defaults; `lan.interface` and
/// `wan.interface` are the only required keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub lan: Lan,
    pub wan: Wan,
    #[serde(default)]
    pub nat: Nat,
    #[serde(default)]
    pub timeouts: hairpin_common::Timeouts,
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default, rename = "forward", skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<Forward>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lan {
    /// Where the servers and LAN clients are.
    pub interface: String,
    /// The gateway's LAN address, the source of hairpinned flows [default: the interface's
    /// primary IPv4 address].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// LAN sources outside it are not forwarded; WAN packets from or to it are dropped
    /// [default: the interface's primary address and prefix].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wan {
    /// Towards the internet.
    pub interface: String,
    /// The gateway's public address [default: the WAN interface's primary IPv4 address].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_address: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nat {
    /// Rewrite the source of LAN clients dialling the public address (NAT loopback).
    pub hairpin: bool,
    /// Source ports hairpinned and masqueraded flows may take.
    pub port_range: PortRange,
    pub udp_filtering: UdpFiltering,
}

impl Default for Nat {
    fn default() -> Self {
        Self {
            hairpin: true,
            port_range: PortRange { min: DEFAULT_PORT_MIN, max: DEFAULT_PORT_MAX },
            udp_filtering: UdpFiltering::AddressAndPortDependent,
        }
    }
}

/// How the dataplane attaches and how large it is: changing any of these means attaching it
/// again (`down`, then `up` or `apply`), which loses the flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dataplane {
    pub mode: Mode,
    pub xdp_mode: XdpAttachMode,
    pub tc_attach: TcAttachMode,
    /// Known flows translated whole and sent by the ingress program (a live setting).
    pub fast_path: bool,
    pub flow_cache: bool,
    pub max_flows: u32,
}

impl Default for Dataplane {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            xdp_mode: XdpAttachMode::Auto,
            tc_attach: TcAttachMode::Auto,
            fast_path: true,
            flow_cache: true,
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}

/// A port-forward: the public address's `port` for `proto` goes to `to`, a LAN host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub proto: Proto,
    pub port: u16,
    pub to: SocketAddrV4,
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.proto.name(), self.port, self.to)
    }
}

/// Where ingress runs: chosen per interface from what the kernel says of it (see
/// `crate::placement`), or XDP or TC on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Auto,
    Xdp,
    Tc,
}

/// How XDP attaches where it runs (see `up --xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpAttachMode {
    Auto,
    Native,
    Generic,
}

/// How TC programs attach (see `up --tc-attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TcAttachMode {
    Auto,
    Tcx,
    Netlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UdpFiltering {
    EndpointIndependent,
    AddressAndPortDependent,
}

/// An inclusive, non-empty range of non-zero ports, written `MIN-MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a port range MIN-MAX (e.g. 1024-65535)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let port = |p: &str| -> Result<u16, String> {
            let n: u64 = p.trim().parse().map_err(|_| bad())?;
            u16::try_from(n).map_err(|_| format!("'{s}': port {n} is above 65535"))
        };
        let (min, max) = (port(a)?, port(b)?);
        if min == 0 {
            return Err(format!("'{s}': ports start at 1"));
        }
        if min > max {
            return Err(format!("'{s}': the range is empty ({min} is above {max})"));
        }
        Ok(Self { min, max })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// An IPv4 prefix from the command line, with a message that shows the expected form; host bits
/// are cleared (192.168.0.1/24 means 192.168.0.0/24).
pub fn parse_prefix(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s.parse().map_err(|_| format!("'{s}' is not an IPv4 prefix ADDR/LEN (e.g. 192.168.0.0/24)"))?;
    if net.prefix_len() == 0 {
        return Err(format!("'{s}': the prefix length must be 1 to 32"));
    }
    Ok(net.trunc())
}

/// A problem with one key of a spec: its dotted path (`forward[2].to`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub what: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, what: impl Into<String>) -> Self {
        Self { key: key.into(), what: what.into() }
    }
}

/// The addresses a spec resolves to on this machine (its own, or the interfaces' defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    pub lan_ip: Ipv4Addr,
    pub lan_prefix: Ipv4Net,
    pub public_ip: Ipv4Addr,
}

/// Settings given one by one (the flags of `up` and `run`) over a spec: each `Some` sets its
/// key, each `None` leaves it as it is (a default, a file's, or the live dataplane's value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub lan: Option<String>,
    pub wan: Option<String>,
    pub public_address: Option<Ipv4Addr>,
    pub lan_address: Option<Ipv4Addr>,
    pub lan_prefix: Option<Ipv4Net>,
    pub hairpin: Option<bool>,
    pub fast_path: Option<bool>,
    pub flow_cache: Option<bool>,
    pub port_range: Option<PortRange>,
    pub udp_filtering: Option<UdpFiltering>,
    pub max_flows: Option<u32>,
    pub tcp_established: Option<u32>,
    pub tcp_transitory: Option<u32>,
    pub udp: Option<u32>,
    pub icmp: Option<u32>,
    pub mode: Option<Mode>,
    pub xdp_mode: Option<XdpAttachMode>,
    pub tc_attach: Option<TcAttachMode>,
}

impl Overrides {
    /// Sets in `spec` what is given; returns the keys set, in the order above.
    pub fn apply(&self, spec: &mut Spec) -> Vec<&'static str> {
        let mut given = Vec::new();
        fn put<T: Clone>(given: &mut Vec<&'static str>, key: &'static str, value: &Option<T>, to: &mut T) {
            if let Some(v) = value {
                given.push(key);
                *to = v.clone();
            }
        }
        let g = &mut given;
        put(g, "lan.interface", &self.lan, &mut spec.lan.interface);
        put(g, "wan.interface", &self.wan, &mut spec.wan.interface);
        put(g, "wan.public_address", &self.public_address.map(Some), &mut spec.wan.public_address);
        put(g, "lan.address", &self.lan_address.map(Some), &mut spec.lan.address);
        put(g, "lan.prefix", &self.lan_prefix.map(Some), &mut spec.lan.prefix);
        put(g, "nat.hairpin", &self.hairpin, &mut spec.nat.hairpin);
        put(g, "dataplane.fast_path", &self.fast_path, &mut spec.dataplane.fast_path);
        put(g, "dataplane.flow_cache", &self.flow_cache, &mut spec.dataplane.flow_cache);
        put(g, "nat.port_range", &self.port_range, &mut spec.nat.port_range);
        put(g, "nat.udp_filtering", &self.udp_filtering, &mut spec.nat.udp_filtering);
        put(g, "dataplane.max_flows", &self.max_flows, &mut spec.dataplane.max_flows);
        put(g, "timeouts.tcp_established", &self.tcp_established, &mut spec.timeouts.tcp_established);
        put(g, "timeouts.tcp_transitory", &self.tcp_transitory, &mut spec.timeouts.tcp_transitory);
        put(g, "timeouts.udp", &self.udp, &mut spec.timeouts.udp);
        put(g, "timeouts.icmp", &self.icmp, &mut spec.timeouts.icmp);
        put(g, "dataplane.mode", &self.mode, &mut spec.dataplane.mode);
        put(g, "dataplane.xdp_mode", &self.xdp_mode, &mut spec.dataplane.xdp_mode);
        put(g, "dataplane.tc_attach", &self.tc_attach, &mut spec.dataplane.tc_attach);
        given
    }

    /// The spec these settings describe over the defaults: both interfaces are needed.
    pub fn spec(&self) -> Option<Spec> {
        let mut spec = Spec::new(self.lan.as_deref()?, self.wan.as_deref()?);
        self.apply(&mut spec);
        Some(spec)
    }
}

impl Spec {
    /// The defaults, on these two interfaces.
    pub fn new(lan: &str, wan: &str) -> Self {
        Self {
            lan: Lan { interface: lan.into(), address: None, prefix: None },
            wan: Wan { interface: wan.into(), public_address: None },
            nat: Nat::default(),
            timeouts: hairpin_common::Timeouts::default(),
            dataplane: Dataplane::default(),
            forwards: Vec::new(),
        }
    }

    /// Reads a file's text: syntax and types first, then every rule of [`Spec::check`]. Errors start with `:LINE: ` (the caller puts the file first).
    pub fn parse(text: &str) -> Result<Self, String> {
        let spec: Spec = toml::from_str(text).map_err(|e| {
            let what = e.message().trim().replace('\n', " ");
            // A missing key's span is its table (for a missing section, the whole file).
            let span = e.span().filter(|_| !what.starts_with("missing field"));
            match span {
                Some(span) => match key_at(text, span.start) {
                    Some(key) => format!(":{}: {key}: {what}", line_of(text, span.start)),
                    None => format!(":{}: {what}", line_of(text, span.start)),
                },
                None => format!(": {what}"),
            }
        })?;
        if let Some(p) = spec.check().into_iter().next() {
            return Err(format!(
                "{}: {}: {}",
                key_line(text, &p.key).map_or(String::new(), |l| format!(":{l}")),
                p.key,
                p.what
            ));
        }
        Ok(spec)
    }

    /// The spec as a file says it, with a comment naming what wrote it.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a spec always serializes");
        format!("# hairpin gateway configuration (hairpin-ctl show); apply with: hairpin-ctl apply -f FILE\n\n{body}")
    }

    /// The rules that need nothing but the spec itself.
    pub fn check(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        self.check_interfaces(&mut p);
        self.check_settings(&mut p);
        self.check_forwards(&mut p);
        p
    }

    fn check_interfaces(&self, p: &mut Vec<Problem>) {
        if self.lan.interface.is_empty() {
            p.push(Problem::new("lan.interface", "must name an interface"));
        }
        if self.wan.interface.is_empty() {
            p.push(Problem::new("wan.interface", "must name an interface"));
        }
        if self.lan.interface == self.wan.interface {
            p.push(Problem::new(
                "wan.interface",
                format!("'{}' is also the LAN interface: they must be different", self.wan.interface),
            ));
        }
        if self.lan.interface == "lo" || self.wan.interface == "lo" {
            let key = if self.lan.interface == "lo" { "lan.interface" } else { "wan.interface" };
            p.push(Problem::new(key, "the loopback interface cannot be a gateway side"));
        }
    }

    fn check_settings(&self, p: &mut Vec<Problem>) {
        if let Some(net) = self.lan.prefix
            && net.prefix_len() == 0
        {
            p.push(Problem::new("lan.prefix", "the prefix length must be 1 to 32"));
        }
        for (key, ip) in [("lan.address", self.lan.address), ("wan.public_address", self.wan.public_address)] {
            if let Some(ip) = ip
                && !unicast(ip)
            {
                p.push(Problem::new(key, format!("{ip} is not a unicast host address")));
            }
        }
        let r = self.nat.port_range;
        if r.min == 0 || r.min > r.max {
            p.push(Problem::new("nat.port_range", format!("'{r}' must be non-empty and start above 0")));
        }
        let t = self.timeouts;
        for (key, v) in [
            ("timeouts.tcp_established", t.tcp_established),
            ("timeouts.tcp_transitory", t.tcp_transitory),
            ("timeouts.udp", t.udp),
            ("timeouts.icmp", t.icmp),
        ] {
            if v == 0 {
                p.push(Problem::new(key, "must be at least 1 second"));
            }
        }
        let d = self.dataplane;
        if d.mode == Mode::Tc && d.xdp_mode != XdpAttachMode::Auto {
            p.push(Problem::new(
                "dataplane.xdp_mode",
                "mode \"tc\" attaches no XDP: drop xdp_mode, or use mode \"xdp\"",
            ));
        }
        if !(1024..=16_777_216).contains(&d.max_flows) {
            p.push(Problem::new("dataplane.max_flows", format!("{} is outside 1024 to 16777216", d.max_flows)));
        }
    }

    fn check_forwards(&self, p: &mut Vec<Problem>) {
        if self.forwards.len() > MAX_FORWARDS as usize {
            p.push(Problem::new(
                "forward",
                format!("{} forwards; the dataplane holds {MAX_FORWARDS}", self.forwards.len()),
            ));
        }
        let mut seen = std::collections::HashMap::new();
        for (i, f) in self.forwards.iter().enumerate() {
            if f.port == 0 {
                p.push(Problem::new(format!("forward[{i}].port"), "port 0 cannot be forwarded"));
            }
            if f.to.port() == 0 {
                p.push(Problem::new(format!("forward[{i}].to"), "port 0 cannot be a target"));
            }
            if !unicast(*f.to.ip()) {
                p.push(Problem::new(
                    format!("forward[{i}].to"),
                    format!("{} is not a unicast host address", f.to.ip()),
                ));
            }
            if let Some(j) = seen.insert((f.proto, f.port), i) {
                p.push(Problem::new(
                    format!("forward[{i}]"),
                    format!("{} {} is forwarded twice (also forward[{j}])", f.proto.name(), f.port),
                ));
            }
        }
    }

    /// The rules on the addresses as resolved (the spec's own, or the interfaces'): the
    /// public address outside the LAN, the LAN address inside it and not the public one, and
    /// every forward's target a LAN host other than the gateway.
    pub fn check_addresses(&self, a: &Addresses) -> Vec<Problem> {
        let mut p = Vec::new();
        let net = a.lan_prefix;
        if !unicast(a.public_ip) {
            p.push(Problem::new("wan.public_address", format!("{} is not a unicast host address", a.public_ip)));
        }
        if net.contains(&a.public_ip) {
            p.push(Problem::new("wan.public_address", format!("{} is inside the LAN prefix {net}", a.public_ip)));
        }
        if !net.contains(&a.lan_ip) {
            p.push(Problem::new("lan.address", format!("{} is outside the LAN prefix {net}", a.lan_ip)));
        } else if net.prefix_len() < 31 && (a.lan_ip == net.network() || a.lan_ip == net.broadcast()) {
            p.push(Problem::new("lan.address", format!("{} is the network or broadcast address of {net}", a.lan_ip)));
        }
        if a.lan_ip == a.public_ip {
            p.push(Problem::new("lan.address", format!("{} is also the public address", a.lan_ip)));
        }
        for (i, f) in self.forwards.iter().enumerate() {
            if let Some(what) = target_problem(*f.to.ip(), a) {
                p.push(Problem::new(format!("forward[{i}].to"), what));
            }
        }
        p
    }
}

/// Why `ip` cannot be a forward's target on a gateway with these addresses, if it cannot.
pub fn target_problem(ip: Ipv4Addr, a: &Addresses) -> Option<String> {
    let net = a.lan_prefix;
    if ip == a.lan_ip {
        Some(format!("{ip} is the gateway's own LAN address: forward to a LAN host"))
    } else if ip == a.public_ip {
        Some(format!("{ip} is the gateway's public address: forward to a LAN host"))
    } else if !net.contains(&ip) {
        Some(format!("{ip} is outside the LAN prefix {net}"))
    } else if net.prefix_len() < 31 && (ip == net.network() || ip == net.broadcast()) {
        Some(format!("{ip} is the network or broadcast address of {net}"))
    } else {
        None
    }
}

fn unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted path of the key written at byte `offset` (its name or its value), if any.
fn key_at(text: &str, offset: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    // A table's own span may cover only its header: look inside every table.
    fn in_value(v: &DeValue, offset: usize) -> Option<String> {
        match v {
            DeValue::Table(t) => in_table(t, offset),
            DeValue::Array(items) => items.iter().enumerate().find_map(|(i, x)| {
                let inner = in_value(x.get_ref(), offset);
                match inner {
                    Some(rest) => Some(format!("[{i}].{rest}")),
                    None => x.span().contains(&offset).then(|| format!("[{i}]")),
                }
            }),
            _ => None,
        }
    }
    fn in_table(t: &DeTable, offset: usize) -> Option<String> {
        t.iter().find_map(|(k, v)| {
            let name = k.get_ref();
            match in_value(v.get_ref(), offset) {
                Some(rest) if rest.starts_with('[') => Some(format!("{name}{rest}")),
                Some(rest) => Some(format!("{name}.{rest}")),
                None => (k.span().contains(&offset) || v.span().contains(&offset)).then(|| name.to_string()),
            }
        })
    }
    let (root, _) = DeTable::parse_recoverable(text);
    in_table(root.get_ref(), offset)
}

/// The line where the key at a dotted path (`forward[2].to`) is written, if it is.
pub fn key_line(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut span = root.span();
    let mut value = DeValue::Table(root.into_inner());
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let v = value.get(name)?.clone();
        span = v.span();
        value = v.into_inner();
        if let Some(i) = index {
            let v = value.get(i)?.clone();
            span = v.span();
            value = v.into_inner();
        }
    }
    Some(line_of(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../contrib/hairpin.toml");

    fn addrs() -> Addresses {
        Addresses {
            lan_ip: "192.168.0.1".parse().unwrap(),
            lan_prefix: "192.168.0.0/24".parse().unwrap(),
            public_ip: "203.0.113.1".parse().unwrap(),
        }
    }

    #[test]
    fn the_example_file_parses_and_round_trips() {
        let spec = Spec::parse(EXAMPLE).unwrap();
        assert!(spec.check_addresses(&addrs()).is_empty(), "{:?}", spec.check_addresses(&addrs()));
        assert_eq!(Spec::parse(&spec.to_toml()).unwrap(), spec);
        assert!(!spec.forwards.is_empty());
    }

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let spec = Spec::parse("[lan]\ninterface = \"eth1\"\n[wan]\ninterface = \"eth0\"\n").unwrap();
        assert_eq!(spec, Spec::new("eth1", "eth0"));
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        for (text, needle) in [
            (
                "[lan]\ninterface = \"a\"\n[wan]\ninterface = \"b\"\n[nat]\nport_range = \"100-70000\"\n",
                ":6: nat.port_range: ",
            ),
            (
                "[lan]\ninterface = \"a\"\n[wan]\ninterface = \"b\"\n[nat]\nport_range = \"100-70000\"\n",
                "port 70000 is above 65535",
            ),
            ("[lan]\ninterface = \"a\"\n[wan]\ninterface = \"b\"\nbogus = 1\n", ":5: wan.bogus: unknown field `bogus`"),
            ("[lan]\ninterface = \"a\"\n", "missing field `wan`"),
            (
                "[lan]\ninterface = \"a\"\n[wan]\ninterface = \"a\"\n",
                ":4: wan.interface: 'a' is also the LAN interface",
            ),
            (
                "[lan]\ninterface = \"a\"\n[wan]\ninterface = \"b\"\n[[forward]]\nproto = \"tcp\"\nport = 80\nto = \"192.168.0.2:80\"\n\n[[forward]]\nproto = \"tcp\"\nport = 80\nto = \"192.168.0.3:80\"\n",
                ":10: forward[1]: tcp 80 is forwarded twice (also forward[0])",
            ),
            (
                "[lan]\ninterface = \"a\"\n[wan]\ninterface = \"b\"\n[dataplane]\nmode = \"tc\"\nxdp_mode = \"native\"\n",
                ":7: dataplane.xdp_mode",
            ),
            (
                "[lan]\ninterface = \"a\"\n[wan]\ninterface = \"b\"\n[timeouts]\nudp = 0\n",
                ":6: timeouts.udp: must be at least 1",
            ),
            ("[lan]\ninterface = \"lo\"\n[wan]\ninterface = \"b\"\n", ":2: lan.interface: the loopback"),
            ("[lan]\ninterface = \"a\"\naddress = \"255.255.255.255\"\n[wan]\ninterface = \"b\"\n", ":3: lan.address"),
        ] {
            let e = Spec::parse(text).expect_err(text);
            assert!(e.contains(needle), "{text}\n=> {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn address_sanity() {
        let spec = |fwd: &str| {
            Spec::parse(&format!(
                "[lan]\ninterface = \"a\"\n[wan]\ninterface = \"b\"\n[[forward]]\nproto = \"udp\"\nport = 53\nto = \"{fwd}\"\n"
            ))
            .unwrap()
        };
        assert!(spec("192.168.0.2:53").check_addresses(&addrs()).is_empty());
        for (to, needle) in [
            ("192.168.0.1:53", "own LAN address"),
            ("203.0.113.1:53", "public address"),
            ("10.0.0.2:53", "outside the LAN prefix"),
            ("192.168.0.255:53", "broadcast"),
        ] {
            let p = spec(to).check_addresses(&addrs());
            assert!(p.iter().any(|p| p.key == "forward[0].to" && p.what.contains(needle)), "{to}: {p:?}");
        }
        let s = Spec::new("a", "b");
        for (a, key, needle) in [
            (
                Addresses { public_ip: "192.168.0.9".parse().unwrap(), ..addrs() },
                "wan.public_address",
                "inside the LAN",
            ),
            (Addresses { public_ip: "0.0.0.0".parse().unwrap(), ..addrs() }, "wan.public_address", "unicast"),
            (Addresses { lan_ip: "10.0.0.1".parse().unwrap(), ..addrs() }, "lan.address", "outside the LAN prefix"),
            (Addresses { lan_ip: "192.168.0.0".parse().unwrap(), ..addrs() }, "lan.address", "network or broadcast"),
        ] {
            let p = s.check_addresses(&a);
            assert!(p.iter().any(|p| p.key == key && p.what.contains(needle)), "{a:?}: {p:?}");
        }
    }

    #[test]
    fn port_ranges_say_what_is_wrong() {
        assert_eq!("1024-65535".parse::<PortRange>(), Ok(PortRange { min: 1024, max: 65535 }));
        assert!("100-70000".parse::<PortRange>().unwrap_err().contains("port 70000 is above 65535"));
        assert!("2000-1000".parse::<PortRange>().unwrap_err().contains("empty"));
        assert!("0-10".parse::<PortRange>().unwrap_err().contains("start at 1"));
        assert!("1024".parse::<PortRange>().unwrap_err().contains("MIN-MAX"));
        assert_eq!(parse_prefix("192.168.0.1/24").unwrap().to_string(), "192.168.0.0/24");
        assert!(parse_prefix("192.168.0.0").unwrap_err().contains("ADDR/LEN"));
    }
}
