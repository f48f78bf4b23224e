//! Idempotent machine setup. Each step checks first and does nothing when already satisfied,
//! so build/lab/test call it every time.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::util::{self, ok, output, root, run as sh};

/// Commands (or absolute paths of files) the lab, tests and benchmarks use, and the Debian
/// packages that provide them.
const APT: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
    ("nft", "nftables"),
    ("iptables-save", "iptables"),
    // The bulk TCP benchmark.
    ("iperf3", "iperf3"),
    // The VM tests: the guest, its initramfs, the kernel modules as Debian packs them.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/share/doc/busybox-static", "busybox-static"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    // The fragmented-ping lab test.
    ("ping", "iputils-ping"),
    // The service unit's check (`systemd-analyze verify` and `security`) and its capabilities.
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
    // The benchmark pins the gateway's NAPI kthread: found with ps, pinned with taskset.
    ("ps", "procps"),
    ("taskset", "util-linux"),
    // The benchmark's chart labels.
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "fonts-dejavu-core"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    apt()?;
    bpffs()?;
    tracefs()?;
    let nightly = nightly()?;
    bpf_linker(&nightly)?;
    Ok(())
}

/// The nightly named in hairpin-ebpf/rust-toolchain.toml (the one place it is pinned).
pub fn nightly_name() -> anyhow::Result<String> {
    let path = root().join("hairpin-ebpf/rust-toolchain.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .map(|v| v.trim_start_matches([' ', '=']).trim().trim_matches('"').to_owned())
        .with_context(|| format!("no channel in {}", path.display()))
}

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return std::path::Path::new(cmd).exists();
    }
    ok(Command::new("sh").args(["-c", &format!("command -v {cmd}")]))
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing packages {missing:?}: install them (apt-get install {}) or run setup as root",
            missing.join(" ")
        );
    }
    sh(Command::new("apt-get").arg("update").arg("-q"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Pins need a bpf filesystem at /sys/fs/bpf; fresh VMs may not mount one.
fn bpffs() -> anyhow::Result<()> {
    let fs_type = output(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"])).unwrap_or_default();
    if fs_type.trim() == "bpf_fs" || !util::is_root() {
        return Ok(());
    }
    sh(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// `up` counts the XDP frames the kernel refuses through tracepoints, which need tracefs at
/// /sys/kernel/tracing (systemd mounts it; a bare VM may not).
fn tracefs() -> anyhow::Result<()> {
    let fs_type = output(Command::new("stat").args(["-f", "-c", "%T", "/sys/kernel/tracing"])).unwrap_or_default();
    if fs_type.trim() == "tracefs" || !util::is_root() {
        return Ok(());
    }
    sh(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

fn sysroot(nightly: &str) -> Option<PathBuf> {
    output(Command::new("rustup").args(["run", nightly, "rustc", "--print", "sysroot"]))
        .map(|s| PathBuf::from(s.trim()))
}

fn nightly() -> anyhow::Result<String> {
    let nightly = nightly_name()?;
    let has_src = |s: &PathBuf| s.join("lib/rustlib/src/rust/library/core").is_dir();
    if !sysroot(&nightly).is_some_and(|s| has_src(&s)) {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            &nightly,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    Ok(nightly)
}

/// bpf-linker has no prebuilt download here: build it against the nightly's own libLLVM, via
/// an LLVM_PREFIX directory that holds only that library. The binary keeps that directory as
/// its runpath, so it lives in a stable cache, not in the work tree.
fn bpf_linker(nightly: &str) -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let sysroot = sysroot(nightly).with_context(|| format!("toolchain {nightly} is not installed"))?;
    let lib = fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .with_context(|| format!("no libLLVM.so.* in {}/lib", sysroot.display()))?;
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    let prefix = home.join(".cache/hairpin").join(format!("llvm-{nightly}"));
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so".into(), lib.file_name().context("file name")?.to_owned()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    sh(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["install", "--force", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .env("LLVM_PREFIX", &prefix))?;
    if !have("bpf-linker") {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}
