//! Helper programs for the lab and the benchmarks, not part of the dataplane: a second object
//! (this binary of the eBPF crate), which `up` never loads. A pass-through program for the far
//! ends of veths that must take XDP frames; for `cargo xtask bench`, a traffic generator run
//! with BPF_PROG_TEST_RUN in live frames mode, a sink that counts only correctly translated
//! packets, the raw redirect that measures the ceiling with no NAT work, the same redirect
//! reading one line of a flow-cache-sized table per packet (the memory floor of any per-flow
//! state), and the same redirect writing the header bytes any router writes (the write floor);
//! and for the micro-benchmark, a trivial XDP_TX program and a harness that restores a frame's
//! headers and tail-calls the program under test.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{BPF_F_MMAPABLE, TC_ACT_SHOT, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, DevMap, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use hairpin_common::{
    Endpoint, FlowKey, Ipv4Be, PortBe,
    consts::IPPROTO_UDP,
    csum::CsumDelta,
    flow_cache::{WAYS, set_of},
};

/// A pointer to a `T` at `off` bytes into the frame, if the frame is that long. (The dataplane
/// has its own, over XDP and TC alike; these programs are XDP only.)
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, ()> {
    if ctx.data() + off + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    Ok((ctx.data() + off) as *mut T)
}

/// Ethernet, IPv4 without options and UDP: the headers of the generator's frames.
const HDR_LEN: usize = 14 + 20 + 8;

/// The generator's settings: the headers to send, whose source port (destination port if
/// `vary_dst`: replies) cycles through `flows` ports from `first_port`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GenConfig {
    pub first_port: u32,
    pub flows: u32,
    pub header: [u8; HDR_LEN],
    pub vary_dst: u8,
    pub _pad: [u8; 5],
}

#[map(name = "BENCH_GEN")]
static GEN: Array<GenConfig> = Array::with_max_entries(1, 0);
/// Frames generated so far on this CPU (also the source port sequence).
#[map(name = "BENCH_GEN_SEQ")]
static GEN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// What the sink expects: [0] the translated destination, [1] the source address (0: any;
/// the port is not checked, a masquerading gateway picks it).
#[map(name = "BENCH_SINK")]
static SINK: Array<[Endpoint; 2]> = Array::with_max_entries(1, 0);
/// Sink counters: [0] UDP packets as expected, [1] other UDP packets (untranslated,
/// mistranslated), [2] anything else (ARP, IPv6 neighbour discovery).
#[map(name = "BENCH_SINK_COUNT")]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);
/// The raw ceiling's one output interface (index 0).
#[map(name = "BENCH_OUT")]
static OUT: DevMap = DevMap::with_max_entries(1, 0);

/// Offset of the UDP header in the generator's frames (IPv4 without options).
const UDP_OFF: usize = 14 + 20;

/// Writes the headers afresh (live frames are recycled pages: whatever the gateway or the
/// kernel wrote into a frame may come back), sets the next source port and sends the frame
/// out (XDP_TX from the test run's interface).
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let pkt = &ctx;
    let (Some(cfg), Some(seq)) = (GEN.get(0), GEN_SEQ.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let port_off = if cfg.vary_dst != 0 { UDP_OFF + 2 } else { UDP_OFF };
    let (Ok(hdr), Ok(sport)) = (ptr_at::<[u8; HDR_LEN]>(pkt, 0), ptr_at::<u16>(pkt, port_off)) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU slot; bounds checked by ptr_at. The UDP checksum is 0 (none), so the
    // port needs no checksum update.
    unsafe {
        *hdr = cfg.header;
        let n = *seq;
        *seq = n + 1;
        let flows = if cfg.flows == 0 { 1 } else { cfg.flows as u64 };
        sport.write_unaligned(((cfg.first_port as u64 + n % flows) as u16).to_be());
    }
    xdp_action::XDP_TX
}

/// Counts UDP packets with the expected destination (and source address), other UDP
/// packets, and the rest.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    sink_count(ctx.data(), ctx.data_end());
    xdp_action::XDP_DROP
}

/// The same sink at TC ingress, for frames that reach the sink's device without passing its
/// XDP program: those a gateway's TC fast path sends with `bpf_redirect_peer`, straight into
/// the device's ingress. Attached beside `bench_sink`, which sees the rest.
#[classifier]
pub fn bench_sink_tc(ctx: TcContext) -> i32 {
    sink_count(ctx.data(), ctx.data_end());
    TC_ACT_SHOT as i32
}

/// Counts the frame at `data..end` in the sink's counters.
#[inline(always)]
fn sink_count(data: usize, end: usize) {
    const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
    const LEN: usize = 14 + 20 + 4;
    let slot = match SINK.get(0) {
        // SAFETY: bounds checked just before.
        Some([want, from]) if data + LEN <= end => unsafe {
            let h = &*(data as *const [u8; LEN]);
            let udp = u16::from_ne_bytes([h[12], h[13]]) == ETH_P_IP_BE && h[14] == 0x45 && h[14 + 9] == IPPROTO_UDP;
            let src = u32::from_ne_bytes([h[26], h[27], h[28], h[29]]);
            let dst = u32::from_ne_bytes([h[30], h[31], h[32], h[33]]);
            let dport = u16::from_ne_bytes([h[36], h[37]]);
            let src_ok = from.addr.0 == 0 || src == from.addr.0;
            match udp {
                true if dst == want.addr.0 && dport == want.port.0 && src_ok => 0,
                true => 1,
                false => 2,
            }
        },
        _ => 2,
    };
    if let Some(c) = SINK_COUNT.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

/// The ceiling: every frame redirected to the output interface, nothing else done.
#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    OUT.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
}

/// The memory floor's table: 64-byte lines, as many as a CPU's flow cache has (the harness
/// sizes it and sets `BENCH_TABLE_SETS`), all zero; mmapable, so line-aligned like the cache.
#[map(name = "BENCH_TABLE")]
static TABLE: Array<[u64; 8]> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[unsafe(no_mangle)]
static BENCH_TABLE_SETS: Global<u32> = Global::new(0);

/// The ceiling plus what any per-flow state costs at least: the line of the packet's flow in
/// a table the size of the flow cache, found by the flow cache's hash, read; then the frame is
/// redirected as by `bench_redirect`. With many flows the line is cold: this is the floor a
/// NAT with per-flow state can reach on this machine, hash map or not.
#[xdp]
pub fn bench_redirect_lookup(ctx: XdpContext) -> u32 {
    let pkt = &ctx;
    let Ok(h) = ptr_at::<[u8; HDR_LEN]>(pkt, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked by ptr_at.
    let key = unsafe {
        let h = &*h;
        let addr = |i: usize| Ipv4Be(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
        let port = |i: usize| PortBe(u16::from_ne_bytes([h[i], h[i + 1]]));
        FlowKey { src: addr(26), dst: addr(30), sport: port(34), dport: port(36), proto: h[23], _pad8: 0, _pad16: 0 }
    };
    let sets = BENCH_TABLE_SETS.load();
    if sets == 0 {
        return xdp_action::XDP_ABORTED;
    }
    match TABLE.get(set_of(&key, sets) * WAYS) {
        // Never (the table is zero); the read decides the verdict, so it cannot be left out.
        Some(line) if line[0] == u64::MAX => xdp_action::XDP_DROP,
        _ => OUT.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED),
    }
}

/// The write floor's Ethernet addresses (destination, then source), set by the harness.
#[unsafe(no_mangle)]
static BENCH_WRITE_MACS: Global<[u8; 12]> = Global::new([0; 12]);

/// The ceiling plus the header writes of forwarding, NAT or not (RFC 1812): new Ethernet
/// addresses, and the TTL decremented with its checksum updated. Only the writes: the offsets
/// are fixed (the generator's frames), and there is no parsing and no route lookup. The
/// ceiling leaves the frame untouched.
#[xdp]
pub fn bench_redirect_write(ctx: XdpContext) -> u32 {
    const TTL_OFF: usize = 14 + 8;
    const IP_CSUM_OFF: usize = 14 + 10;
    let pkt = &ctx;
    let (Ok(eth), Ok(word), Ok(check)) =
        (ptr_at::<[u8; 12]>(pkt, 0), ptr_at::<[u8; 2]>(pkt, TTL_OFF), ptr_at::<u16>(pkt, IP_CSUM_OFF))
    else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let [ttl, proto] = *word;
        if ttl <= 1 {
            return xdp_action::XDP_PASS;
        }
        *word = [ttl - 1, proto];
        check.write_unaligned(CsumDelta::ttl_decrement(ttl, proto).apply(check.read_unaligned()));
        *eth = BENCH_WRITE_MACS.load();
    }
    OUT.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
}

// The controller writes it as 56 raw bytes.
const _: () = assert!(core::mem::size_of::<GenConfig>() == 56);

/// The reference for the per-packet micro-benchmark: the least an XDP program can do and
/// still send the frame on.
#[xdp]
pub fn bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// The headers `bench_restore` puts back before each repeat.
#[map(name = "BENCH_RESTORE")]
static RESTORE: Array<[u8; HDR_LEN]> = Array::with_max_entries(1, 0);
/// The program under test that `bench_restore` hands the frame to (index 0).
#[map(name = "BENCH_NEXT")]
static NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// For the micro-benchmark's repeated test runs (`repeat` reruns a program on the frame it
/// left, and a NAT rewrites its frame): puts the headers of `BENCH_RESTORE` back, then
/// tail-calls the program under test. It runs in front of the dataplane and of the trivial
/// reference alike; with the slot empty it measures itself (the tail call fails: aborted).
#[xdp]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    let pkt = &ctx;
    let (Some(headers), Ok(hdr)) = (RESTORE.get(0), ptr_at::<[u8; HDR_LEN]>(pkt, 0)) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked by ptr_at; a tail call that succeeds does not return.
    unsafe {
        *hdr = *headers;
        NEXT.tail_call(&ctx, 0);
    }
    xdp_action::XDP_ABORTED
}

/// Passes everything: for the far end of a veth that must take XDP frames (a veth delivers
/// frames its peer sends with XDP_TX or redirect only while it runs an XDP program itself).
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects any program that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
