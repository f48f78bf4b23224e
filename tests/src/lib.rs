//! Shared fixtures for hairpin's integration tests: a frame builder/verifier and a loaded (not
//! attached) dataplane driven through BPF_PROG_TEST_RUN.
//!
//! These tests need root and a BPF-capable kernel. Without them they fail, loudly: a skipped
//! test would pass CI without testing anything.

pub mod controller;
pub mod dp;
pub mod frame;

use std::path::PathBuf;

/// Panics with the reason when the process cannot load BPF programs or create namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    assert_eq!(euid, 0, "this test needs root (CAP_BPF, CAP_NET_ADMIN): run `cargo xtask test` as root");
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// The hairpin-ctl binary under test: $HAIRPIN_CTL (set by `cargo xtask test`), else the
/// workspace's release or debug build.
pub fn hairpin_ctl() -> PathBuf {
    if let Some(p) = std::env::var_os("HAIRPIN_CTL") {
        return PathBuf::from(p);
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("hairpin-ctl");
        if p.exists() {
            return p;
        }
    }
    panic!("hairpin-ctl is not built: run `cargo xtask test` (or set HAIRPIN_CTL)");
}
