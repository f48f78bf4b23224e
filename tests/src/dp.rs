//! The real compiled programs, loaded but not attached, with their maps prepared by the test
//! and packets fed through BPF_PROG_TEST_RUN.

use std::net::SocketAddrV4;

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use hairpin_common::{
    CFG_F_HAIRPIN, Config, CtEntry, Endpoint, FlowKey, Ipv4Be, MappingKey, PortBe, Reason,
    consts::{DEFAULT_PORT_MAX, DEFAULT_PORT_MIN, Hook, IPPROTO_TCP, IPPROTO_UDP, map_names},
};

use crate::frame::L4;
use hairpin_common::placement::Ingress;
pub use hairpin_ctl::spec::Mode;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// TCX_NEXT (-1): continue, i.e. pass.
pub const TC_NEXT: u32 = u32::MAX;
pub const TC_SHOT: u32 = 2;
pub const TC_REDIRECT: u32 = 7;

pub fn ep(s: &str) -> Endpoint {
    let sa: SocketAddrV4 = s.parse().expect("ADDR:PORT");
    Endpoint::new(Ipv4Be::from_octets(sa.ip().octets()), PortBe::from_host(sa.port()))
}

pub fn proto(l4: L4) -> u8 {
    match l4 {
        L4::Tcp => IPPROTO_TCP,
        L4::Udp => IPPROTO_UDP,
        L4::Echo { .. } | L4::IcmpError(..) => hairpin_common::consts::IPPROTO_ICMP,
    }
}

/// The lab's gateway configuration: LAN 192.168.0.1, public 203.0.113.1, hairpin on.
pub fn lab_config() -> Config {
    Config {
        lan_addr: Ipv4Be::from_octets([192, 168, 0, 1]),
        public_addr: Ipv4Be::from_octets([203, 0, 113, 1]),
        port_min: DEFAULT_PORT_MIN,
        port_max: DEFAULT_PORT_MAX,
        flags: CFG_F_HAIRPIN,
        wan_ifindex: 0,
        timeouts: Default::default(),
        lan_net: Ipv4Be::from_octets([192, 168, 0, 0]),
        lan_mask: Ipv4Be::from_octets([255, 255, 255, 0]),
        lan_ifindex: 0,
        lan_placement: 0,
        wan_placement: 0,
        // What the test frames are sent to (`frame::Pkt`'s default).
        lan_mac: crate::frame::MAC_B,
        wan_mac: crate::frame::MAC_B,
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    /// Interfaces (LAN, WAN) the XDP test runs pretend to arrive on, by hook (in the calling
    /// thread's netns); `None` is the kernel's default, loopback. Routing decisions
    /// (masquerade, the fast path) depend on it.
    pub ifindex: Option<(u32, u32)>,
    /// Which programs serve ingress: XDP, or TC (`up --mode tc`).
    pub mode: Mode,
}

impl Dataplane {
    /// Loads (and so verifies) every program of the embedded object with fresh maps; ingress
    /// runs as in `mode`.
    pub fn load(cfg: Config, mode: Mode) -> Self {
        crate::require_root();
        let mut ebpf = hairpin_ctl::dataplane::load(hairpin_common::consts::DEFAULT_MAX_FLOWS, true)
            .expect("load and verify the eBPF object");
        Array::try_from(ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap().set(0, &cfg, 0).unwrap();
        Self { ebpf, ifindex: None, mode }
    }

    /// What the dataplane reported through its ring buffer since the last call, in order.
    pub fn events(&mut self) -> Vec<hairpin_common::Event> {
        let mut ring = aya::maps::RingBuf::try_from(self.ebpf.map_mut(map_names::EVENTS).unwrap()).unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            let event = item.get(..std::mem::size_of::<hairpin_common::Event>()).expect("an event-sized item");
            out.push(bytemuck::pod_read_unaligned(event));
        }
        out
    }

    /// What `hook`'s program returns to let a packet on.
    pub fn pass(&self, hook: Hook) -> u32 {
        self.verdict(hook, Reason::PassNotIpv4)
    }

    /// What `hook`'s program returns when it decides `reason`.
    pub fn verdict(&self, hook: Hook, reason: Reason) -> u32 {
        let xdp = self.mode != Mode::Tc && matches!(hook, Hook::LanIngress | Hook::WanIngress);
        match (reason, xdp) {
            (Reason::FastTx, true) => return XDP_TX,
            (Reason::FastRedirect, true) => return XDP_REDIRECT,
            (Reason::FastTx | Reason::FastRedirect, false) => return TC_REDIRECT,
            _ => {}
        }
        match (xdp, reason.is_drop()) {
            (true, false) => XDP_PASS,
            (true, true) => XDP_DROP,
            (false, false) => TC_NEXT,
            (false, true) => TC_SHOT,
        }
    }

    pub fn add_mapping(&mut self, l4: L4, public: &str, private: &str) {
        let mut m: HashMap<_, MappingKey, Endpoint> =
            HashMap::try_from(self.ebpf.map_mut(map_names::MAPPINGS).unwrap()).unwrap();
        m.insert(&MappingKey::new(proto(l4), ep(public)), &ep(private), 0).unwrap();
    }

    pub fn ct(&self) -> Vec<(FlowKey, CtEntry)> {
        let m: HashMap<_, FlowKey, CtEntry> = HashMap::try_from(self.ebpf.map(map_names::CONNTRACK).unwrap()).unwrap();
        m.iter().map(Result::unwrap).collect()
    }

    /// The packets and bytes conntrack has counted for the flow direction `key`.
    pub fn counted(&self, key: &FlowKey) -> (u64, u64) {
        let ct = self.ct();
        let e = ct.iter().find(|(k, _)| k == key).map(|(_, e)| e).unwrap_or_else(|| panic!("no entry {key:?}"));
        (e.packets, e.bytes)
    }

    pub fn insert_ct(&mut self, key: FlowKey, entry: CtEntry) {
        let mut m: HashMap<_, FlowKey, CtEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_names::CONNTRACK).unwrap()).unwrap();
        m.insert(&key, &entry, 0).unwrap();
    }

    pub fn remove_ct(&mut self, key: &FlowKey) {
        let mut m: HashMap<_, FlowKey, CtEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_names::CONNTRACK).unwrap()).unwrap();
        m.remove(key).unwrap();
    }

    /// Marks every flow forwarded both ways by the kernel (`CT_F_LEFT | CT_F_CONFIRMED`), as
    /// egress does when their packets leave (the confirmation packet test shows those steps):
    /// for tests of what the fast path does with flows it may serve.
    pub fn confirm_all(&mut self) {
        use hairpin_common::{CT_F_CONFIRMED, CT_F_LEFT};
        let mut m: HashMap<_, FlowKey, CtEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_names::CONNTRACK).unwrap()).unwrap();
        let all: Vec<_> = m.iter().map(Result::unwrap).collect();
        for (k, e) in all {
            m.insert(&k, &CtEntry { flags: e.flags | CT_F_LEFT | CT_F_CONFIRMED, ..e }, 0).unwrap();
        }
    }

    /// Tells the dataplane flows were removed, as the controller does after removing them.
    pub fn flows_removed(&mut self) {
        let mut g = Array::try_from(self.ebpf.map_mut(map_names::CT_GEN).unwrap()).unwrap();
        hairpin_ctl::dataplane::flows_removed(&mut g).unwrap();
    }

    /// The dataplane's own generation counter (bumped on orphan removals, and on new flows
    /// while conntrack is under pressure).
    pub fn dataplane_generation(&self) -> u32 {
        let g: Array<_, u32> = Array::try_from(self.ebpf.map(map_names::CT_GEN).unwrap()).unwrap();
        g.get(&hairpin_common::flow_cache::GEN_DATAPLANE, 0).unwrap()
    }

    /// A side counter, summed over CPUs.
    pub fn side_counter(&self, c: hairpin_common::Counter) -> u64 {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(map_names::COUNTERS).unwrap()).unwrap();
        m.get(&(c as u32), 0).unwrap().iter().sum()
    }

    /// Fast-path packets the flow cache could not serve, summed over CPUs.
    pub fn cache_misses(&self) -> u64 {
        self.side_counter(hairpin_common::Counter::CacheMiss)
    }

    /// The egress table: every flow direction, by the tuple it leaves ingress with.
    pub fn egress(&self) -> Vec<(FlowKey, hairpin_common::EgressEntry)> {
        let m: HashMap<_, FlowKey, hairpin_common::EgressEntry> =
            HashMap::try_from(self.ebpf.map(map_names::EGRESS).unwrap()).unwrap();
        m.iter().map(Result::unwrap).collect()
    }

    /// The counter of `reason` at `hook`, summed over CPUs.
    pub fn counter(&self, hook: Hook, reason: Reason) -> u64 {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(map_names::STATS).unwrap()).unwrap();
        m.get(&hook.stat_index(reason), 0).unwrap().iter().sum()
    }

    /// Lets the fast path redirect to `ifindex`.
    pub fn add_device(&mut self, ifindex: u32) {
        let mut m = aya::maps::DevMapHash::try_from(self.ebpf.map_mut(map_names::DEVICES).unwrap()).unwrap();
        m.insert(ifindex, ifindex, None, 0).unwrap();
    }

    /// Packets of known flows left to the slow path because of `why`, summed over CPUs.
    pub fn slow(&self, why: hairpin_common::Slow) -> u64 {
        self.side_counter(why.counter())
    }

    /// New `proto` flows dropped for `reason` (no port, no table space), summed over CPUs.
    pub fn exhausted(&self, proto: u8, reason: Reason) -> u64 {
        self.side_counter(hairpin_common::Counter::exhausted(proto, reason).unwrap())
    }

    /// Runs `hook`'s program on `frame`: its return value and the frame it left.
    pub fn run(&mut self, hook: Hook, frame: &[u8]) -> (u32, Vec<u8>) {
        let tc_ingress = self.mode == Mode::Tc;
        let ingress_kind = if tc_ingress { Ingress::Tc } else { Ingress::Xdp };
        let name = hairpin_ctl::dataplane::program(hook, ingress_kind);
        let ingress_hook = matches!(hook, Hook::LanIngress | Hook::WanIngress);
        let xdp = ingress_hook && !tc_ingress;
        let ingress = self.ifindex.map(|(lan, wan)| if hook == Hook::WanIngress { wan } else { lan });
        let ctx: Vec<u8> = match ingress {
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
            // egress_ifindex.
            Some(i) if xdp => [0, frame.len() as u32, 0, i, 0, 0].iter().flat_map(|w| w.to_ne_bytes()).collect(),
            // struct __sk_buff up to ifindex (the kernel zero-fills the rest): the test run
            // puts the skb on that device.
            Some(i) if ingress_hook => {
                [[0u32; 10].as_slice(), &[i]].concat().iter().flat_map(|w| w.to_ne_bytes()).collect()
            }
            _ => Vec::new(),
        };
        let prog = self.ebpf.program_mut(name).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let ctx_in = (!ctx.is_empty()).then_some(&ctx[..]);
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ctx_in, ..Default::default() };
        let r = match hook {
            _ if xdp => <&mut Xdp>::try_from(prog).unwrap().test_run(opts),
            _ => <&mut SchedClassifier>::try_from(prog).unwrap().test_run(opts),
        }
        .unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN of {name} on a {}-byte frame: {e} ({:?})",
                frame.len(),
                std::error::Error::source(&e)
            )
        });
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }
}
