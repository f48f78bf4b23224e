//! Types and logic shared by hairpin's eBPF programs and its controller.
//!
//! Everything that crosses the kernel/user boundary is defined here exactly once: `#[repr(C)]`,
//! explicit padding, `bytemuck::Pod`, with its size and alignment asserted at compile time so
//! that the two sides can never disagree on a layout.
#![cfg_attr(not(any(test, feature = "model")), no_std)]

pub mod consts;
pub mod csum;
pub mod expiry;
pub mod flow_cache;
#[cfg(feature = "model")]
pub mod model;
pub mod nat;
pub mod placement;
pub mod reason;
pub mod types;

pub use reason::{Counter, Reason, Slow};
pub use types::*;
