//! hairpin's controller as a library: the CLI definition, the gateway's declared settings
//! (`spec`) and how they meet the live dataplane (`gateway`), the typed view of the pinned
//! dataplane, and one module per subcommand. `main.rs` only parses and reports errors.

#[macro_use]
pub mod output;
pub mod cli;
pub mod cmd;
pub mod dataplane;
pub mod events;
pub mod expire;
pub mod follow;
pub mod gateway;
pub mod ifcaps;
pub mod netif;
pub mod placement;
pub mod spec;
pub mod watch;

/// The compiled eBPF object (hairpin-ebpf), built by build.rs with the pinned nightly.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hairpin"));
