/// Rebuild when bpf-linker changes: the crate links with it but cargo cannot know that.
///
/// The programs are built allowing misaligned memory access. Header fields sit at 2-byte
/// boundaries (after the 14-byte Ethernet header) and network-types declares them as byte
/// arrays, so without it LLVM reads and writes every address, port and checksum byte by byte;
/// with it, one load or store each (the fast path got about 9% cheaper). The kernel accepts
/// misaligned packet and map accesses on architectures with efficient unaligned access
/// (x86-64, arm64, ...). Elsewhere the verifier rejects them: set
/// `HAIRPIN_STRICT_ALIGNMENT=1` when building for such a kernel. Stack accesses must be aligned
/// everywhere; the types that would otherwise be copied misaligned say so.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo::rerun-if-changed={}", linker.display());
    }
    println!("cargo::rerun-if-env-changed=HAIRPIN_STRICT_ALIGNMENT");
    if std::env::var_os("HAIRPIN_STRICT_ALIGNMENT").is_none_or(|v| v.is_empty() || v == "0") {
        println!("cargo::rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    }
}
