//! Builds the lab's namespaces and links, runs hairpin-ctl in the gateway, tears it all down.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::Output,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

use crate::{Netns, netns::run, traffic::Servers};

pub const GW_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 3);
/// Documentation ranges (RFC 5737) stand in for the internet.
pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const INET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// A host one router further: the internet host routes for it, so a packet with TTL 2 from
/// the LAN expires there (the gateway is the first hop).
pub const FAR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

pub const HTTP_PORT: u16 = 80;
pub const ALT_HTTP_PORT: u16 = 8080;
pub const DNS_PORT: u16 = 53;
pub const PUBLIC_DNS_PORT: u16 = 5353;

/// The port-forwards the scenarios use: (proto, public port, private port).
pub const MAPPINGS: [(&str, u16, u16); 3] =
    [("tcp", HTTP_PORT, HTTP_PORT), ("tcp", ALT_HTTP_PORT, HTTP_PORT), ("udp", PUBLIC_DNS_PORT, DNS_PORT)];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// What runs on the far ends of the gateway's veths (the bridge port facing it, the internet
/// host's interface). The hosts keep their default offloads (but with [`Peers::Xdp`]): they
/// send TSO super-packets with checksums left to offload, as hosts in namespaces and
/// containers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Nothing: no XDP program, GRO off (a veth's default). What a user's namespaces and
    /// containers look like, and what the lab tests run on.
    Plain,
    /// GRO on, no XDP program: the veth then advertises that it takes XDP frames, yet XDP_TX
    /// frames into it wait in its peer's ring.
    Gro,
    /// A pass-through XDP program: XDP frames redirected or sent back into the gateway's
    /// veths are delivered (what `--xdp-mode native` on a veth needs); and hosts that send
    /// complete checksums (TX checksum offload off), which XDP cannot tell from partial ones.
    /// A benchmark harness, not what users' namespaces look like.
    Xdp,
    /// The LAN a macvlan network instead of a bridge of veths: the gateway's lan0 and the LAN
    /// hosts' eth0 are macvlan children (bridge mode) of one parent, as on a container's
    /// macvlan network. The driver switches frames between them itself, checksums left to
    /// offload included; lan0 has no peer. The WAN is as in [`Peers::Plain`].
    MacvlanLan,
    /// The gateway's lan0 and wan0 are NICs of the machine, each cabled to another of its
    /// NICs: the switch's port and the internet host's eth0. [`NICS_ENV`] names the four by
    /// MAC; `cargo xtask vmtest` gives its guests four virtio-net NICs wired so by qemu, so
    /// that native XDP is tested on a real driver too. The rest is as [`Peers::Plain`].
    Nics,
}

/// The machine's NICs [`Peers::Nics`] takes, by MAC, comma-separated: the gateway's LAN NIC
/// and the switch's port it is cabled to, the gateway's WAN NIC and the internet host's it is
/// cabled to.
pub const NICS_ENV: &str = "HAIRPIN_LAB_NICS";

pub struct Lab {
    pub prefix: String,
    pub pin_dir: PathBuf,
    ctl: PathBuf,
    servers: Option<Servers>,
    inet_servers: Option<Servers>,
    /// xdp_pass on the far ends of the gateway's veths ([`Peers::Xdp`]).
    xdp_pass: Vec<crate::xdp_pass::XdpPass>,
    // Dropped in declaration order: servers above stop first, then the namespaces.
    pub gw: Netns,
    pub sw: Netns,
    pub srv: Netns,
    pub cli: Netns,
    pub inet: Netns,
    pub far: Netns,
}

impl Lab {
    /// Creates the plain topology under a unique prefix; hairpin is not up yet.
    pub fn new(ctl: PathBuf) -> anyhow::Result<Self> {
        Self::with_peers(ctl, Peers::Plain)
    }

    /// Creates the topology with `peers` on the far ends of the gateway's veths.
    pub fn with_peers(ctl: PathBuf, peers: Peers) -> anyhow::Result<Self> {
        let (pid, seq) = (std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let prefix = format!("hp{pid}x{seq}");
        let ns = |role: &str| Netns::new(&format!("{prefix}-{role}"));
        // Each Netns deletes itself if a later step fails.
        let (gw, sw, srv, cli, inet, far) = (ns("gw")?, ns("sw")?, ns("srv")?, ns("cli")?, ns("inet")?, ns("far")?);
        let lab = Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
            prefix,
            ctl,
            servers: None,
            inet_servers: None,
            xdp_pass: Vec::new(),
            gw,
            sw,
            srv,
            cli,
            inet,
            far,
        };
        let mut lab = lab;
        // The gateway's interfaces get indices no other lab running beside this one has: some
        // of the dataplane's counters are keyed by index, host-wide (see hairpin-ebpf's
        // `refused.rs`).
        let gw_ifindex = 100_000 + (pid % 20_000) * 100 + (seq % 50) * 2;
        lab.wire(gw_ifindex, peers).context("building the lab topology")?;
        if peers == Peers::Xdp {
            for host in [&lab.srv, &lab.cli, &lab.inet, &lab.far] {
                host.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
            }
        }
        match peers {
            Peers::Plain | Peers::MacvlanLan | Peers::Nics => {}
            Peers::Gro => {
                for (ns, iface) in lab.peers() {
                    ns.exec("ethtool", &["-K", iface, "gro", "on"])?;
                }
            }
            Peers::Xdp => lab.attach_peer_xdp()?,
        }
        Ok(lab)
    }

    /// Builds the topology `peers` says; the gateway's lan0 and wan0 get indices `gw_ifindex`
    /// and the next (but NICs, which have theirs).
    fn wire(&self, gw_ifindex: u32, peers: Peers) -> anyhow::Result<()> {
        let Self { gw, sw, srv, cli, inet, far, .. } = self;
        let lan = [(gw, "p-gw", "lan0", Some(gw_ifindex)), (srv, "p-srv", "eth0", None), (cli, "p-cli", "eth0", None)];
        if peers == Peers::Nics {
            sw.ip(&["link", "add", "br0", "type", "bridge"])?;
            sw.ip(&["link", "set", "br0", "up"])?;
            let macs = std::env::var(NICS_ENV).with_context(|| format!("{NICS_ENV} is not set: which NICs?"))?;
            let macs: Vec<&str> = macs.split(',').collect();
            anyhow::ensure!(macs.len() == 4, "{NICS_ENV} must name four NICs: {macs:?}");
            let nics = [(gw, "lan0"), (sw, "p-gw"), (gw, "wan0"), (inet, "eth0")];
            for (mac, (ns, name)) in macs.into_iter().zip(nics) {
                take_nic(mac, ns, name)?;
            }
            sw.ip(&["link", "set", "p-gw", "master", "br0"])?;
            for (host, port, ifname, index) in &lan[1..] {
                veth(host, ifname, *index, sw, port)?;
                sw.ip(&["link", "set", port, "master", "br0", "up"])?;
            }
        } else if peers == Peers::MacvlanLan {
            // The switch: one parent (a veth, its peer beside it) whose children are the LAN.
            sw.ip(&["link", "add", "uplink", "type", "veth", "peer", "name", "uplink-p"])?;
            for (host, _, ifname, index) in lan {
                macvlan(sw, "uplink", host, ifname, index)?;
            }
        } else {
            // The switch: a bridge joining the gateway's LAN port and the two LAN hosts.
            sw.ip(&["link", "add", "br0", "type", "bridge"])?;
            sw.ip(&["link", "set", "br0", "up"])?;
            for (host, port, ifname, index) in lan {
                veth(host, ifname, index, sw, port)?;
                sw.ip(&["link", "set", port, "master", "br0", "up"])?;
            }
        }
        if peers != Peers::Nics {
            veth(gw, "wan0", Some(gw_ifindex + 1), inet, "eth0")?;
        }
        veth(inet, "eth1", None, far, "eth0")?;
        for ns in [gw, sw, srv, cli, inet, far] {
            for link in links(ns)? {
                ns.ip(&["link", "set", &link, "up"])?;
            }
        }

        gw.ip(&["addr", "add", "192.168.0.1/24", "dev", "lan0"])?;
        gw.ip(&["addr", "add", "203.0.113.1/24", "dev", "wan0"])?;
        gw.ip(&["route", "add", "198.51.100.0/24", "dev", "wan0"])?;
        gw.ip(&["route", "add", "192.0.2.0/24", "via", "198.51.100.7", "dev", "wan0"])?;
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        // Hairpinned packets leave lan0 the way they came in; a redirect would tell the client
        // to bypass the gateway.
        gw.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        gw.sysctl("net.ipv4.conf.lan0.send_redirects", "0")?;

        for (host, addr) in [(srv, "192.168.0.2/24"), (cli, "192.168.0.3/24")] {
            host.ip(&["addr", "add", addr, "dev", "eth0"])?;
            host.ip(&["route", "add", "default", "via", "192.168.0.1"])?;
        }
        inet.ip(&["addr", "add", "198.51.100.7/24", "dev", "eth0"])?;
        inet.ip(&["route", "add", "203.0.113.0/24", "dev", "eth0"])?;
        // The internet host is also the router in front of the far host.
        inet.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth1"])?;
        inet.sysctl("net.ipv4.ip_forward", "1")?;
        far.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth0"])?;
        far.ip(&["route", "add", "default", "via", "192.0.2.1"])?;

        Ok(())
    }

    /// Starts the TCP echo (:80) and UDP echo (:53) servers on the LAN server and on the
    /// internet host.
    pub fn start_servers(&mut self) -> anyhow::Result<()> {
        if self.servers.is_none() {
            let (tcp, udp) = (SocketAddrV4::new(SERVER, HTTP_PORT), SocketAddrV4::new(SERVER, DNS_PORT));
            self.servers = Some(Servers::start(&self.srv, tcp, udp)?);
        }
        if self.inet_servers.is_none() {
            let (tcp, udp) = (SocketAddrV4::new(INET, HTTP_PORT), SocketAddrV4::new(INET, DNS_PORT));
            self.inet_servers = Some(Servers::start(&self.inet, tcp, udp)?);
        }
        Ok(())
    }

    /// `hairpin-ctl --pin-dir <lab pins> args...` in the gateway namespace, not started.
    pub fn ctl_command(&self, args: &[&str]) -> anyhow::Result<std::process::Command> {
        let mut c = self.gw.command(self.ctl.to_str().context("non-UTF-8 path")?);
        c.arg("--pin-dir").arg(&self.pin_dir).args(args);
        Ok(c)
    }

    /// The far ends of the gateway's veths: the switch's port and the internet host's link.
    fn peers(&self) -> [(&Netns, &'static str); 2] {
        [(&self.sw, "p-gw"), (&self.inet, "eth0")]
    }

    /// Attaches a pass-through XDP program to the far ends of the gateway's veths (as
    /// [`Peers::Xdp`] does): they take XDP frames from then on.
    pub fn attach_peer_xdp(&mut self) -> anyhow::Result<()> {
        let mut passes = Vec::new();
        for (ns, iface) in self.peers() {
            passes.push(ns.run(move || crate::xdp_pass::XdpPass::attach(iface))??);
        }
        self.xdp_pass.extend(passes);
        Ok(())
    }

    /// Detaches them: the gateway's veths take no XDP frames from then on.
    pub fn detach_peer_xdp(&mut self) {
        self.xdp_pass.clear();
    }

    /// Runs `hairpin-ctl --pin-dir <lab pins> args...` in the gateway namespace.
    pub fn ctl_output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.ctl_command(args)?.output().with_context(|| format!("running {}", self.ctl.display()))
    }

    /// As [`ctl_output`](Self::ctl_output), failing unless the command succeeds; its stdout.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.ctl_output(args)?;
        if !out.status.success() {
            bail!("hairpin-ctl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `hairpin-ctl up` on lan0/wan0 (plus `extra` flags) and the scenario's mappings.
    pub fn up(&self, extra: &[&str]) -> anyhow::Result<()> {
        self.up_output(extra).map(|_| ())
    }

    /// As [`up`](Self::up); what `up` printed.
    pub fn up_output(&self, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["up", "--lan", "lan0", "--wan", "wan0"];
        args.extend_from_slice(extra);
        let out = self.ctl(&args)?;
        self.add_mappings()?;
        Ok(out)
    }

    /// The shipped example configuration (`contrib/hairpin.toml`, whose addresses are the
    /// lab's) on the lab's interfaces, with the scenarios' second TCP forward added.
    pub fn example_config(&self) -> String {
        let example = include_str!("../../contrib/hairpin.toml")
            .replace("interface = \"eth1\"", "interface = \"lan0\"")
            .replace("interface = \"eth0\"", "interface = \"wan0\"");
        format!("{example}\n[[forward]]\nproto = \"tcp\"\nport = {ALT_HTTP_PORT}\nto = \"{SERVER}:{HTTP_PORT}\"\n")
    }

    /// Writes `config` to a file of this lab's and runs `hairpin-ctl apply -f` on it (with
    /// `extra` flags); what it printed.
    pub fn apply(&self, config: &str, extra: &[&str]) -> anyhow::Result<String> {
        let path = std::env::temp_dir().join(format!("{}.toml", self.prefix));
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let file = path.to_str().context("non-UTF-8 path")?;
        let mut args = vec!["apply", "-f", file];
        args.extend_from_slice(extra);
        let out = self.ctl(&args);
        let _ = std::fs::remove_file(&path);
        out
    }

    /// Adds the scenario's port-forwards to a running dataplane.
    pub fn add_mappings(&self) -> anyhow::Result<()> {
        for (proto, public, private) in MAPPINGS {
            self.ctl(&["map", "add", proto, &format!("{PUBLIC}:{public}"), &format!("{SERVER}:{private}")])?;
        }
        Ok(())
    }

    pub fn down(&self) -> anyhow::Result<()> {
        self.ctl(&["down"]).map(|_| ())
    }

    /// Forgets every neighbour everywhere, so a flow's first packet must resolve them again.
    pub fn flush_neighbours(&self) -> anyhow::Result<()> {
        for ns in [&self.gw, &self.srv, &self.cli, &self.inet, &self.far] {
            ns.ip(&["neigh", "flush", "all"])?;
        }
        Ok(())
    }

    /// The rows of `hairpin-ctl <args> --json`, which must be a JSON array.
    pub fn ctl_json(&self, args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
        let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
        match serde_json::from_str(&self.ctl(&args)?)? {
            serde_json::Value::Array(rows) => Ok(rows),
            other => bail!("hairpin-ctl {} --json printed no array: {other}", args.join(" ")),
        }
    }

    /// `hairpin-ctl stats --json`: the whole object (reasons, exhaustion, tables, port pools).
    pub fn stats_json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.ctl(&["stats", "--json"])?)?)
    }

    /// The reason counters of `hairpin-ctl stats --json`: one row per reason.
    pub fn stats(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        match self.stats_json()?.get_mut("reasons").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(rows)) => Ok(rows),
            other => bail!("stats --json has no reasons array: {other:?}"),
        }
    }

    /// `hairpin-ctl flows --json`: one row per conntrack entry.
    pub fn flows(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        self.ctl_json(&["flows"])
    }

    /// The total of one reason's counter over all hooks.
    pub fn counter(&self, reason: &str) -> anyhow::Result<u64> {
        self.stats()?
            .iter()
            .find(|r| r["reason"] == reason)
            .and_then(|r| r["total"].as_u64())
            .with_context(|| format!("no counter {reason} in stats"))
    }

    /// The gateway's nftables/iptables rules, which must be empty: NAT is hairpin's alone.
    pub fn kernel_nat_rules(&self) -> anyhow::Result<String> {
        let mut rules = String::new();
        if let Ok(s) = self.gw.exec("nft", &["list", "ruleset"]) {
            rules.push_str(s.trim());
        }
        if let Ok(s) = self.gw.exec("iptables-save", &[]) {
            rules.extend(s.lines().filter(|l| l.starts_with("-A")).map(|l| format!("{l}\n")));
        }
        Ok(rules)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.take();
        self.inet_servers.take();
        if self.pin_dir.exists() {
            let _ = self.ctl_output(&["down"]);
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}

/// A veth pair with one end in each namespace, the first with index `index` if given.
fn veth(a: &Netns, a_name: &str, index: Option<u32>, b: &Netns, b_name: &str) -> anyhow::Result<()> {
    let mut c = link_add(None, a, a_name, index);
    run(c.args(["type", "veth", "peer", "name", b_name, "netns", &b.name])).map(|_| ())
}

/// Moves the machine's NIC with address `mac` into `ns` as `name`. (When `ns` goes, the
/// kernel moves the NIC back, under the name it had there.)
fn take_nic(mac: &str, ns: &Netns, name: &str) -> anyhow::Result<()> {
    let want = mac.to_ascii_lowercase();
    let links = run(std::process::Command::new("ip").args(["-o", "link", "show"]))?;
    let dev = links
        .lines()
        .find(|l| l.contains(&format!("link/ether {want} ")))
        .and_then(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .with_context(|| format!("no NIC with address {want} here (Peers::Nics needs the VM's NICs)"))?;
    run(std::process::Command::new("ip").args(["link", "set", "dev", &dev, "down", "netns", &ns.name]))?;
    ns.ip(&["link", "set", "dev", &dev, "name", name])?;
    Ok(())
}

/// A macvlan child (bridge mode) of `parent` in `parent_ns`, made in `ns` as `name`, with
/// index `index` if given.
fn macvlan(parent_ns: &Netns, parent: &str, ns: &Netns, name: &str, index: Option<u32>) -> anyhow::Result<()> {
    let mut c = link_add(Some((parent_ns, parent)), ns, name, index);
    run(c.args(["type", "macvlan", "mode", "bridge"])).map(|_| ())
}

/// `ip link add` of `name` in `ns` (on `parent`, in its namespace, if given), with index
/// `index` if given; the type follows.
fn link_add(parent: Option<(&Netns, &str)>, ns: &Netns, name: &str, index: Option<u32>) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    if let Some((pns, dev)) = parent {
        c.args(["-n", &pns.name, "link", "add", "link", dev, "name", name, "netns", &ns.name]);
    } else {
        // Made in `ns` itself: a name taken in this namespace (a machine's own eth0) is no
        // conflict there, which some kernels (6.1) check here otherwise.
        c.args(["-n", &ns.name, "link", "add", "name", name]);
    }
    if let Some(i) = index {
        c.args(["index", &i.to_string()]);
    }
    c
}

fn links(ns: &Netns) -> anyhow::Result<Vec<String>> {
    Ok(ns
        .ip(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n != "lo")
        .collect())
}
