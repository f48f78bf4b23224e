//! The real compiled programs, loaded but not attached, with their maps prepared by the test
//! and packets fed through BPF_PROG_TEST_RUN.

use std::net::SocketAddrV4;

use aya::{
    Ebpf,
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use hairpin_common::{
    Config, CtEntry, Endpoint, FlowKey, ForwardEntry, Ipv4Be, PortBe, ProtoEndpoint, Reason,
    consts::{Hook, IPPROTO_TCP, IPPROTO_UDP, map_names},
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
    let ip = Ipv4Be::from_octets;
    Config {
        // What the test frames are sent to (`frame::Pkt`'s default).
        mac: [crate::frame::MAC_B; 2],
        ..Config::new(ip([192, 168, 0, 1]), ip([192, 168, 0, 0]), ip([255, 255, 255, 0]), ip([203, 0, 113, 1]))
    }
}

/// Loaded objects no test is using, by their tables (see [`Dataplane::load_sized`]).
static POOL: std::sync::Mutex<Vec<(Tables, Ebpf)>> = std::sync::Mutex::new(Vec::new());

/// The tables an object is loaded with: for `max_flows` flows (`up --max-flows`), with the
/// fast path's flow cache or not (`up --no-flow-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tables {
    pub max_flows: u32,
    pub flow_cache: bool,
}

/// Empties every map of `ebpf` (hash maps of their entries, arrays to zeros, the ring buffer
/// read out), as a freshly loaded object has them; the selector picks configuration slot 0.
fn empty_maps(ebpf: &mut Ebpf) {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let names: Vec<String> = ebpf.maps().map(|(n, _)| n.to_owned()).collect();
    // Not the object's globals (`.rodata` and the like): the loader set them, frozen.
    for name in names.iter().filter(|n| !n.starts_with('.')) {
        let map = ebpf.map_mut(name).unwrap();
        let data = match map {
            aya::maps::Map::RingBuf(_) => {
                let mut ring = aya::maps::RingBuf::try_from(map).unwrap();
                while ring.next().is_some() {}
                continue;
            }
            aya::maps::Map::Array(d)
            | aya::maps::Map::PerCpuArray(d)
            | aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::DevMapHash(d) => d,
            _ => panic!("map {name}: a kind the test pool cannot empty"),
        };
        let info = data.info().unwrap();
        let fd = data.fd().as_fd().as_raw_fd();
        let (key_size, value_size) = (info.key_size() as usize, info.value_size() as usize);
        match map {
            aya::maps::Map::Array(_) | aya::maps::Map::PerCpuArray(_) => {
                let per_cpu = matches!(map, aya::maps::Map::PerCpuArray(_));
                let cpus = if per_cpu { aya::util::nr_cpus().unwrap().get() as usize } else { 1 };
                let zeros = vec![0u8; if per_cpu { value_size.next_multiple_of(8) * cpus } else { value_size }];
                for i in 0..info.max_entries() {
                    bpf_map_op(BPF_MAP_UPDATE_ELEM, fd, &i.to_ne_bytes(), zeros.as_ptr() as u64).unwrap();
                }
            }
            _ => {
                // Deleted one by one from the first key on: what is left starts over.
                let mut key = vec![0u8; key_size];
                while bpf_map_op(BPF_MAP_GET_NEXT_KEY, fd, &[], key.as_mut_ptr() as u64).is_ok() {
                    bpf_map_op(BPF_MAP_DELETE_ELEM, fd, &key, 0).unwrap();
                }
            }
        }
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// One `bpf(2)` map command on `fd`: `key` (none: from the start), and the value or next-key
/// buffer's address.
fn bpf_map_op(cmd: libc::c_long, fd: i32, key: &[u8], value: u64) -> std::io::Result<()> {
    // union bpf_attr for the map element commands: map_fd, key, value/next_key, flags.
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let key = if key.is_empty() { 0 } else { key.as_ptr() as u64 };
    let attr = Attr { map_fd: fd as u32, _pad: 0, key, value, flags: 0 };
    // SAFETY: a bpf_attr of the size passed, whose pointers point at buffers of the map's key
    // and value sizes, alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, &attr as *const Attr, std::mem::size_of::<Attr>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Waits, if need be, until the machine has been up `ns` (checked every 100 ms): a test that
/// will move its tables' times back by up to as much ([`Dataplane::pass_time`]) calls it
/// before it makes them, as there are no times before boot (a VM just booted, a fresh CI
/// machine).
pub fn up_for(ns: u64) {
    let up = hairpin_ctl::conntrack::boot_ns();
    if up < ns {
        eprintln!(
            "the machine has been up {} ms: waiting until {} ms, for times to move back",
            up / 1_000_000,
            ns / 1_000_000
        );
    }
    while hairpin_ctl::conntrack::boot_ns() < ns {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub struct Dataplane {
    /// Always `Some` but while being dropped (into the pool).
    ebpf: Option<Ebpf>,
    /// Its tables, for the pool.
    tables: Tables,
    /// Interfaces (LAN, WAN) the XDP test runs pretend to arrive on, by hook (in the calling
    /// thread's netns); `None` is the kernel's default, loopback. Routing decisions
    /// (masquerade, the fast path) depend on it.
    pub ifindex: Option<(u32, u32)>,
    /// Which programs serve ingress: XDP, or TC (`up --mode tc`).
    pub mode: Mode,
}

impl Drop for Dataplane {
    /// Back into the pool, for the next test's [`Dataplane::load_sized`].
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((self.tables, ebpf));
        }
    }
}

impl Dataplane {
    fn ebpf(&self) -> &Ebpf {
        self.ebpf.as_ref().expect("loaded")
    }

    fn ebpf_mut(&mut self) -> &mut Ebpf {
        self.ebpf.as_mut().expect("loaded")
    }

    /// Loads (and so verifies) every program of the embedded object with fresh maps; ingress
    /// runs as in `mode`.
    pub fn load(cfg: Config, mode: Mode) -> Self {
        Self::load_sized(cfg, mode, hairpin_common::consts::DEFAULT_MAX_FLOWS)
    }

    /// As [`load`](Self::load), with tables for `max_flows` flows (`up --max-flows`).
    ///
    /// An object another test of this binary has finished with is taken again, every map
    /// emptied, rather than loaded anew: the kernel's verifier takes seconds over each load (far
    /// longer in the emulated VMs), and each kernel has verified every program by the first.
    pub fn load_sized(cfg: Config, mode: Mode, max_flows: u32) -> Self {
        Self::load_tables(cfg, mode, Tables { max_flows, flow_cache: true })
    }

    /// As [`load_sized`](Self::load_sized), with `tables`.
    pub fn load_tables(cfg: Config, mode: Mode, tables: Tables) -> Self {
        crate::require_root();
        let pooled = {
            let mut pool = POOL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            pool.iter().position(|(t, _)| *t == tables).map(|i| pool.swap_remove(i).1)
        };
        let mut ebpf = match pooled {
            Some(mut ebpf) => {
                empty_maps(&mut ebpf);
                ebpf
            }
            None => hairpin_ctl::dataplane::load(tables.max_flows, tables.flow_cache)
                .expect("load and verify the eBPF object"),
        };
        Array::try_from(ebpf.map_mut(map_names::CONFIG).unwrap()).unwrap().set(0, &cfg, 0).unwrap();
        Self { ebpf: Some(ebpf), ifindex: None, mode, tables }
    }

    /// As [`load_sized`](Self::load_sized), for a namespace that routes like the gateway
    /// (`hairpin_lab::routed`, interfaces `lan` and `wan`): ingress runs as if on them, both
    /// native XDP taking XDP frames, so that the fast path may send into either.
    pub fn load_routed(cfg: Config, mode: Mode, max_flows: u32, sides: (u32, u32)) -> Self {
        Self::load_routed_tables(cfg, mode, Tables { max_flows, flow_cache: true }, sides)
    }

    /// As [`load_routed`](Self::load_routed), with `tables`.
    pub fn load_routed_tables(cfg: Config, mode: Mode, tables: Tables, (lan, wan): (u32, u32)) -> Self {
        use hairpin_common::placement::{Placement, Why};
        let xdp = Placement { ingress: Ingress::Xdp, why: Why::Forced, xdp_target: true, peer_target: false }.encode();
        let cfg = Config { ifindex: [lan, wan], placement: [xdp, xdp], ..cfg };
        let mut dp = Self::load_tables(cfg, mode, tables);
        dp.ifindex = Some((lan, wan));
        dp.add_device(lan);
        dp.add_device(wan);
        dp
    }

    /// The controller's handles on this dataplane's maps, opened as `hairpin-ctl` opens them:
    /// from pins (in a directory of their own under /sys/fs/bpf, removed with the handles).
    pub fn controller(&self) -> Controller {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pins =
            hairpin_ctl::dataplane::PinDir::new(format!("/sys/fs/bpf/hairpin-test-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(pins.maps()).expect("a pin directory on /sys/fs/bpf");
        let mut guard = Controller { maps: None, pins };
        for name in map_names::ALL {
            let map = self.ebpf().map(name).unwrap_or_else(|| panic!("map {name}"));
            map.pin(guard.pins.map(name)).unwrap_or_else(|e| panic!("pinning {name}: {e}"));
        }
        guard.maps = Some(guard.pins.open().expect("the controller opens the pinned maps"));
        guard
    }

    /// What the dataplane reported through its ring buffer since the last call, in order.
    pub fn events(&mut self) -> Vec<hairpin_common::Event> {
        let mut ring = aya::maps::RingBuf::try_from(self.ebpf_mut().map_mut(map_names::EVENTS).unwrap()).unwrap();
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
        match (xdp, reason.consumes()) {
            (true, false) => XDP_PASS,
            (true, true) => XDP_DROP,
            (false, false) => TC_NEXT,
            (false, true) => TC_SHOT,
        }
    }

    pub fn add_mapping(&mut self, l4: L4, public: &str, private: &str) {
        let mut m: HashMap<_, ProtoEndpoint, ForwardEntry> =
            HashMap::try_from(self.ebpf_mut().map_mut(map_names::FORWARDS).unwrap()).unwrap();
        let entry = ForwardEntry { target: ep(private), ..ForwardEntry::default() };
        m.insert(&ProtoEndpoint::new(proto(l4), ep(public)), &entry, 0).unwrap();
    }

    /// Every entry of the hash maps `tables`, in turn.
    fn entries<K: aya::Pod, V: aya::Pod>(&self, tables: &[&str]) -> Vec<(K, V)> {
        let mut all = Vec::new();
        for table in tables {
            let m: HashMap<_, K, V> = HashMap::try_from(self.ebpf().map(table).unwrap()).unwrap();
            all.extend(m.iter().map(Result::unwrap));
        }
        all
    }

    /// Every forward.
    pub fn forwards(&self) -> Vec<(ProtoEndpoint, ForwardEntry)> {
        self.entries(&[map_names::FORWARDS])
    }

    /// Every conntrack entry, confirmed or not.
    pub fn ct(&self) -> Vec<(FlowKey, CtEntry)> {
        self.entries(&[map_names::CONNTRACK, map_names::UNCONFIRMED])
    }

    /// The LAN endpoints' bindings.
    pub fn bindings(&self) -> Vec<(ProtoEndpoint, hairpin_common::Binding)> {
        self.entries(&[map_names::BINDINGS])
    }

    /// The public ports bindings claim: (protocol, public endpoint) -> LAN endpoint.
    pub fn bound_ports(&self) -> Vec<(ProtoEndpoint, Endpoint)> {
        self.entries(&[map_names::BOUND_PORTS])
    }

    /// The entries of unconfirmed flows.
    pub fn unconfirmed(&self) -> Vec<(FlowKey, CtEntry)> {
        self.entries(&[map_names::UNCONFIRMED])
    }

    /// The packets and bytes conntrack has counted for the flow direction `key`.
    pub fn counted(&self, key: &FlowKey) -> (u64, u64) {
        let ct = self.ct();
        let e = ct.iter().find(|(k, _)| k == key).map(|(_, e)| e).unwrap_or_else(|| panic!("no entry {key:?}"));
        (e.packets, e.bytes)
    }

    /// Inserts a conntrack entry: into the confirmed table if its flags say `CT_F_CONFIRMED`,
    /// else the unconfirmed one.
    pub fn insert_ct(&mut self, key: FlowKey, entry: CtEntry) {
        let table = match entry.flags & hairpin_common::CT_F_CONFIRMED {
            0 => map_names::UNCONFIRMED,
            _ => map_names::CONNTRACK,
        };
        let mut m: HashMap<_, FlowKey, CtEntry> = HashMap::try_from(self.ebpf_mut().map_mut(table).unwrap()).unwrap();
        m.insert(&key, &entry, 0).unwrap();
    }

    /// Removes the conntrack entry `key`, which must be in one of the tables.
    pub fn remove_ct(&mut self, key: &FlowKey) {
        let mut removed = false;
        for table in [map_names::CONNTRACK, map_names::UNCONFIRMED] {
            let mut m: HashMap<_, FlowKey, CtEntry> =
                HashMap::try_from(self.ebpf_mut().map_mut(table).unwrap()).unwrap();
            removed |= m.remove(key).is_ok();
        }
        assert!(removed, "no conntrack entry {key:?}");
    }

    /// Marks every flow forwarded both ways by the kernel (`CT_F_LEFT | CT_F_CONFIRMED`), as
    /// egress does when their packets leave (the confirmation packet test shows those steps):
    /// for tests of what the fast path does with flows it may serve.
    pub fn confirm_all(&mut self) {
        hairpin_lab::confirm_all(self.ebpf_mut()).unwrap();
    }

    /// Tells the dataplane flows were removed, as the controller does after removing them.
    pub fn flows_removed(&mut self) {
        let mut g = Array::try_from(self.ebpf_mut().map_mut(map_names::CT_GEN).unwrap()).unwrap();
        hairpin_ctl::dataplane::flows_removed(&mut g).unwrap();
    }

    /// The dataplane's own generation counter (bumped on orphan removals, and on new flows
    /// while conntrack is under pressure).
    pub fn dataplane_generation(&self) -> u32 {
        let g: Array<_, u32> = Array::try_from(self.ebpf().map(map_names::CT_GEN).unwrap()).unwrap();
        g.get(&hairpin_common::flow_cache::GEN_DATAPLANE, 0).unwrap()
    }

    /// A side counter, summed over CPUs.
    pub fn side_counter(&self, c: hairpin_common::Counter) -> u64 {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf().map(map_names::COUNTERS).unwrap()).unwrap();
        m.get(&(c as u32), 0).unwrap().iter().sum()
    }

    /// Fast-path packets the flow cache could not serve, summed over CPUs.
    pub fn cache_misses(&self) -> u64 {
        self.side_counter(hairpin_common::Counter::CacheMiss)
    }

    /// Moves the dataplane's clock `ns` on, as far as its tables can tell: every time they
    /// hold (conntrack's, the bindings', the forwards' ends, the fragments', the flow cache's
    /// deadlines) moved back by it, as the programs' clock itself cannot be moved. For tables
    /// far from full only: an LRU table's update takes a free element before it lets the old
    /// one go, and a full table would evict another flow for it. The times must stay after
    /// boot: made after [`up_for`] more than `ns`.
    pub fn pass_time(&mut self, ns: u64) {
        use std::mem::offset_of;

        use hairpin_common::{Binding, CtEntry, FragEntry, HeldFragment};
        let back = |t: u64| if t == 0 { 0 } else { t.checked_sub(ns).filter(|t| *t > 0).expect("a time before boot") };
        let tables: [(&str, &[usize]); 6] = [
            (map_names::CONNTRACK, &[offset_of!(CtEntry, created_ns), offset_of!(CtEntry, last_seen_ns)]),
            (map_names::UNCONFIRMED, &[offset_of!(CtEntry, created_ns), offset_of!(CtEntry, last_seen_ns)]),
            (map_names::BINDINGS, &[offset_of!(Binding, last_used_ns)]),
            (map_names::FORWARDS, &[offset_of!(ForwardEntry, expires_ns)]),
            (map_names::FRAGS, &[offset_of!(FragEntry, first_ns)]),
            ("HP_FRAG_HELD", &[offset_of!(HeldFragment, held_ns)]),
        ];
        for (table, fields) in tables {
            self.rewrite_values(table, |v| {
                for &at in fields {
                    let t = u64::from_ne_bytes(v[at..at + 8].try_into().unwrap());
                    v[at..at + 8].copy_from_slice(&back(t).to_ne_bytes());
                }
            });
        }
        self.age_flow_cache(ns);
    }

    /// Moves the flow cache's deadlines back by `ns`, as if its slots had been filled that much
    /// earlier (any `ns`: a deadline is a stamp that wraps).
    pub fn age_flow_cache(&mut self, ns: u64) {
        let at = std::mem::offset_of!(hairpin_common::flow_cache::Slot, fresh_until);
        self.rewrite_values(map_names::FLOW_CACHE, |v| {
            let until = u32::from_ne_bytes(v[at..at + 4].try_into().unwrap());
            let moved = until.wrapping_sub(hairpin_common::flow_cache::stamp(ns));
            v[at..at + 4].copy_from_slice(&moved.to_ne_bytes());
        });
    }

    /// Rewrites every value of the hash map or array `table` (all of them read first: an
    /// update moves a hash map's element, and a walk by next key would meet it again).
    fn rewrite_values(&mut self, table: &str, mut edit: impl FnMut(&mut [u8])) {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let map = self.ebpf_mut().map_mut(table).unwrap_or_else(|| panic!("no map {table}"));
        let array = matches!(map, aya::maps::Map::Array(_));
        let data = match map {
            aya::maps::Map::Array(d) | aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d) => d,
            _ => panic!("map {table}: not a hash map or an array"),
        };
        let info = data.info().unwrap();
        let fd = data.fd().as_fd().as_raw_fd();
        let (key_size, value_size) = (info.key_size() as usize, info.value_size() as usize);
        let mut keys = Vec::new();
        if array {
            keys.extend((0..info.max_entries()).map(|i| i.to_ne_bytes().to_vec()));
        } else {
            let mut key = vec![0u8; key_size];
            let mut prev: Vec<u8> = Vec::new();
            while bpf_map_op(BPF_MAP_GET_NEXT_KEY, fd, &prev, key.as_mut_ptr() as u64).is_ok() {
                keys.push(key.clone());
                prev = key.clone();
            }
        }
        let read: Vec<(Vec<u8>, Vec<u8>)> = keys
            .into_iter()
            .filter_map(|k| {
                let mut value = vec![0u8; value_size];
                bpf_map_op(BPF_MAP_LOOKUP_ELEM, fd, &k, value.as_mut_ptr() as u64).ok().map(|()| (k, value))
            })
            .collect();
        for (k, mut v) in read {
            // An array's empty elements (a flow cache slot never filled) are left as they are.
            if array && v.iter().all(|b| *b == 0) {
                continue;
            }
            edit(&mut v);
            bpf_map_op(BPF_MAP_UPDATE_ELEM, fd, &k, v.as_ptr() as u64).unwrap();
        }
    }

    /// The egress table: every flow direction, by the tuple it leaves ingress with.
    pub fn egress(&self) -> Vec<(FlowKey, hairpin_common::EgressEntry)> {
        self.entries(&[map_names::EGRESS, map_names::EGRESS_UNCONFIRMED])
    }

    /// The counter of `reason` at `hook`, summed over CPUs.
    pub fn counter(&self, hook: Hook, reason: Reason) -> u64 {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf().map(map_names::STATS).unwrap()).unwrap();
        m.get(&hook.stat_index(reason), 0).unwrap().iter().sum()
    }

    /// Lets the fast path redirect to `ifindex`.
    pub fn add_device(&mut self, ifindex: u32) {
        let mut m = aya::maps::DevMapHash::try_from(self.ebpf_mut().map_mut(map_names::DEVICES).unwrap()).unwrap();
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
        let prog = self.ebpf_mut().program_mut(name).unwrap();
        // Room for what a TC program may append (held fragments given back: up to 8 of 1480).
        let mut out = vec![0u8; frame.len() + 16 * 1024];
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

/// Runs `body` in a namespace of its own that routes like the gateway
/// (`hairpin_lab::routed::RoutedGateway`, named after `tag` and a sequence number), given its
/// (LAN, WAN) interface indexes; the namespace is removed after, whatever `body` did.
pub fn in_routed_ns<T: Send + 'static>(tag: &str, body: impl FnOnce((u32, u32)) -> T + Send + 'static) -> T {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    crate::require_root();
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let gw = hairpin_lab::routed::RoutedGateway::new(&format!("hp{tag}{}-{seq}", std::process::id())).unwrap();
    let sides = (gw.lan, gw.wan);
    gw.ns.run(move || body(sides)).expect("test body (see the panic above)")
}

/// The controller's handles on a test's dataplane (see [`Dataplane::controller`]); its pins
/// are removed when it goes (the maps stay, the object holding them).
pub struct Controller {
    maps: Option<hairpin_ctl::dataplane::Maps>,
    pins: hairpin_ctl::dataplane::PinDir,
}

impl Controller {
    pub fn maps(&mut self) -> &mut hairpin_ctl::dataplane::Maps {
        self.maps.as_mut().expect("opened")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.maps = None;
        if let Err(e) = self.pins.remove_all() {
            eprintln!("removing the test's pins at {}: {e:#}", self.pins.root.display());
        }
    }
}
