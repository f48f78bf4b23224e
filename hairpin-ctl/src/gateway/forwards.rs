//! The one writer of forwards: every insert into and delete from the dataplane's forward table
//! goes through here, with the checks that keep a public port from having two owners (a
//! forward and a LAN host's masquerade binding) and the removal of a forward's flows.

use std::net::SocketAddrV4;

use anyhow::{Context as _, bail};
use hairpin_common::{Config, Endpoint, Ipv4Be, MappingKey, PortBe};

use crate::{
    conntrack::{self, Flow},
    dataplane::{InsertError, Maps},
    output,
    spec::{self, Forward, Proto},
};

/// A forward's table entry on the public address `public`: its key and its target.
pub fn entry(f: &Forward, public: Ipv4Be) -> (MappingKey, Endpoint) {
    (key(f.proto, public, f.port), endpoint(f.to))
}

/// The table key of `proto` traffic to `public:port`.
pub fn key(proto: Proto, public: Ipv4Be, port: u16) -> MappingKey {
    MappingKey::new(proto.number(), Endpoint::new(public, PortBe::from_host(port)))
}

pub fn endpoint(sa: SocketAddrV4) -> Endpoint {
    Endpoint::new(Ipv4Be::from_octets(sa.ip().octets()), PortBe::from_host(sa.port()))
}

/// The forwards in the table on the gateway's public address `public`, as a spec says them,
/// sorted by protocol and port.
pub fn list(maps: &Maps, public: Ipv4Be) -> anyhow::Result<Vec<Forward>> {
    let mut out = Vec::new();
    for (k, v) in maps.forwards()? {
        let Some(proto) = Proto::from_number(k.proto) else { continue };
        if k.addr == public {
            out.push(Forward { proto, port: k.port.host(), to: output::endpoint(v) });
        }
    }
    out.sort_by_key(|f| (f.proto.name(), f.port));
    Ok(out)
}

/// Why `proto public -> to` cannot be forwarded on a gateway configured `cfg`, if it cannot:
/// the public address must be the gateway's, the target a LAN host other than the gateway.
pub fn check(cfg: &Config, public: SocketAddrV4, to: SocketAddrV4) -> anyhow::Result<()> {
    if public.ip().octets() != cfg.public_addr.octets() {
        bail!(
            "{} is not this gateway's public address ({}): the forward could never match",
            public.ip(),
            output::ip(cfg.public_addr)
        );
    }
    if let Some(why) = spec::target_problem(*to.ip(), &super::addresses(cfg)) {
        bail!("{why}");
    }
    Ok(())
}

/// The LAN endpoint whose masquerade binding holds the public port of `key`, if one does.
pub fn holder(maps: &Maps, key: &MappingKey) -> Option<Endpoint> {
    maps.port_holder(key)
}

/// Why a forward could not be inserted.
#[derive(Debug)]
pub enum AddError {
    /// The public endpoint is forwarded already, to this target.
    AlreadyExists(Endpoint),
    /// A LAN host's binding (this LAN endpoint's) holds the public port of the key.
    Held(MappingKey, Endpoint),
    Map(anyhow::Error),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::AlreadyExists(to) => write!(f, "already forwarded (to {})", output::endpoint(*to)),
            AddError::Held(key, holder) => write!(
                f,
                "public {} port {} is held by {}'s masquerade binding: pick another port, or release it with \
                 `hairpin-ctl flows flush`",
                output::proto_name(key.proto),
                key.port.host(),
                output::endpoint(*holder)
            ),
            AddError::Map(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for AddError {}

/// Inserts a new forward. Its public port is checked against the bindings before and again
/// after the insert: the dataplane claims a bound port and then checks the forwards, so
/// between the two one always sees the other (a binding made meanwhile keeps the port, and
/// the forward goes again).
pub fn insert(maps: &mut Maps, key: &MappingKey, target: &Endpoint) -> Result<(), AddError> {
    if let Some(h) = holder(maps, key) {
        return Err(AddError::Held(*key, h));
    }
    match maps.insert_forward(key, target, true) {
        Ok(()) => {}
        Err(InsertError::Exists) => return Err(AddError::AlreadyExists(maps.forward(key).unwrap_or(*target))),
        Err(InsertError::Map(e)) => return Err(AddError::Map(e)),
    }
    if let Some(h) = holder(maps, key) {
        maps.remove_forward(key);
        return Err(AddError::Held(*key, h));
    }
    Ok(())
}

/// Points an existing forward at another target (one atomic write).
pub fn retarget(maps: &mut Maps, key: &MappingKey, target: &Endpoint) -> anyhow::Result<()> {
    maps.insert_forward(key, target, false).map_err(|e| match e {
        InsertError::Exists => unreachable!("only inserts of new forwards can find one"),
        InsertError::Map(e) => e,
    })
}

/// Removes a forward's entry only (its flows are removed by the caller, once, for all it
/// removes: see [`remove`]).
pub fn delete(maps: &mut Maps, key: &MappingKey) {
    maps.remove_forward(key);
}

/// Removes a forward and the flows it made: they stop at once. Returns those flows.
pub fn remove(maps: &mut Maps, key: &MappingKey) -> anyhow::Result<Vec<Flow>> {
    if maps.forward(key).is_none() {
        bail!("no forward {} {}", output::proto_name(key.proto), output::endpoint(Endpoint::new(key.addr, key.port)));
    }
    delete(maps, key);
    let (flows, _) = conntrack::snapshot(maps)?;
    let its: Vec<Flow> = flows.into_iter().filter(|f| f.made_by(key)).collect();
    maps.remove_entries(its.iter().flat_map(Flow::entries)).context("removing the forward's flows")?;
    Ok(its)
}
