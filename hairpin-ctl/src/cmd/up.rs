//! `hairpin-ctl up`: load, configure, attach and pin; all of it or none of it.

use std::fs;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, DevMapHash},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink},
};
use hairpin_common::{
    Config, Ipv4Be,
    consts::{Hook, map_names},
};

use clap::ValueEnum as _;

use crate::{
    cli::{Ipv4Net, UpArgs, XdpAttachMode},
    dataplane::{self, Mode, PinDir},
    netif,
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
    let cfg = Config {
        lan_addr: Ipv4Be::from_octets(lan_ip.octets()),
        public_addr: Ipv4Be::from_octets(public_ip.octets()),
        port_min: a.port_range.min,
        port_max: a.port_range.max,
        flags: a.config_flags(),
        wan_ifindex,
        timeouts: a.timeouts.to_timeouts(),
        lan_net: Ipv4Be::from_octets(lan_prefix.addr.octets()),
        lan_mask: Ipv4Be::from_octets(lan_prefix.mask().octets()),
    };

    let mut ebpf = dataplane::load(a.max_flows, !a.no_flow_cache && a.mode == Mode::Xdp)?;
    Array::try_from(ebpf.map_mut(map_names::CONFIG).context("config map missing")?)?
        .set(0, &cfg, 0)
        .context("writing the dataplane configuration")?;
    // The fast path redirects only to these two.
    let mut devices = DevMapHash::try_from(ebpf.map_mut(map_names::DEVICES).context("device map missing")?)?;
    for ifindex in [lan_ifindex, wan_ifindex] {
        devices.insert(ifindex, ifindex, None, 0).context("filling the fast path's device map")?;
    }
    // Until pinned, each link lives only as long as this process: an error below detaches it.
    let mut links = Vec::new();
    for (prog, hook) in dataplane::links(a.mode) {
        let (iface, ifindex) = match hook {
            Hook::LanIngress | Hook::LanEgress => (&a.lan, lan_ifindex),
            Hook::WanIngress | Hook::WanEgress => (&a.wan, wan_ifindex),
        };
        let link = attach(&mut ebpf, prog, hook, ifindex, a.xdp_mode)
            .with_context(|| format!("attaching {prog} to {iface}"))?;
        links.push((prog, link));
    }
    pin_all(pins, &mut ebpf, links).inspect_err(|_| {
        let _ = pins.remove_all();
    })?;

    warn_sysctls(&a.lan, !a.no_hairpin);
    println!(
        "hairpin up: lan {} ({lan_ip}, prefix {lan_prefix}), wan {} ({public_ip}), hairpin {}, fast path {}, udp filtering {}, pinned at {}",
        a.lan,
        a.wan,
        if a.no_hairpin { "off" } else { "on" },
        match (a.no_fast_path || a.mode == Mode::Tc, a.no_flow_cache) {
            (true, _) => "off",
            (false, false) => "on",
            (false, true) => "on (no flow cache)",
        },
        a.udp_filtering.to_possible_value().expect("no skipped variants").get_name(),
        pins.root.display()
    );
    Ok(())
}

fn attach(ebpf: &mut Ebpf, prog: &str, hook: Hook, ifindex: u32, mode: XdpAttachMode) -> anyhow::Result<FdLink> {
    let p = ebpf.program_mut(prog).context("program missing")?;
    let xdp = matches!(p, aya::programs::Program::Xdp(_));
    match hook {
        Hook::LanIngress | Hook::WanIngress if !xdp => {
            let tc: &mut SchedClassifier = p.try_into()?;
            let id = tc.attach(ifindex, TcAttachType::Ingress)?;
            tc.take_link(id)?
                .try_into()
                .context("the TC attachment is not a TCX link (kernel < 6.6?), so it cannot be pinned")
        }
        Hook::LanIngress | Hook::WanIngress => {
            let xdp: &mut Xdp = p.try_into()?;
            let id = match mode {
                XdpAttachMode::Native => xdp.attach(ifindex, XdpMode::Driver)?,
                XdpAttachMode::Generic => xdp.attach(ifindex, XdpMode::Skb)?,
                XdpAttachMode::Auto => match xdp.attach(ifindex, XdpMode::Driver) {
                    Ok(id) => id,
                    Err(e) => {
                        eprintln!("warning: native XDP unavailable on ifindex {ifindex} ({e}); using generic XDP");
                        xdp.attach(ifindex, XdpMode::Skb)?
                    }
                },
            };
            xdp.take_link(id)?
                .try_into()
                .context("the XDP attachment is not a bpf_link (kernel < 5.9?), so it cannot be pinned")
        }
        Hook::LanEgress | Hook::WanEgress => {
            let tc: &mut SchedClassifier = p.try_into()?;
            // TCX (kernel >= 6.6) attaches through a bpf_link, which can be pinned.
            let id = tc.attach(ifindex, TcAttachType::Egress)?;
            tc.take_link(id)?
                .try_into()
                .context("the TC attachment is not a TCX link (kernel < 6.6?), so it cannot be pinned")
        }
    }
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
