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
            check_stack_alignment(&object).with_context(|| format!("checking {}", object.display()))?;
        }
    }
    // The helpers object (lab and benchmark programs) is not embedded here: crates that use
    // it read its path from DEP_HAIRPIN_EBPF_HELPERS (see `links` in Cargo.toml).
    println!("cargo::metadata=helpers={}", out.join("helpers").display());
    Ok(())
}

/// Fails on any stack access not aligned to its size. The programs are built allowing
/// misaligned access (see hairpin-ebpf/build.rs), so LLVM may write a small value at an odd
/// stack offset with one wide store, and the verifier rejects every such access, even on
/// paths no test takes; this names the function at build time instead.
fn check_stack_alignment(path: &std::path::Path) -> anyhow::Result<()> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};
    const FP: u8 = 10;
    let data = std::fs::read(path)?;
    let file = object::File::parse(&*data)?;
    let mut bad = Vec::new();
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        for (i, &[op, regs, off0, off1, ..]) in section.data()?.as_chunks::<8>().0.iter().enumerate() {
            let off = i16::from_le_bytes([off0, off1]);
            // Memory (0x60) and atomic (0xc0) modes of the load and store classes: a load's
            // base is its source register, a store's its destination.
            let base = match (op & 0x07, op & 0xe0) {
                (0x01, 0x60) => regs >> 4,
                (0x02 | 0x03, 0x60 | 0xc0) => regs & 0x0f,
                _ => continue,
            };
            let size = match op & 0x18 {
                0x00 => 4,
                0x08 => 2,
                0x10 => 1,
                _ => 8,
            };
            if base == FP && off % size != 0 {
                let at = (i * 8) as u64;
                let func = file.symbols().find(|s| {
                    s.section_index() == Some(section.index()) && (s.address()..s.address() + s.size()).contains(&at)
                });
                let (name, start) = func.map_or(("?", 0), |s| (s.name().unwrap_or("?"), s.address()));
                let n = (at - start) / 8;
                bad.push(format!("{name}: instruction {n} accesses {size} bytes at r10{off:+}"));
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "misaligned stack accesses, which the verifier rejects (give the values copied there an \
             explicit aligned layout, see hairpin-ebpf/src/parse.rs `Parsed`):\n{}",
            bad.join("\n")
        );
    }
    Ok(())
}
