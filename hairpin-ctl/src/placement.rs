//! Which hook serves each interface's ingress, decided from what the kernel says of the device
//! (see `hairpin_common::placement` for the rule and its reasons).

use hairpin_common::placement::{Ingress, Placement, Why};

use crate::{
    ifcaps::{Caps, XDP_ACT_BASIC, XDP_ACT_NDO_XMIT},
    spec::{Mode, XdpAttachMode},
};

/// Where `caps`'s ingress goes under the flags given. `(Ingress::Xdp, Why::NativeXdp)` is a
/// first choice: if attaching fails, `up` falls back to [`fallback`].
pub fn choose(caps: &Caps, mode: Mode, xdp_mode: XdpAttachMode) -> Placement {
    let (ingress, why) = match (mode, xdp_mode) {
        (Mode::Tc, _) => (Ingress::Tc, Why::ModeTc),
        (_, XdpAttachMode::Generic) => (Ingress::XdpGeneric, Why::Forced),
        (Mode::Xdp, _) | (_, XdpAttachMode::Native) => (Ingress::Xdp, Why::Forced),
        (Mode::Auto, XdpAttachMode::Auto) if caps.software_peer() => (Ingress::Tc, Why::SoftwarePeer),
        (Mode::Auto, XdpAttachMode::Auto) if caps.xdp_features.is_some_and(|f| f & XDP_ACT_BASIC == 0) => {
            (Ingress::Tc, Why::NoNativeXdp)
        }
        (Mode::Auto, XdpAttachMode::Auto) => (Ingress::Xdp, Why::NativeXdp),
    };
    Placement { ingress, why, xdp_target: xdp_target(caps, ingress, why), peer_target: caps.peer_target() }
}

/// What an interface gets when native XDP was chosen but would not attach: with `--mode xdp`,
/// generic XDP (as before); otherwise TC.
pub fn fallback(caps: &Caps, chosen: Placement) -> Placement {
    let (ingress, why) = match chosen.why {
        Why::Forced => (Ingress::XdpGeneric, Why::Forced),
        _ => (Ingress::Tc, Why::AttachFailed),
    };
    Placement { ingress, why, xdp_target: xdp_target(caps, ingress, why), peer_target: caps.peer_target() }
}

/// Whether the XDP fast path (of either interface) may send frames into this one. A veth
/// advertises that it takes XDP frames whenever its peer has GRO on, yet XDP_TX frames then
/// wait in the peer's ring, and its peer's frames carry partial checksums: only an explicit
/// `--xdp-mode`/`--mode xdp` trusts what it advertises. Generic XDP sends skbs, which any
/// device takes. Without the `netdev` family (kernels before 6.3) the kernel cannot say: an
/// interface native XDP attached to is trusted, but never a veth.
pub fn xdp_target(caps: &Caps, ingress: Ingress, why: Why) -> bool {
    if ingress == Ingress::XdpGeneric {
        return true;
    }
    if caps.software_peer() && why != Why::Forced {
        return false;
    }
    caps.xdp_features.map_or(ingress == Ingress::Xdp && !caps.software_peer(), |f| f & XDP_ACT_NDO_XMIT != 0)
}

/// One line per interface for `up`, `stats`: `lan0: fast path tc (software device: ...)`.
pub fn describe(iface: &str, p: Placement, fast_path: bool) -> String {
    let what = if fast_path { "fast path" } else { "slow path" };
    let target = match (p.ingress, p.xdp_target) {
        (Ingress::Xdp | Ingress::XdpGeneric, _) | (_, false) => "",
        (Ingress::Tc, true) => "; takes XDP frames",
    };
    let untrusted = match (p.ingress, p.xdp_target) {
        (Ingress::Xdp, false) => "; XDP frames are not sent into it",
        _ => "",
    };
    let peer = if p.peer_target && fast_path { "; TC sends into its peer directly" } else { "" };
    format!("{iface}: {what} {} ({}{target}{untrusted}{peer})", p.ingress.name(), p.why.text())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(driver: &str, features: Option<u64>) -> Caps {
        Caps { driver: driver.into(), xdp_features: features, link: Default::default() }
    }

    const NIC: u64 = XDP_ACT_BASIC | 2 | XDP_ACT_NDO_XMIT;

    #[test]
    fn veths_get_tc_unless_xdp_is_asked_for() {
        let auto = |c: &Caps| choose(c, Mode::Auto, XdpAttachMode::Auto);
        // A veth whose peer has no XDP program and GRO off, and one whose peer has GRO on.
        for veth in [caps("veth", Some(XDP_ACT_BASIC | 2)), caps("veth", Some(NIC)), caps("veth", None)] {
            let p = auto(&veth);
            assert_eq!((p.ingress, p.why, p.xdp_target), (Ingress::Tc, Why::SoftwarePeer, false), "{veth:?}");
            let forced = choose(&veth, Mode::Auto, XdpAttachMode::Native);
            assert_eq!((forced.ingress, forced.why), (Ingress::Xdp, Why::Forced));
            assert_eq!(forced.xdp_target, veth.xdp_features.is_some_and(|f| f & XDP_ACT_NDO_XMIT != 0), "{veth:?}");
        }
        let nic = auto(&caps("ixgbe", Some(NIC)));
        assert_eq!((nic.ingress, nic.why, nic.xdp_target), (Ingress::Xdp, Why::NativeXdp, true));
        let bridge = auto(&caps("bridge", Some(0)));
        assert_eq!((bridge.ingress, bridge.why, bridge.xdp_target), (Ingress::Tc, Why::NoNativeXdp, false));
        // An old kernel cannot say: try native XDP, trust it once attached.
        let old = caps("virtio_net", None);
        assert_eq!(auto(&old).ingress, Ingress::Xdp);
        assert!(auto(&old).xdp_target);
        let failed = fallback(&old, auto(&old));
        assert_eq!((failed.ingress, failed.why, failed.xdp_target), (Ingress::Tc, Why::AttachFailed, false));
    }

    #[test]
    fn explicit_modes_win() {
        let nic = caps("ixgbe", Some(NIC));
        assert_eq!(choose(&nic, Mode::Tc, XdpAttachMode::Auto).ingress, Ingress::Tc);
        let generic = choose(&nic, Mode::Auto, XdpAttachMode::Generic);
        assert_eq!((generic.ingress, generic.xdp_target), (Ingress::XdpGeneric, true));
        let xdp = choose(&caps("bridge", Some(0)), Mode::Xdp, XdpAttachMode::Auto);
        assert_eq!((xdp.ingress, xdp.why), (Ingress::Xdp, Why::Forced));
        assert_eq!(fallback(&caps("bridge", Some(0)), xdp).ingress, Ingress::XdpGeneric);
    }

    #[test]
    fn tc_sends_into_a_veths_peer_only_across_namespaces_and_past_no_qdisc() {
        let peer = |c: &Caps| choose(c, Mode::Auto, XdpAttachMode::Auto).peer_target;
        let mut veth = caps("veth", Some(0));
        assert!(!peer(&veth), "a peer in the same namespace: the kernel refuses the redirect");
        veth.link.peer_elsewhere = true;
        assert!(peer(&veth));
        veth.link.qdisc = Some("noqueue".into());
        assert!(peer(&veth));
        veth.link.qdisc = Some("cake".into());
        assert!(!peer(&veth), "a shaper on the device must see its packets");
        assert_eq!(veth.not_peer_target().as_deref(), Some("it has a queueing discipline now (cake)"));
        veth.link = Default::default();
        assert_eq!(veth.not_peer_target().as_deref(), Some("its peer is in this namespace"));
        let mut bridge = caps("bridge", Some(0));
        bridge.link.peer_elsewhere = true;
        assert!(!peer(&bridge));
    }

    #[test]
    fn descriptions_say_what_and_why() {
        let p = choose(&caps("veth", Some(0)), Mode::Auto, XdpAttachMode::Auto);
        assert_eq!(
            describe("lan0", p, true),
            "lan0: fast path tc (software device: its peer's checksum offload and NAPI are invisible to XDP)"
        );
    }
}
