//! Forwards, and their one writer: every insert into and delete from the dataplane's forward
//! table goes through here, with the checks that keep a public port from having two owners (a
//! forward and a LAN host's masquerade binding) and the removal of a forward's flows.
//!
//! A forward has an origin, kept in its entry so that a restarted controller knows it: the
//! configuration file's forwards are the file's to add and remove (a reload removes those it no
//! longer declares), and forwards added at runtime (`map add`) outlive every reload, unless the
//! file declares their port itself (the file's then takes it).

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context as _, bail};
use hairpin_common::{
    Config, Endpoint, FWD_ORIGIN_FILE, FWD_ORIGIN_MASK, FWD_ORIGIN_RUNTIME, ForwardEntry, Ipv4Be, PortBe, ProtoEndpoint,
};

use crate::{
    conntrack::{self, Flow},
    dataplane::{InsertError, Maps},
    output,
    spec::{self, Proto},
};

/// Who made a forward, and so who may remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The configuration file (`apply`, `up --config`, `run --config` and its reloads).
    File,
    /// `map add`.
    Runtime,
}

impl Origin {
    const fn flags(self) -> u32 {
        match self {
            Origin::File => FWD_ORIGIN_FILE,
            Origin::Runtime => FWD_ORIGIN_RUNTIME,
        }
    }
    pub const fn name(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Runtime => "runtime",
        }
    }
}

/// A forward: `proto` traffic to `public` goes to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub proto: Proto,
    pub public: SocketAddrV4,
    pub to: SocketAddrV4,
    pub origin: Origin,
    /// CLOCK_BOOTTIME ns after which the sweep removes it.
    pub expires_ns: Option<u64>,
}

impl Forward {
    /// A file's forward on the public address `public`.
    pub fn declared(f: &spec::Forward, public: Ipv4Addr) -> Self {
        let public = SocketAddrV4::new(public, f.port);
        Self { proto: f.proto, public, to: f.to, origin: Origin::File, expires_ns: None }
    }

    /// As the file says it.
    pub fn spec(&self) -> spec::Forward {
        spec::Forward { proto: self.proto, port: self.public.port(), to: self.to }
    }

    pub fn key(&self) -> ProtoEndpoint {
        ProtoEndpoint::new(self.proto.number(), endpoint(self.public))
    }

    pub fn entry(&self) -> ForwardEntry {
        ForwardEntry {
            target: endpoint(self.to),
            flags: self.origin.flags(),
            source_limit: 0,
            port_offset: 0,
            expires_ns: self.expires_ns.unwrap_or(0),
        }
    }

    /// The same forward on another public address.
    pub fn moved_to(&self, public: Ipv4Addr) -> Self {
        Self { public: SocketAddrV4::new(public, self.public.port()), ..*self }
    }

    /// The forward a table entry is, if its protocol is one a forward carries.
    fn from_entry(k: &ProtoEndpoint, e: &ForwardEntry) -> Option<Self> {
        Some(Self {
            proto: Proto::from_number(k.proto)?,
            public: output::endpoint(Endpoint::new(k.addr, k.port)),
            to: output::endpoint(e.target),
            origin: if e.flags & FWD_ORIGIN_MASK == FWD_ORIGIN_RUNTIME { Origin::Runtime } else { Origin::File },
            expires_ns: (e.expires_ns != 0).then_some(e.expires_ns),
        })
    }
}

pub fn endpoint(sa: SocketAddrV4) -> Endpoint {
    Endpoint::new(Ipv4Be::from_octets(sa.ip().octets()), PortBe::from_host(sa.port()))
}

/// Every forward in the table, sorted by protocol and public endpoint.
pub fn list(maps: &Maps) -> anyhow::Result<Vec<Forward>> {
    let mut out: Vec<Forward> = maps.forwards()?.iter().filter_map(|(k, e)| Forward::from_entry(k, e)).collect();
    out.sort_by_key(|f| (f.proto, f.public.port(), f.public.ip().octets()));
    Ok(out)
}

/// The forward on `key`, if there is one.
pub fn get(maps: &Maps, key: &ProtoEndpoint) -> Option<Forward> {
    maps.forward(key).and_then(|e| Forward::from_entry(key, &e))
}

/// Why `public -> to` cannot be forwarded on a gateway configured `cfg`, if it cannot: the
/// public address must be the gateway's, the target a LAN host other than the gateway.
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

/// Refuses `f` if a LAN host's masquerade binding holds its public port.
pub fn check_not_held(maps: &Maps, f: &Forward) -> Result<(), AddError> {
    let key = f.key();
    maps.port_holder(&key).map_or(Ok(()), |h| Err(AddError::Held(key, h)))
}

/// Why a forward could not be inserted.
#[derive(Debug)]
pub enum AddError {
    /// The public endpoint is forwarded already, so.
    AlreadyExists(Forward),
    /// A LAN host's binding (this LAN endpoint's) holds the public port of the key.
    Held(ProtoEndpoint, Endpoint),
    Map(anyhow::Error),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::AlreadyExists(fw) => write!(f, "already forwarded (to {}, {})", fw.to, fw.origin.name()),
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

/// Fills the forward table of a freshly loaded object, before anything is attached, with a
/// file's forwards on the public address `public`.
pub fn fill(table: &mut aya::maps::Map, declared: &[spec::Forward], public: Ipv4Addr) -> anyhow::Result<()> {
    let mut table: aya::maps::HashMap<_, ProtoEndpoint, ForwardEntry> = aya::maps::HashMap::try_from(table)?;
    for f in declared.iter().map(|f| Forward::declared(f, public)) {
        table.insert(&f.key(), &f.entry(), 0).with_context(|| format!("adding forward {}", f.spec()))?;
    }
    Ok(())
}

/// Inserts a new forward. Its public port is checked against the bindings before and again
/// after the insert: the dataplane claims a bound port and then checks the forwards, so
/// between the two one always sees the other (a binding made meanwhile keeps the port, and
/// the forward goes again).
pub fn insert(maps: &mut Maps, f: &Forward) -> Result<(), AddError> {
    let key = f.key();
    check_not_held(maps, f)?;
    match maps.insert_forward(&key, &f.entry(), true) {
        Ok(()) => {}
        Err(InsertError::Exists) => return Err(AddError::AlreadyExists(get(maps, &key).unwrap_or(*f))),
        Err(InsertError::Map(e)) => return Err(AddError::Map(e)),
    }
    check_not_held(maps, f).inspect_err(|_| maps.remove_forward(&key))
}

/// Replaces the forward on `f`'s public endpoint with `f` (another target or origin), in one
/// atomic write.
pub fn replace(maps: &mut Maps, f: &Forward) -> anyhow::Result<()> {
    maps.insert_forward(&f.key(), &f.entry(), false).map_err(|e| match e {
        InsertError::Exists => unreachable!("only inserts of new forwards can find one"),
        InsertError::Map(e) => e,
    })
}

/// Removes a forward's entry only (its flows are removed by the caller, once, for all it
/// removes: see [`remove`]).
pub fn delete(maps: &mut Maps, key: &ProtoEndpoint) {
    maps.remove_forward(key);
}

/// Removes a forward and the flows it made: they stop at once. Returns those flows.
pub fn remove(maps: &mut Maps, key: &ProtoEndpoint) -> anyhow::Result<Vec<Flow>> {
    if maps.forward(key).is_none() {
        bail!("no forward {} {}", output::proto_name(key.proto), output::endpoint(Endpoint::new(key.addr, key.port)));
    }
    delete(maps, key);
    let (flows, _) = conntrack::snapshot(maps)?;
    let its: Vec<Flow> = flows.into_iter().filter(|f| f.made_by(key)).collect();
    maps.remove_entries(its.iter().flat_map(Flow::entries)).context("removing the forward's flows")?;
    Ok(its)
}

/// Removes the forwards whose expiry has passed at `now` (boot ns), with their flows. Returns
/// the forwards and their flows.
pub fn expire(maps: &mut Maps, now: u64) -> anyhow::Result<(Vec<Forward>, Vec<Flow>)> {
    let due: Vec<Forward> = list(maps)?.into_iter().filter(|f| f.expires_ns.is_some_and(|t| t <= now)).collect();
    let mut flows = Vec::new();
    for f in &due {
        flows.extend(remove(maps, &f.key())?);
    }
    Ok((due, flows))
}
