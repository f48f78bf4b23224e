//! Builds the eBPF programs (hairpin-ebpf) for the BPF target with the pinned nightly, so the
//! controller can embed the dataplane's object: `cargo build` alone produces a complete
//! hairpin-ctl. The crate's second object, the lab's and benchmarks' helper programs, is
//! handed to the crates that embed it.

use anyhow::{Context as _, bail};
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.join("../hairpin-ebpf").canonicalize()?;
    let pin = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo::rerun-if-changed={}", pin.display());
    // Read by hairpin-ebpf's own build script (see there).
    println!("cargo::rerun-if-env-changed=HAIRPIN_STRICT_ALIGNMENT");
    let text = std::fs::read_to_string(&pin).with_context(|| format!("reading {}", pin.display()))?;
    let nightly = text
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("channel").map(|v| v.trim_start_matches([' ', '=']).trim().trim_matches('"'))
        })
        .with_context(|| format!("no channel in {}", pin.display()))?
        .to_owned();
    let have_linker = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("bpf-linker").is_file()))
        .unwrap_or(false);
    if !have_linker && std::env::var_os("AYA_BUILD_SKIP").is_none() {
        bail!("bpf-linker is not on PATH: run `cargo xtask setup` (installs {nightly} and bpf-linker)");
    }
    let root = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "hairpin-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(&nightly),
    )?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    if std::env::var_os("AYA_BUILD_SKIP").is_none() {
        for name in ["hairpin", "helpers"] {
            let object = out.join(name);
            hairpin_objcheck::check(&object).with_context(|| format!("checking {}", object.display()))?;
        }
    }
    // The helpers object (lab and benchmark programs) is not embedded here: crates that use
    // it read its path from DEP_HAIRPIN_EBPF_HELPERS (see `links` in Cargo.toml).
    println!("cargo::metadata=helpers={}", out.join("helpers").display());
    Ok(())
}
