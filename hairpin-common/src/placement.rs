//! Where each interface's ingress runs, and why: the controller decides it per interface from
//! what the kernel says of the device, and records it in the dataplane's [`Config`] so that
//! `stats` and `show` report what is live.
//!
//! The rule it follows: XDP sees frames as the driver received them, without the skb's
//! checksum state. A frame that a local sender (a veth peer's stack, a container) left to
//! checksum offload carries only a partial checksum, which XDP cannot tell from a complete one;
//! and an XDP frame sent into a veth is delivered only if the peer's side has the NAPI that an
//! XDP program or GRO gives it, which cannot be seen from the gateway's side. So native XDP
//! serves only drivers that receive from a wire (or, as virtio-net, turn receive offloads off
//! for XDP); every other device gets the same translation at TC ingress, whose redirect works
//! on every device and keeps the skb's checksum and GSO state.
//!
//! [`Config`]: crate::Config

/// The program kind serving an interface's ingress.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// XDP in the driver; the fast path sends with XDP redirect and XDP_TX.
    Xdp = 1,
    /// XDP emulated on the skb (`--xdp-mode generic`).
    XdpGeneric = 2,
    /// TC ingress; the fast path sends with `bpf_redirect`.
    Tc = 3,
}

impl Ingress {
    pub const fn name(self) -> &'static str {
        match self {
            Ingress::Xdp => "xdp",
            Ingress::XdpGeneric => "xdp-generic",
            Ingress::Tc => "tc",
        }
    }
    const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Ingress::Xdp),
            2 => Some(Ingress::XdpGeneric),
            3 => Some(Ingress::Tc),
            _ => None,
        }
    }
}

macro_rules! whys {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $text:literal; )*) => {
        /// Why an interface's ingress runs where it does. Numbers are ABI (stored in the
        /// pinned configuration): append, never renumber.
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Why {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl Why {
            /// What `up` and `stats` print after the choice.
            pub const fn text(self) -> &'static str {
                match self { $(Why::$name => $text,)* }
            }
            const fn from_u8(v: u8) -> Option<Self> {
                match v { $($num => Some(Why::$name),)* _ => None }
            }
        }
    };
}

whys! {
    /// `--mode tc`.
    ModeTc = 1, "--mode tc";
    /// `--xdp-mode native` or `generic` was given.
    Forced = 2, "--xdp-mode given";
    /// The driver runs XDP and receives complete checksums.
    NativeXdp = 3, "native XDP in the driver";
    /// A veth, tun or netkit device: its peer's frames carry checksums left to offload, which
    /// XDP cannot see, and XDP frames sent into it are lost unless its peer runs XDP.
    SoftwarePeer = 4, "software device: its peer's checksum offload and NAPI are invisible to XDP";
    /// The driver has no native XDP (bridge, VLAN, ...), as the kernel reports.
    NoNativeXdp = 5, "the driver has no native XDP";
    /// Attaching native XDP failed.
    AttachFailed = 6, "native XDP could not be attached";
}

/// An interface's placement as stored in the configuration: the ingress kind, why, and whether
/// the XDP fast path may send frames into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub ingress: Ingress,
    pub why: Why,
    /// XDP redirect into this interface, and XDP_TX out of it, deliver (the kernel says the
    /// device takes XDP frames, `NETDEV_XDP_ACT_NDO_XMIT`).
    pub xdp_target: bool,
    /// The TC fast path sends packets for this interface straight into its peer's ingress
    /// (`bpf_redirect_peer`): a veth whose peer is in another namespace, with no queueing
    /// discipline of its own to keep, so that its transmit path (which would only queue the
    /// packet for the peer's next softirq) is skipped.
    pub peer_target: bool,
}

/// The bit of an encoded placement that says the XDP fast path may send into the interface.
pub const XDP_TARGET: u16 = 1 << 15;
/// The bit that says the TC fast path sends into the interface's peer ([`Placement::peer_target`]).
pub const PEER_TARGET: u16 = 1 << 14;

impl Placement {
    /// The `u16` kept in [`crate::Config`]: ingress, why, target flag.
    pub const fn encode(self) -> u16 {
        self.ingress as u16
            | (self.why as u16) << 4
            | if self.xdp_target { XDP_TARGET } else { 0 }
            | if self.peer_target { PEER_TARGET } else { 0 }
    }
    /// `None` for 0 (a configuration written before placements were recorded) or garbage.
    pub const fn decode(v: u16) -> Option<Self> {
        let (Some(ingress), Some(why)) = (Ingress::from_u8((v & 0xf) as u8), Why::from_u8(((v >> 4) & 0xff) as u8))
        else {
            return None;
        };
        Some(Self { ingress, why, xdp_target: v & XDP_TARGET != 0, peer_target: v & PEER_TARGET != 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_round_trip() {
        for ingress in [Ingress::Xdp, Ingress::XdpGeneric, Ingress::Tc] {
            for why in
                [Why::ModeTc, Why::Forced, Why::NativeXdp, Why::SoftwarePeer, Why::NoNativeXdp, Why::AttachFailed]
            {
                for (xdp_target, peer_target) in [(false, false), (true, false), (false, true), (true, true)] {
                    let p = Placement { ingress, why, xdp_target, peer_target };
                    assert_eq!(Placement::decode(p.encode()), Some(p));
                }
            }
        }
        assert_eq!(Placement::decode(0), None);
    }
}
