//! hairpin's controller as a library, in layers that call downwards only:
//!
//! - `cmd`: one thin module per command (parse, call, render), over
//! - `service` (`run`'s loop) and `gateway` (the operations: resolve, attach, plan, apply,
//!   forwards, teardown), over
//! - `conntrack` and `sweep` (the flows), `dataplane` (pins, loading, typed map operations),
//!   `spec` (the declared gateway), `events`, `netif`, `ifcaps`, `placement`, `output`.
//!
//! `cli` is a leaf beside them: the clap types, which `cmd` takes. `main.rs` only parses and
//! reports errors. `cargo xtask layers` checks that no module imports in a circle.

#[macro_use]
pub mod output;
pub mod cli;
pub mod cmd;
pub mod conntrack;
pub mod dataplane;
pub mod events;
pub mod gateway;
pub mod ifcaps;
pub mod netif;
pub mod placement;
pub mod service;
pub mod spec;
pub mod sweep;

/// The compiled eBPF object (hairpin-ebpf), built by build.rs with the pinned nightly.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hairpin"));
