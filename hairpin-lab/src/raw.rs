//! Raw handles on a dataplane's maps, for tests and benchmarks that set up what the dataplane
//! itself would have written (flows, counters) or read what the controller wrote (the
//! generation). The controller's `Maps` offers only the controller's own operations.

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use hairpin_ctl::dataplane::PinDir;

/// A second handle on the map `name` of a loaded object (the object keeps its own, so its maps
/// can still be taken by the controller's `Maps::take`).
pub fn of_object(ebpf: &Ebpf, name: &str) -> anyhow::Result<Map> {
    let map = ebpf.map(name).with_context(|| format!("map {name} missing from the object"))?;
    let (data, wrap): (&MapData, fn(MapData) -> Map) = match map {
        Map::HashMap(d) => (d, Map::HashMap),
        Map::LruHashMap(d) => (d, Map::LruHashMap),
        Map::Array(d) => (d, Map::Array),
        Map::PerCpuArray(d) => (d, Map::PerCpuArray),
        _ => bail!("map {name}: a kind without a second handle here"),
    };
    let id = data.info().with_context(|| format!("map {name}"))?.id();
    Ok(wrap(MapData::from_id(id).with_context(|| format!("opening map {name} again"))?))
}

/// The pinned map `name` of the dataplane at `pins`.
pub fn pinned(pins: &PinDir, name: &str) -> anyhow::Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map {name}"))
}
