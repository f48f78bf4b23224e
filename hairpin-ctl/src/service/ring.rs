//! The dataplane's event ring (`HP_EVENTS`): new flows and flows refused for want of a port
//! or table space, read by `run` as it fills.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use hairpin_common::{EVENT_NEW_FLOW, Event, Reason, consts::map_names};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    dataplane::PinDir,
    events::{FlowEvent, Hub, Seen},
};

/// The dataplane's event ring (`HP_EVENTS`), pinned, read as it fills.
pub fn open(pins: &PinDir) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let path = pins.map(map_names::EVENTS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let ring = RingBuf::try_from(aya::maps::Map::RingBuf(data)).context("the event ring")?;
    // SAFETY: the ring owns its map's fd, which stays open and the same for as long as the
    // ring lives, i.e. as long as the AsyncFd that owns it.
    Ok(unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(std::io::Error::from)?)
}

/// At most this many of the dataplane's events are taken per wake: under a flood of new flows
/// the ring refills as fast as it is read, and sweeps and signals must still get their turn.
const EVENTS_PER_WAKE: usize = 1024;

/// Takes what the dataplane reported: new flows go to the watchers (and the log, with
/// `--log-flows`), refused ones to the log as warnings. Returns whether it stopped short (more
/// are waiting).
pub fn take_events(ring: &mut RingBuf<MapData>, hub: &Hub, seen: &mut Seen, log_flows: bool) -> bool {
    for _ in 0..EVENTS_PER_WAKE {
        let Some(item) = ring.next() else { return false };
        let Some(e) = bytemuck::try_from_bytes::<Event>(&item[..std::mem::size_of::<Event>().min(item.len())]).ok()
        else {
            continue;
        };
        if e.kind == EVENT_NEW_FLOW {
            let ev = FlowEvent::new("new", None, &e.key, &e.xlate, e.detail);
            if log_flows {
                say!("flow {ev}");
            }
            hub.send(&ev);
            seen.add(e.key, e.xlate, e.detail);
            continue;
        }
        let want = match Reason::from_index(e.detail) {
            Some(Reason::DropNoPort) => "free public port",
            _ => "table space",
        };
        let k = &e.key;
        let (src, dst) = (Ipv4Addr::from(k.src.octets()), Ipv4Addr::from(k.dst.octets()));
        warn!(
            "dataplane: no {want} for a new flow (proto {}) {src}:{} -> {dst}:{}: dropped",
            k.proto,
            k.sport.host(),
            k.dport.host()
        );
    }
    true
}
