//! A namespace that routes like the gateway, with no hosts behind it: for running the real
//! programs with BPF_PROG_TEST_RUN (packet tests, micro-benchmark), whose decisions
//! (masquerade, the fast path) ask the kernel's FIB of the calling thread's namespace.

use crate::{Netns, netns::mac};

/// MAC addresses of the gateway's interfaces and of the neighbours it knows.
pub const LAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const WAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x03];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0xfe];

/// The namespace and its LAN and WAN interface indexes.
pub struct RoutedGateway {
    pub ns: Netns,
    pub lan: u32,
    pub wan: u32,
}

impl RoutedGateway {
    /// lan0 192.168.0.1/24 and wan0 203.0.113.1/24 (MTU 1400), veths whose peers stay here,
    /// forwarding on; default route via 203.0.113.254; the server 192.168.0.2, the client
    /// 192.168.0.3 and that router are known neighbours; 198.18.0.0/15 goes via a neighbour
    /// not resolved yet.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let ns = Netns::new(name)?;
        for (dev, addr, m) in [("lan0", "192.168.0.1/24", LAN_MAC), ("wan0", "203.0.113.1/24", WAN_MAC)] {
            let peer = format!("{dev}p");
            ns.ip(&["link", "add", dev, "address", &mac(m), "type", "veth", "peer", "name", &peer])?;
            ns.ip(&["addr", "add", addr, "dev", dev])?;
            ns.ip(&["link", "set", &peer, "up"])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        ns.ip(&["link", "set", "wan0", "mtu", "1400"])?;
        ns.ip(&["route", "add", "default", "via", "203.0.113.254", "dev", "wan0"])?;
        ns.ip(&["route", "add", "198.18.0.0/15", "via", "203.0.113.253", "dev", "wan0"])?;
        for (addr, m, dev) in [
            ("192.168.0.2", SERVER_MAC, "lan0"),
            ("192.168.0.3", CLIENT_MAC, "lan0"),
            ("203.0.113.254", ROUTER_MAC, "wan0"),
        ] {
            ns.ip(&["neigh", "add", addr, "lladdr", &mac(m), "dev", dev, "nud", "permanent"])?;
        }
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let (lan, wan) = (ns.ifindex("lan0")?, ns.ifindex("wan0")?);
        Ok(Self { ns, lan, wan })
    }
}
