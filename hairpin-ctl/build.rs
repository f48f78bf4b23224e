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
            check_stack_depth(&object).with_context(|| format!("checking {}", object.display()))?;
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

/// The most stack a call chain may use, as the verifier counts it (`MAX_BPF_STACK`).
const MAX_STACK: u64 = 512;

/// Fails if any program's call chain (the program and the BPF functions it calls) needs more
/// than 512 bytes of stack as the verifier of the oldest supported kernel adds it up: each
/// frame rounded up to 32 bytes (6.1; later kernels round JITed frames to 16), summed along
/// the chain. Kernels from 6.12 accept some chains 6.1 rejects, so only a build-time check
/// keeps the programs loadable everywhere. A frame's depth is the deepest stack offset its
/// instructions touch, directly or through a register derived from r10 (an over-estimate
/// at worst: straight-line, ignoring control flow).
fn check_stack_depth(path: &std::path::Path) -> anyhow::Result<()> {
    use std::collections::HashMap;

    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind, SymbolKind};
    const FP: u8 = 10;
    let data = std::fs::read(path)?;
    let file = object::File::parse(&*data)?;
    // Every function: (section, start, end) in bytes, its frame depth and whom it calls.
    struct Func {
        depth: u64,
        calls: Vec<String>,
        program: bool,
    }
    let mut funcs: HashMap<String, Func> = HashMap::new();
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let code = section.data()?;
        let insns = code.as_chunks::<8>().0;
        // Calls into another section carry a relocation: to the callee's symbol, or to its
        // section's symbol with the callee's place in the immediate.
        let relocs: HashMap<u64, object::Symbol> = section
            .relocations()
            .filter_map(|(off, r)| match r.target() {
                RelocationTarget::Symbol(i) => Some((off, file.symbol_by_index(i).ok()?)),
                _ => None,
            })
            .collect();
        let func_at = |section: Option<object::SectionIndex>, at: u64| {
            file.symbols()
                .find(|s| s.section_index() == section && s.kind() == SymbolKind::Text && s.address() == at)
                .and_then(|s| s.name().ok().map(str::to_owned))
        };
        let symbols: Vec<_> = file
            .symbols()
            .filter(|s| s.section_index() == Some(section.index()) && s.kind() == SymbolKind::Text && s.size() > 0)
            .collect();
        for sym in &symbols {
            let (start, end) = (sym.address() as usize / 8, (sym.address() + sym.size()) as usize / 8);
            let mut depth = 0u64;
            // Registers holding r10 plus an offset.
            let mut derived: [Option<i64>; 11] = [None; 11];
            let mut calls = Vec::new();
            for (i, &[op, regs, off0, off1, i0, i1, i2, i3]) in insns.iter().enumerate().take(end).skip(start) {
                let (dst, src) = ((regs & 0x0f) as usize, (regs >> 4) as usize);
                let off = i64::from(i16::from_le_bytes([off0, off1]));
                let imm = i64::from(i32::from_le_bytes([i0, i1, i2, i3]));
                let mut touch = |at: i64| {
                    if at < 0 {
                        depth = depth.max(at.unsigned_abs());
                    }
                };
                match (op & 0x07, op & 0xe0, op) {
                    // Loads and stores: base register plus offset.
                    (0x01, 0x60, _) if src == FP as usize => touch(off),
                    (0x02 | 0x03, 0x60 | 0xc0, _) if dst == FP as usize => touch(off),
                    (0x01, 0x60, _) => {
                        if let Some(Some(b)) = derived.get(src) {
                            touch(b + off);
                        }
                    }
                    (0x02 | 0x03, 0x60 | 0xc0, _) => {
                        if let Some(Some(b)) = derived.get(dst) {
                            touch(b + off);
                        }
                    }
                    // 64-bit mov from r10 (0xbf), and adds of an immediate to a derived register.
                    (_, _, 0xbf) if src == FP as usize && dst < 11 => derived[dst] = Some(0),
                    (_, _, 0x07) if dst < 11 => {
                        if let Some(b) = derived[dst] {
                            derived[dst] = Some(b + imm);
                            touch(b + imm);
                        }
                    }
                    // A call to a BPF function (src_reg 1): by relocation, or relative.
                    (_, _, 0x85) if src == 1 => {
                        let target = match relocs.get(&((i * 8) as u64)) {
                            Some(r) if r.kind() == SymbolKind::Section => {
                                func_at(r.section_index(), ((imm + 1) * 8) as u64)
                            }
                            Some(r) => r.name().ok().map(str::to_owned),
                            None => func_at(Some(section.index()), ((i as i64 + imm + 1) * 8) as u64),
                        };
                        calls.push(target.unwrap_or_else(|| format!("? (call at instruction {})", i - start)));
                    }
                    _ => {
                        // Any other write to a register ends what it held.
                        if matches!(op & 0x07, 0x04 | 0x07 | 0x01) && dst < 11 {
                            derived[dst] = None;
                        }
                    }
                }
            }
            let program = section.name().unwrap_or(".text") != ".text";
            funcs.insert(sym.name()?.to_owned(), Func { depth, calls, program });
        }
    }
    // The deepest chain from each program, by depth-first search (BPF forbids recursion).
    fn chain(f: &str, funcs: &HashMap<String, Func>, seen: &mut Vec<String>) -> (u64, Vec<String>) {
        let Some(func) = funcs.get(f) else { return (0, vec![f.to_owned()]) };
        if seen.iter().any(|s| s == f) {
            return (0, vec![]);
        }
        seen.push(f.to_owned());
        let own = func.depth.max(1).div_ceil(32) * 32;
        let (deepest, mut path) =
            func.calls.iter().map(|c| chain(c, funcs, seen)).max_by_key(|(d, _)| *d).unwrap_or((0, vec![]));
        seen.pop();
        path.insert(0, format!("{f} ({own})"));
        (own + deepest, path)
    }
    let mut bad = Vec::new();
    for (name, f) in funcs.iter().filter(|(_, f)| f.program) {
        let (total, path) = chain(name, &funcs, &mut Vec::new());
        if total > MAX_STACK || f.depth > MAX_STACK {
            bad.push(format!("{name}: {total} bytes over {}", path.join(" -> ")));
        }
    }
    if !bad.is_empty() {
        bad.sort();
        bail!(
            "call chains over the verifier's {MAX_STACK}-byte stack (frames rounded to 32 as kernel 6.1 \
             counts them; move large values off the stack, see hairpin-ebpf/src/ct.rs `PLAN`):\n{}",
            bad.join("\n")
        );
    }
    Ok(())
}
