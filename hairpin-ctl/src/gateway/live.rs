//! The live gateway read back as a spec: what `show` prints, and what `apply` and `run`
//! compare a new spec with.

use hairpin_common::{
    CFG_F_PUBLIC_FROM_WAN,
    placement::{Ingress, Placement, Why},
};

use crate::{
    dataplane::{Maps, PinDir},
    netif, output,
    spec::{Mode, PortRange, Spec, TcAttachMode, UdpFiltering, XdpAttachMode},
};

/// The live dataplane as a spec: what `show` prints, and what `apply` and `run` compare with.
/// Keys that only pick a default (`mode = "auto"`) read back as what they chose where the
/// placements say so; addresses read back as in use.
pub fn read(pins: &PinDir, maps: &Maps) -> anyhow::Result<Spec> {
    let cfg = maps.config()?;
    let name = |ifindex| netif::name(ifindex).unwrap_or_else(|| format!("ifindex-{ifindex}"));
    let mut spec = Spec::new(&name(cfg.ifindex[0]), &name(cfg.ifindex[1]));
    let addrs = super::addresses(&cfg);
    spec.lan.address = Some(addrs.lan_ip);
    spec.lan.prefix = Some(addrs.lan_prefix);
    if cfg.flags & CFG_F_PUBLIC_FROM_WAN == 0 {
        spec.wan.public_address = Some(output::ip(cfg.public_addr));
    }
    spec.nat.hairpin = cfg.hairpin();
    spec.nat.port_range = PortRange { min: cfg.port_min, max: cfg.port_max };
    spec.nat.udp_filtering = match cfg.udp_endpoint_independent_filtering() {
        true => UdpFiltering::EndpointIndependent,
        false => UdpFiltering::AddressAndPortDependent,
    };
    spec.timeouts = cfg.timeouts;
    let d = &mut spec.dataplane;
    d.fast_path = cfg.fast_path();
    d.flow_cache = maps.flow_cache_enabled()?;
    d.max_flows = maps.max_flows()?;
    d.tc_attach = if pins.tcx_links() { TcAttachMode::Tcx } else { TcAttachMode::Netlink };
    let placements = [Placement::decode(cfg.placement[0]), Placement::decode(cfg.placement[1])];
    let placed: Vec<Placement> = placements.into_iter().flatten().collect();
    let all = |f: &dyn Fn(&Placement) -> bool| !placed.is_empty() && placed.iter().all(f);
    let any = |f: &dyn Fn(&Placement) -> bool| placed.iter().any(f);
    (d.mode, d.xdp_mode) = if any(&|p| p.why == Why::ModeTc) {
        (Mode::Tc, XdpAttachMode::Auto)
    } else if all(&|p| p.why == Why::Forced && p.ingress == Ingress::XdpGeneric) {
        (Mode::Auto, XdpAttachMode::Generic)
    } else if any(&|p| p.why == Why::Forced) {
        // `--mode xdp` (native where it attached, generic where it fell back).
        (Mode::Xdp, XdpAttachMode::Auto)
    } else {
        (Mode::Auto, XdpAttachMode::Auto)
    };
    // The file's forwards only: runtime ones are not the file's to write (see `forwards`).
    spec.forwards = super::forwards::list(maps)?
        .into_iter()
        .filter(|f| f.origin == super::forwards::Origin::File && *f.public.ip() == output::ip(cfg.public_addr))
        .map(|f| f.spec())
        .collect();
    Ok(spec)
}
