//! Machine output (`--json`) and human output, kept apart from the commands' logic. Every
//! command writes its output through here: a closed pipe (`hairpin-ctl stats | head -1`) ends
//! the program quietly, as it does any Unix filter, instead of a panic. Under `run`, the same
//! lines become log events (tracing: timestamps, levels, text or JSON lines).

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

use hairpin_common::{Endpoint, FlowKey};
use serde::Serialize;

pub fn ip(a: hairpin_common::Ipv4Be) -> Ipv4Addr {
    Ipv4Addr::from(a.octets())
}

pub fn endpoint(e: Endpoint) -> SocketAddrV4 {
    SocketAddrV4::new(ip(e.addr), e.port.host())
}

pub fn src(k: &FlowKey) -> SocketAddrV4 {
    endpoint(k.src_ep())
}

pub fn dst(k: &FlowKey) -> SocketAddrV4 {
    endpoint(k.dst_ep())
}

/// A byte count as an operator reads it: exact below 10 kB, then in binary units (`12.3M`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 10_000 {
        return n.to_string();
    }
    let (mut v, mut unit) = (n as f64 / 1024.0, 0);
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// An Ethernet address as `ip link` prints it.
pub fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// A flow's protocol by name; an ICMP echo flow's "port" is its identifier.
pub fn proto_name(proto: u8) -> &'static str {
    use hairpin_common::consts::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

/// Set once `run` has made its output a log.
static LOG: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Makes every line from here on a log event on stdout: `info` for what [`say!`](crate::say)
/// says, `warn` for [`warn!`](crate::warn); as JSON lines if `json`.
pub fn log(json: bool) {
    let fmt = tracing_subscriber::fmt().with_target(false).with_writer(std::io::stdout).with_ansi(false);
    match json {
        true => fmt.json().flatten_event(true).init(),
        false => fmt.init(),
    }
    let _ = LOG.set(());
}

/// A warning: on stderr as `warning: ...`, or a log event under `run`.
pub fn warning(args: std::fmt::Arguments) {
    match LOG.get() {
        Some(()) => tracing::warn!("{args}"),
        None => eprintln!("warning: {args}"),
    }
}

/// An error that does not stop the command (`run` goes on): on stderr as `error: ...`, or a
/// log event under `run`.
pub fn error(args: std::fmt::Arguments) {
    match LOG.get() {
        Some(()) => tracing::error!("{args}"),
        None => eprintln!("error: {args}"),
    }
}

/// `eprintln!("warning: ...")` through [`warning`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::output::warning(format_args!($($arg)*)) };
}

/// Writes one line to stdout (see [`say!`](crate::say)). A reader that has gone is the end of
/// the output: exit at once, successfully. Any other failure to write is an error exit.
pub fn line(args: std::fmt::Arguments) {
    if LOG.get().is_some() {
        tracing::info!("{args}");
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(format_args!("{args}\n")).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`line`].
#[macro_export]
macro_rules! say {
    () => { $crate::output::line(format_args!("")) };
    ($($arg:tt)*) => { $crate::output::line(format_args!($($arg)*)) };
}

/// A flow's kind, from its conntrack flags: from the internet to a port-forward, a LAN host
/// to the public address, or a LAN host to the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Forward,
    Hairpin,
    Masquerade,
}

impl Kind {
    pub fn of(ct_flags: u32) -> Self {
        use hairpin_common::{CT_F_HAIRPIN, CT_F_MASQ};
        match (ct_flags & CT_F_HAIRPIN != 0, ct_flags & CT_F_MASQ != 0) {
            (true, _) => Kind::Hairpin,
            (false, true) => Kind::Masquerade,
            (false, false) => Kind::Forward,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Kind::Forward => "forward",
            Kind::Hairpin => "hairpin",
            Kind::Masquerade => "masquerade",
        }
    }
}

/// Prints `value` as pretty JSON followed by a newline: an array of rows, or one object.
pub fn json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    line(format_args!("{}", serde_json::to_string_pretty(value)?));
    Ok(())
}

/// A table for human output: a header line, then aligned columns, no borders (like `ip`, `ss`).
pub fn table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header);
    for col in t.column_iter_mut() {
        col.set_padding((0, 2));
    }
    t
}

/// Prints a table from [`table`], one line at a time through [`line`].
pub fn print_table(t: &comfy_table::Table) {
    for l in t.lines() {
        line(format_args!("{}", l.trim_end()));
    }
}
