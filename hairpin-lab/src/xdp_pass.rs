//! A pass-through XDP program on an interface: the far end of a veth must run one for XDP
//! frames sent into the veth (XDP_TX, redirect) to be delivered. Labs and benchmarks attach it
//! where that is the point; a gateway never needs it.

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

/// `xdp_pass` attached to an interface of the calling thread's network namespace, for as long
/// as this value lives.
pub struct XdpPass {
    _ebpf: Ebpf,
}

impl XdpPass {
    pub fn attach(iface: &str) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(crate::HELPERS_OBJECT).context("loading the helper programs")?;
        let prog: &mut Xdp = ebpf.program_mut("xdp_pass").context("xdp_pass missing")?.try_into()?;
        prog.load()?;
        let ifindex = nix::net::if_::if_nametoindex(iface).with_context(|| format!("no interface {iface}"))?;
        prog.attach(ifindex, XdpMode::Driver).with_context(|| format!("attaching xdp_pass to {iface}"))?;
        Ok(Self { _ebpf: ebpf })
    }
}
