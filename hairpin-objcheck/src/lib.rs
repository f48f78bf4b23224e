//! Build-time checks of a BPF object (hairpin-ctl's build script runs them on the dataplane it
//! embeds), for what the verifier of the oldest supported kernel rejects at load, named at
//! build time instead: stack accesses not aligned to their size, and call chains over 512
//! bytes of stack as 6.1 adds them up. The instruction-level analysis is plain functions over
//! instructions, tested on small programs; the ELF reading only finds the functions and calls.

use std::collections::HashMap;

use anyhow::bail;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind, SymbolKind};

/// The frame pointer register.
const FP: usize = 10;
/// The most stack a call chain may use, as the verifier counts it (`MAX_BPF_STACK`).
pub const MAX_STACK: u64 = 512;

/// One BPF instruction, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub op: u8,
    pub dst: usize,
    pub src: usize,
    pub off: i64,
    pub imm: i64,
}

impl Insn {
    pub fn decode(&[op, regs, off0, off1, i0, i1, i2, i3]: &[u8; 8]) -> Self {
        Self {
            op,
            dst: (regs & 0x0f) as usize,
            src: (regs >> 4) as usize,
            off: i64::from(i16::from_le_bytes([off0, off1])),
            imm: i64::from(i32::from_le_bytes([i0, i1, i2, i3])),
        }
    }

    /// The register a load (memory mode) reads through, or a store or atomic writes through,
    /// and the access's size in bytes.
    fn memory_base(&self) -> Option<(usize, i64)> {
        let base = match (self.op & 0x07, self.op & 0xe0) {
            (0x01, 0x60) => self.src,
            (0x02 | 0x03, 0x60 | 0xc0) => self.dst,
            _ => return None,
        };
        let size = match self.op & 0x18 {
            0x00 => 4,
            0x08 => 2,
            0x10 => 1,
            _ => 8,
        };
        Some((base, size))
    }

    /// A call to a BPF function (not a helper).
    fn is_bpf_call(&self) -> bool {
        self.op == 0x85 && self.src == 1
    }
}

/// The stack accesses not aligned to their size: (instruction index, size, offset from r10).
/// The programs are built allowing misaligned access, so LLVM may write a small value at an odd
/// stack offset with one wide store; the verifier rejects every such access, even on paths no
/// test takes.
pub fn misaligned(insns: &[Insn]) -> Vec<(usize, i64, i64)> {
    let at_fp = |(i, x): (usize, &Insn)| match x.memory_base() {
        Some((FP, size)) if x.off % size != 0 => Some((i, size, x.off)),
        _ => None,
    };
    insns.iter().enumerate().filter_map(at_fp).collect()
}

/// A function's frame: the deepest stack offset its instructions touch, directly or through a
/// register derived from r10 (an over-estimate at worst: straight-line, ignoring control
/// flow), and the instruction indexes of its calls to BPF functions.
pub fn frame(insns: &[Insn]) -> (u64, Vec<usize>) {
    let mut depth = 0u64;
    // Registers holding r10 plus an offset.
    let mut derived: [Option<i64>; 11] = [None; 11];
    let mut calls = Vec::new();
    let mut touch = |at: i64| {
        if at < 0 {
            depth = depth.max(at.unsigned_abs());
        }
    };
    for (i, x) in insns.iter().enumerate() {
        if let Some((base, _)) = x.memory_base() {
            match base {
                FP => touch(x.off),
                b => {
                    if let Some(Some(d)) = derived.get(b) {
                        touch(d + x.off);
                    }
                }
            }
            // A load writes its destination register.
            if x.op & 0x07 == 0x01 && x.dst < 11 {
                derived[x.dst] = None;
            }
            continue;
        }
        match x.op {
            // 64-bit mov from r10, and adds of an immediate to a derived register.
            0xbf if x.src == FP && x.dst < 11 => derived[x.dst] = Some(0),
            0x07 if x.dst < 11 => {
                if let Some(d) = derived[x.dst] {
                    derived[x.dst] = Some(d + x.imm);
                    touch(d + x.imm);
                }
            }
            _ if x.is_bpf_call() => calls.push(i),
            // Any other ALU write to a register ends what it held.
            op if matches!(op & 0x07, 0x04 | 0x07) && x.dst < 11 => derived[x.dst] = None,
            _ => {}
        }
    }
    (depth, calls)
}

/// A function of the object: its frame depth, whom it calls, whether it is a program (an entry
/// point in a section of its own) or a BPF function (in `.text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Func {
    pub depth: u64,
    pub calls: Vec<String>,
    pub program: bool,
}

/// The deepest call chain from `f` as 6.1's verifier adds it up (each frame rounded up to 32
/// bytes), and the chain, each function with its rounded frame. BPF forbids recursion; a
/// cycle is cut.
pub fn deepest_chain(f: &str, funcs: &HashMap<String, Func>) -> (u64, Vec<String>) {
    fn go(f: &str, funcs: &HashMap<String, Func>, seen: &mut Vec<String>) -> (u64, Vec<String>) {
        let Some(func) = funcs.get(f) else { return (0, vec![f.to_owned()]) };
        if seen.iter().any(|s| s == f) {
            return (0, vec![]);
        }
        seen.push(f.to_owned());
        let own = func.depth.max(1).div_ceil(32) * 32;
        let (deepest, mut path) =
            func.calls.iter().map(|c| go(c, funcs, seen)).max_by_key(|(d, _)| *d).unwrap_or((0, vec![]));
        seen.pop();
        path.insert(0, format!("{f} ({own})"));
        (own + deepest, path)
    }
    go(f, funcs, &mut Vec::new())
}

/// The programs whose deepest chain is over [`MAX_STACK`], one line each, sorted.
pub fn over_budget(funcs: &HashMap<String, Func>) -> Vec<String> {
    let mut bad: Vec<String> = funcs
        .iter()
        .filter(|(_, f)| f.program)
        .filter_map(|(name, f)| {
            let (total, path) = deepest_chain(name, funcs);
            (total > MAX_STACK || f.depth > MAX_STACK)
                .then(|| format!("{name}: {total} bytes over {}", path.join(" -> ")))
        })
        .collect();
    bad.sort();
    bad
}

/// Runs both checks on the object file at `path`.
pub fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path)?;
    let file = object::File::parse(&*data)?;
    let mut misaligned_at = Vec::new();
    let mut funcs = HashMap::new();
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let insns: Vec<Insn> = section.data()?.as_chunks::<8>().0.iter().map(Insn::decode).collect();
        for sym in file
            .symbols()
            .filter(|s| s.section_index() == Some(section.index()) && s.kind() == SymbolKind::Text && s.size() > 0)
        {
            let (start, end) = (sym.address() as usize / 8, (sym.address() + sym.size()) as usize / 8);
            let body = &insns[start..end.min(insns.len())];
            let name = sym.name()?.to_owned();
            for (i, size, off) in misaligned(body) {
                misaligned_at.push(format!("{name}: instruction {i} accesses {size} bytes at r10{off:+}"));
            }
            let (depth, call_sites) = frame(body);
            let calls = call_sites.iter().map(|&i| callee(&file, &section, &insns, start + i)).collect();
            let program = section.name().unwrap_or(".text") != ".text";
            funcs.insert(name, Func { depth, calls, program });
        }
    }
    if !misaligned_at.is_empty() {
        bail!(
            "misaligned stack accesses, which the verifier rejects (give the values copied there an \
             explicit aligned layout, see hairpin-ebpf/src/parse.rs `Parsed`):\n{}",
            misaligned_at.join("\n")
        );
    }
    let bad = over_budget(&funcs);
    if !bad.is_empty() {
        bail!(
            "call chains over the verifier's {MAX_STACK}-byte stack (frames rounded to 32 as kernel 6.1 \
             counts them; move large values off the stack, see hairpin-ebpf/src/ct.rs `PLAN`):\n{}",
            bad.join("\n")
        );
    }
    Ok(())
}

/// The function the call at instruction `i` of `section` calls: by relocation (to the callee's
/// symbol, or to its section's symbol with the callee's place in the immediate), or relative.
fn callee(file: &object::File, section: &object::Section, insns: &[Insn], i: usize) -> String {
    let func_at = |section: Option<object::SectionIndex>, at: u64| {
        file.symbols()
            .find(|s| s.section_index() == section && s.kind() == SymbolKind::Text && s.address() == at)
            .and_then(|s| s.name().ok().map(str::to_owned))
    };
    let imm = insns[i].imm;
    let reloc = section.relocations().find(|(off, _)| *off == (i * 8) as u64).and_then(|(_, r)| match r.target() {
        RelocationTarget::Symbol(s) => file.symbol_by_index(s).ok(),
        _ => None,
    });
    let target = match reloc {
        Some(r) if r.kind() == SymbolKind::Section => func_at(r.section_index(), ((imm + 1) * 8) as u64),
        Some(r) => r.name().ok().map(str::to_owned),
        None => func_at(Some(section.index()), ((i as i64 + imm + 1) * 8) as u64),
    };
    target.unwrap_or_else(|| format!("? (call at instruction {i})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `op dst, src, off, imm` as the assembler writes them.
    fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        let [o0, o1] = off.to_le_bytes();
        let [i0, i1, i2, i3] = imm.to_le_bytes();
        Insn::decode(&[op, (src << 4) | dst, o0, o1, i0, i1, i2, i3])
    }
    const STX_DW: u8 = 0x7b; // *(u64 *)(dst + off) = src
    const STX_W: u8 = 0x63; // *(u32 *)(dst + off) = src
    const ST_B: u8 = 0x72; // *(u8 *)(dst + off) = imm
    const LDX_DW: u8 = 0x79; // dst = *(u64 *)(src + off)
    const MOV64_X: u8 = 0xbf; // dst = src
    const ADD64_K: u8 = 0x07; // dst += imm
    const MOV64_K: u8 = 0xb7; // dst = imm
    const CALL: u8 = 0x85;

    #[test]
    fn frames_count_direct_and_derived_accesses() {
        let direct = [insn(STX_DW, 10, 1, -8, 0), insn(ST_B, 10, 0, -13, 7)];
        assert_eq!(frame(&direct).0, 13);
        // r2 = r10; r2 += -40; *(u32 *)(r2 + 4) = r1: 36 deep; the add itself reaches 40.
        let derived = [insn(MOV64_X, 2, 10, 0, 0), insn(ADD64_K, 2, 0, 0, -40), insn(STX_W, 2, 1, 4, 0)];
        assert_eq!(frame(&derived).0, 40);
        // Once r2 holds something else, its accesses are not the stack's.
        let reused = [insn(MOV64_X, 2, 10, 0, 0), insn(MOV64_K, 2, 0, 0, 0), insn(STX_DW, 2, 1, -200, 0)];
        assert_eq!(frame(&reused).0, 0);
        let loaded = [insn(MOV64_X, 2, 10, 0, 0), insn(LDX_DW, 2, 1, 0, 0), insn(STX_DW, 2, 1, -200, 0)];
        assert_eq!(frame(&loaded).0, 0, "a load replaces the register");
        // Helper calls (src 0) are not BPF function calls.
        let calls = [insn(CALL, 0, 1, 0, 3), insn(CALL, 0, 0, 0, 1)];
        assert_eq!(frame(&calls).1, [0]);
    }

    #[test]
    fn misaligned_accesses_are_named_by_instruction_size_and_offset() {
        let x = [insn(STX_DW, 10, 1, -8, 0), insn(STX_DW, 10, 1, -12, 0), insn(STX_W, 10, 1, -12, 0)];
        assert_eq!(misaligned(&x), [(1, 8, -12)]);
    }

    #[test]
    fn chains_add_frames_rounded_to_32_along_the_deepest_path() {
        let f = |depth, calls: &[&str], program| Func {
            depth,
            calls: calls.iter().map(|c| c.to_string()).collect(),
            program,
        };
        let mut funcs = HashMap::from([
            ("prog".to_string(), f(100, &["small", "big"], true)),
            ("small".to_string(), f(8, &[], false)),
            ("big".to_string(), f(200, &["leaf"], false)),
            ("leaf".to_string(), f(1, &[], false)),
        ]);
        assert_eq!(
            deepest_chain("prog", &funcs),
            (128 + 224 + 32, vec!["prog (128)".into(), "big (224)".into(), "leaf (32)".into()])
        );
        assert!(over_budget(&funcs).is_empty());
        funcs.get_mut("leaf").unwrap().depth = 160;
        assert!(over_budget(&funcs).is_empty(), "512 bytes exactly fit");
        funcs.get_mut("leaf").unwrap().depth = 161;
        assert_eq!(
            over_budget(&funcs),
            ["prog: 544 bytes over prog (128) -> big (224) -> leaf (192)"].map(String::from)
        );
    }
}
