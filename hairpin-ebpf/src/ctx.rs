//! The only code that touches packet memory or picks how a packet leaves. XDP and TC differ in
//! how checksums are updated and how a packet is sent on, so both implement [`Packet`];
//! everything above this module is written once against it.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS,
        bpf_check_mtu_ret::BPF_MTU_CHK_RET_SUCCESS,
    },
    helpers::{bpf_check_mtu, bpf_redirect, bpf_redirect_peer},
    programs::{TcContext, XdpContext},
};
use hairpin_common::{Config, Reason, csum::CsumDelta};

use crate::maps::DEVICES;

pub trait Packet {
    /// Start and end of the directly accessible (linear) bytes.
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length, which for a non-linear skb (GSO, paged data) exceeds the
    /// linear part: what an IPv4 total length is checked against. An XDP frame is one buffer
    /// (hairpin does not declare frags support), so by default the linear part is all of it.
    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }

    /// The context pointer for helpers that take it (`bpf_fib_lookup`), and the interface the
    /// packet is on.
    fn ctx_ptr(&self) -> *mut core::ffi::c_void;
    fn ifindex(&self) -> u32;

    /// The VLAN ID of a tag the kernel has already taken out of the frame (TC; XDP sees tags
    /// in the frame), 0 if none.
    #[inline(always)]
    fn vlan_id(&self) -> u16 {
        0
    }

    /// A GSO super-packet (an skb of several segments): its segments, not its IPv4 total
    /// length, must fit the egress MTU.
    #[inline(always)]
    fn gso(&self) -> bool {
        false
    }

    /// How many packets it stands for: a GSO super-packet (TC only) its segments, else 1.
    #[inline(always)]
    fn segs(&self) -> u32 {
        1
    }

    /// Whether this packet, of IPv4 total length `tot_len`, fits the MTU of `ifindex`, through
    /// which the FIB has passed packets up to `len_ok` long: a GSO super-packet is asked of the
    /// kernel segment by segment, any other packet compared.
    #[inline(always)]
    fn fits(&self, _ifindex: u32, tot_len: u16, len_ok: u16) -> bool {
        tot_len <= len_ok
    }

    /// Makes the packet leave by `ifindex` (back out of the interface it came in on if `tx`)
    /// once the program returns, if the fast path may send there from this hook (see
    /// [`Config::xdp_target`], [`Config::tc_target`]). On `false` nothing was set.
    fn redirect(&self, cfg: &Config, ifindex: u32, tx: bool) -> bool;

    /// Applies `delta` to the IPv4 header checksum at offset `off`.
    fn update_l3_csum(&self, off: usize, delta: CsumDelta) -> Result<(), Reason>;

    /// Applies address (`pseudo`, covered through the pseudo-header) and port changes to the
    /// TCP/UDP checksum at offset `off`. A zero UDP checksum ("none") stays zero.
    fn update_l4_csum(&self, off: usize, pseudo: CsumDelta, ports: CsumDelta, udp: bool) -> Result<(), Reason>;
}

/// A pointer to a `T` at `off` bytes into the packet, or `DropMalformed` if the packet is too
/// short. The one bounds check every header access goes through.
#[inline(always)]
pub fn ptr_at<T>(pkt: &impl Packet, off: usize) -> Result<*mut T, Reason> {
    let start = pkt.data();
    if start + off + core::mem::size_of::<T>() > pkt.data_end() {
        return Err(Reason::DropMalformed);
    }
    Ok((start + off) as *mut T)
}

/// Applies `delta` to the complete checksum at `off` in packet memory.
#[inline(always)]
fn update_in_place(pkt: &impl Packet, off: usize, delta: CsumDelta) -> Result<(), Reason> {
    let p = ptr_at::<u16>(pkt, off)?;
    // SAFETY: bounds checked by ptr_at; both hooks may write packet memory directly.
    unsafe { p.write_unaligned(delta.apply(p.read_unaligned())) };
    Ok(())
}

pub struct Xdp<'a>(pub &'a XdpContext);

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut core::ffi::c_void {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.0.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn redirect(&self, cfg: &Config, ifindex: u32, tx: bool) -> bool {
        // XDP_TX needs nothing set; a redirect goes through the device map, whose lookup fails
        // for any interface `up` did not put there.
        cfg.xdp_target(ifindex) && (tx || DEVICES.redirect(ifindex, 0).is_ok())
    }

    #[inline(always)]
    fn update_l3_csum(&self, off: usize, delta: CsumDelta) -> Result<(), Reason> {
        update_in_place(self, off, delta)
    }

    #[inline(always)]
    fn update_l4_csum(&self, off: usize, pseudo: CsumDelta, ports: CsumDelta, udp: bool) -> Result<(), Reason> {
        // XDP sees frames as they are on the wire: the checksum is complete, so one update
        // covers both parts.
        let p = ptr_at::<u16>(self, off)?;
        let delta = pseudo.plus(ports);
        // SAFETY: as above.
        unsafe {
            let old = p.read_unaligned();
            p.write_unaligned(if udp { delta.apply_udp(old) } else { delta.apply(old) });
        }
        Ok(())
    }
}

pub struct Tc<'a>(pub &'a TcContext);

impl Packet for Tc<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut core::ffi::c_void {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: a TC program's context is its __sk_buff.
        unsafe { (*(self.0.as_ptr() as *const __sk_buff)).ifindex }
    }

    #[inline(always)]
    fn vlan_id(&self) -> u16 {
        // SAFETY: as above.
        let skb = unsafe { &*(self.0.as_ptr() as *const __sk_buff) };
        if skb.vlan_present != 0 { (skb.vlan_tci & 0x0fff) as u16 } else { 0 }
    }

    #[inline(always)]
    fn gso(&self) -> bool {
        // SAFETY: as above.
        unsafe { (*(self.0.as_ptr() as *const __sk_buff)).gso_size != 0 }
    }

    #[inline(always)]
    fn segs(&self) -> u32 {
        // SAFETY: as above.
        let segs = unsafe { (*(self.0.as_ptr() as *const __sk_buff)).gso_segs };
        if segs > 1 { segs } else { 1 }
    }

    #[inline(always)]
    fn fits(&self, ifindex: u32, tot_len: u16, len_ok: u16) -> bool {
        if !self.gso() {
            return tot_len <= len_ok;
        }
        let mut mtu = 0u32;
        // SAFETY: `mtu` lives on this stack frame for the call; 0 in means "the skb's length".
        let rc = unsafe { bpf_check_mtu(self.ctx_ptr(), ifindex, &mut mtu, 0, BPF_MTU_CHK_SEGS as u64) };
        rc == BPF_MTU_CHK_RET_SUCCESS as i64
    }

    #[inline(always)]
    fn redirect(&self, cfg: &Config, ifindex: u32, _tx: bool) -> bool {
        let Some(peer) = cfg.tc_target(ifindex) else {
            return false;
        };
        // To the egress of any device, veth included, without help from its peer; the skb keeps
        // its checksum (offload) and GSO state. Into a veth whose peer is in another namespace,
        // straight into that peer's ingress (only ingress programs may), past a transmit path
        // that would only queue it for the peer's next softirq.
        // SAFETY: helpers without preconditions.
        let rc = if peer { unsafe { bpf_redirect_peer(ifindex, 0) } } else { unsafe { bpf_redirect(ifindex, 0) } };
        rc == TC_ACT_REDIRECT as i64
    }

    #[inline(always)]
    fn update_l3_csum(&self, off: usize, delta: CsumDelta) -> Result<(), Reason> {
        // Written in place, as in XDP, where `bpf_l3_csum_replace` would cost a helper call:
        // the IPv4 header checksum is never left to offload, the header's sum (what a
        // CHECKSUM_COMPLETE skb's `csum` holds of it) stays the same, and a TC program that
        // writes packet memory starts by making the skb's head its own (the verifier's unclone
        // prologue).
        update_in_place(self, off, delta)
    }

    #[inline(always)]
    fn update_l4_csum(&self, off: usize, pseudo: CsumDelta, ports: CsumDelta, udp: bool) -> Result<(), Reason> {
        // An skb may carry CHECKSUM_PARTIAL (GRO, local TX), where the field holds only the
        // pseudo-header sum: the kernel helper then applies the address part and must skip the
        // port part, so the two parts go in separately with their own flags.
        // A part that did not change is not sent: a zero diff leaves the field and `csum`
        // as they are, and each call costs a helper's (retpolined) call and writable check.
        let mangled0 = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        let replace = |delta: CsumDelta, flags: u64| {
            if delta == CsumDelta::ZERO {
                return Ok(());
            }
            self.0.l4_csum_replace(off, 0, delta.wsum() as u64, flags | mangled0).map_err(|_| Reason::DropRewrite)
        };
        replace(pseudo, BPF_F_PSEUDO_HDR as u64)?;
        replace(ports, 0)
    }
}

impl Tc<'_> {
    /// Makes at least `len` bytes of headers directly accessible (they may sit in paged data
    /// of a non-linear skb), without pulling more than the packet has.
    #[inline(always)]
    pub fn pull_headers(&self, len: u32) {
        let linear = (self.0.data_end() - self.0.data()) as u32;
        let total = self.0.len();
        if linear < len && total > linear {
            let want = if total < len { total } else { len };
            let _ = self.0.skb.pull_data(want);
        }
    }
}
