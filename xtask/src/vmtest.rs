//! `cargo xtask vmtest --kernel 6.1|6.12|PACKAGE`: the packet tests and the plain-topology lab
//! on the kernels gateways run, each booted in qemu (TCG: KVM is not usable on these nested
//! hosts) from Debian's own package, with this machine's root filesystem shared read-only over
//! 9p and the tests run inside as root. The way aya tests its kernels.
//!
//! The guest is a busybox initramfs that loads the modules the tests need (the guest loads
//! none by itself), mounts the host's `/` over 9p, gives it a writable `/run` (with `TMPDIR` in
//! it: the host's `/tmp` stays visible, a checkout may live there), bpffs and tracefs, and runs
//! one command in it; the command's exit status comes back on the console.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::{self, output, root, run as sh};

/// Modules the guest loads (with what each depends on): virtio and 9p for the host's
/// filesystem, then what the tests use (veth and bridge for the lab, virtio-net for its NICs,
/// clsact and cls_bpf for TC without TCX, u32 for the lab test that adds another program's
/// filter beside them, nftables for the gateway's own filter).
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "veth",
    "bridge",
    "virtio_net",
    "sch_ingress",
    "cls_bpf",
    "cls_u32",
    // libcrc32c (which nf_tables needs) asks the crypto API for crc32c when it loads.
    "crc32c_generic",
    "nf_tables",
];

/// Lab tests both guests run: the plain topology with default flags, and the gateway on the
/// guest's virtio-net NICs (see [`NICS`]; the test is ignored elsewhere). (Bulk transfers and
/// benchmarks are too slow under emulation; the netfilter reference runs and the dataplane's
/// log are tested on the host.)
const LAB_TESTS: &[&str] =
    &["port_forward_and_hairpin_over_tcp_and_udp", "the_gateway_on_virtio_nics_takes_the_xdp_fast_path"];

/// Lab tests one guest runs, to keep `cargo xtask test` within its time (each `up` verifies
/// the whole object, which takes seconds under emulation): on 6.1, which has no TCX, the
/// programs as netlink filters, the controller's run, ICMP, the gateway's own nftables filter
/// beside hairpin and a PPPoE WAN's MTU; on 6.12 the slow path, VLANs and fragments (last
/// first too: held at its TC ingress).
/// The controller's own logic (files, rtnetlink) is the same on every kernel and tested on the
/// host; each guest runs `up` against interfaces in use, as its own TC attachment has them.
fn lab_tests_of(release: &str) -> &'static [&'static str] {
    if is_6_1(release) {
        &[
            "tc_programs_as_netlink_filters_and_down_removes_only_them",
            "icmp_errors_and_endpoint_independent_bindings",
            "run_expires_idle_flows_and_leaves_the_dataplane_running",
            "the_gateways_filter_keeps_barred_hosts_out_beside_hairpin",
            "a_pppoe_wan_carries_what_does_not_fit_through_hairpin",
        ]
    } else {
        &[
            "port_forward_and_hairpin_on_the_slow_path",
            "vlan_tagged_frames_from_the_wan_do_not_reach_the_lan",
            "fragmented_datagrams_arrive_whole_through_hairpin",
        ]
    }
}

/// Operator tests both guests run: `up` refusing interfaces that already run programs (TCX
/// links on 6.12, netlink filters on 6.1).
const OPERATOR_TESTS: &[&str] = &["up_refuses_interfaces_that_already_run_programs"];

fn is_6_1(release: &str) -> bool {
    release.starts_with("6.1.") || release == "6.1"
}

/// The packet tests each guest runs: the first case's load verifies the whole object (every
/// program), so each kernel's verifier sees all of them either way; the cases' runtime,
/// ingress as XDP on the one and as TC on the other, splits between the two kernels to keep
/// `cargo xtask test` within its time (emulation makes each load take seconds).
fn packet_filter(release: &str) -> &'static str {
    if is_6_1(release) { "xdp::" } else { "tc::" }
}

/// The guest's NICs (virtio-net), by MAC, cabled in pairs by qemu over UDP on 127.0.0.1: the
/// gateway's LAN NIC to the LAN switch's, the gateway's WAN NIC to the internet host's. The lab
/// (`Peers::Nics`) finds them by the addresses `HAIRPIN_LAB_NICS` lists, in this order.
const NICS: [&str; 4] = ["52:54:00:68:70:01", "52:54:00:68:70:02", "52:54:00:68:70:03", "52:54:00:68:70:04"];

/// How long a guest may take, boot to power-off.
const TIMEOUT: Duration = Duration::from_secs(1800);

pub fn run(kernels: &[String], custom: Option<&str>) -> anyhow::Result<()> {
    let failed: Vec<String> =
        run_each(kernels, custom)?.into_iter().filter_map(|(k, r)| r.err().map(|e| format!("{k}: {e:#}"))).collect();
    if !failed.is_empty() {
        bail!("on {} kernel(s): {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// Each kernel's result (named by its package and release); each guest's console is passed
/// through, prefixed with its kernel's release.
pub fn run_each(kernels: &[String], custom: Option<&str>) -> anyhow::Result<Vec<(String, anyhow::Result<()>)>> {
    util::require_root("the VM tests")?;
    let ctl = crate::build::run()?;
    let tests = test_binaries()?;
    let mut guests = Vec::new();
    for k in kernels {
        let pkg = package(k)?;
        let kernel = Kernel::fetch(&pkg).with_context(|| format!("fetching {pkg}"))?;
        let initrd = kernel.initramfs().with_context(|| format!("building the initramfs for {pkg}"))?;
        let lab_tests = [LAB_TESTS, lab_tests_of(&kernel.release)].concat().join(" ");
        let operator = OPERATOR_TESTS.join(" ");
        let lab = format!(
            "{} --test-threads 1 --include-ignored {lab_tests} && {} --test-threads 1 {operator}",
            tests.lab.display(),
            tests.operator.display(),
        );
        let what = match custom {
            Some(c) => c.to_owned(),
            None => format!("{} --test-threads 2 {} && {lab}", tests.packet.display(), packet_filter(&kernel.release)),
        };
        let cmd = format!(
            "cd {} && export HAIRPIN_CTL={} TMPDIR=/run/tmp HAIRPIN_LAB_NICS={} && {what}",
            root().display(),
            ctl.display(),
            NICS.join(","),
        );
        eprintln!(
            "vmtest: {pkg} ({}): packet tests {}*, then lab tests {lab_tests}, then operator tests {operator}",
            kernel.release,
            packet_filter(&kernel.release),
        );
        guests.push((format!("{pkg} ({})", kernel.release), kernel, initrd, cmd));
    }
    // One after the other: each guest keeps both cores busy (two emulated CPUs), so two at
    // once take as long as two in a row.
    let results = guests
        .iter()
        .map(|(name, kernel, initrd, cmd)| {
            let result = match boot(kernel, initrd, cmd) {
                Ok(0) => Ok(()),
                Ok(code) => Err(anyhow::anyhow!("tests exited {code}")),
                Err(e) => Err(e),
            };
            match &result {
                Ok(()) => eprintln!("vmtest: {name}: passed"),
                Err(e) => eprintln!("vmtest: {name}: failed: {e:#}"),
            }
            (name.clone(), result)
        })
        .collect();
    Ok(results)
}

/// The Debian package for a kernel: `6.1` (bookworm's own), `6.12` (its updates), or a package
/// name as is. A meta-package is resolved to the image it depends on.
fn package(k: &str) -> anyhow::Result<String> {
    let meta = match k {
        "6.1" => "linux-image-amd64",
        "6.12" => "linux-image-6.12-amd64",
        other => return Ok(other.to_owned()),
    };
    let deps = output(Command::new("apt-cache").args(["depends", meta]))
        .with_context(|| format!("apt-cache depends {meta} (run `apt-get update`?)"))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-") && !d.contains("dbg"))
        .map(str::to_owned)
        .with_context(|| format!("{meta} depends on no kernel image"))
}

/// The test binaries, built on the host: the guest runs them from the shared filesystem.
struct Tests {
    packet: PathBuf,
    lab: PathBuf,
    operator: PathBuf,
}

fn test_binaries() -> anyhow::Result<Tests> {
    let out = util::cargo()
        .args(["test", "--release", "--no-run", "--message-format=json", "-p", "hairpin-tests"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the test binaries")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed");
    }
    let find = |name: &str| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&format!("\"name\":\"{name}\"")) && l.contains("\"kind\":[\"test\"]"))
            .find_map(|l| {
                let at = l.find("\"executable\":\"")? + "\"executable\":\"".len();
                Some(PathBuf::from(&l[at..at + l[at..].find('"')?]))
            })
            .with_context(|| format!("no {name} test binary"))
    };
    Ok(Tests { packet: find("packet")?, lab: find("lab")?, operator: find("operator")? })
}

/// A kernel image and its modules, extracted from its package under target/vm.
struct Kernel {
    dir: PathBuf,
    release: String,
}

impl Kernel {
    fn fetch(pkg: &str) -> anyhow::Result<Self> {
        let dir = root().join("target/vm").join(pkg);
        let extracted = dir.join("root");
        if !extracted.join("boot").exists() {
            std::fs::create_dir_all(&dir)?;
            sh(Command::new("apt-get").args(["download", pkg]).current_dir(&dir))?;
            let deb = std::fs::read_dir(&dir)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .with_context(|| format!("apt-get download {pkg} left no .deb"))?;
            sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
        }
        let modules = std::fs::read_dir(extracted.join("lib/modules"))?
            .filter_map(Result::ok)
            .next()
            .context("the package has no modules")?;
        Ok(Self { release: modules.file_name().to_string_lossy().into_owned(), dir })
    }

    fn vmlinuz(&self) -> PathBuf {
        self.dir.join("root/boot").join(format!("vmlinuz-{}", self.release))
    }

    /// busybox, the modules (decompressed), and the init script, as a gzipped cpio archive.
    fn initramfs(&self) -> anyhow::Result<PathBuf> {
        let tree = self.dir.join("initrd");
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(tree.join("bin"))?;
        std::fs::create_dir_all(tree.join("modules"))?;
        std::fs::copy("/usr/bin/busybox", tree.join("bin/busybox")).context("busybox-static is not installed")?;
        let mods = self.dir.join("root/lib/modules").join(&self.release);
        // Each wanted module after the ones it depends on (its `.modinfo` says which).
        let mut order = Vec::new();
        for m in MODULES {
            self.add_module(&mods, &tree.join("modules"), m, &mut order)?;
        }
        std::fs::write(tree.join("init"), init_script(&order))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(tree.join("init"), std::fs::Permissions::from_mode(0o755))?;
        let out = self.dir.join("initrd.gz");
        sh(Command::new("sh")
            .arg("-c")
            .arg(format!("find . | cpio -o -H newc --quiet | gzip -1 > {}", out.display()))
            .current_dir(&tree))?;
        Ok(out)
    }
}

impl Kernel {
    /// Puts module `name` (decompressed) into `to` after its dependencies, and appends it to
    /// `order`. Built in, or absent from this kernel: nothing to load.
    fn add_module(&self, dir: &Path, to: &Path, name: &str, order: &mut Vec<String>) -> anyhow::Result<()> {
        let name = name.replace('-', "_");
        if order.contains(&name) {
            return Ok(());
        }
        let Some(found) = find_module(dir, &name)? else { return Ok(()) };
        let dest = to.join(format!("{name}.ko"));
        match found.extension().and_then(|e| e.to_str()) {
            Some("xz") => decompress("xz", &found, &dest)?,
            Some("zst") => decompress("zstd", &found, &dest)?,
            _ => {
                std::fs::copy(&found, &dest)?;
            }
        }
        let bytes = std::fs::read(&dest)?;
        let depends = bytes
            .split(|&b| b == 0)
            .find_map(|f| f.strip_prefix(b"depends="))
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_default();
        for dep in depends.split(',').filter(|d| !d.is_empty()) {
            self.add_module(dir, to, dep, order)?;
        }
        order.push(name);
        Ok(())
    }
}

fn find_module(dir: &Path, name: &str) -> anyhow::Result<Option<PathBuf>> {
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if path.is_dir() {
            if let Some(found) = find_module(&path, name)? {
                return Ok(Some(found));
            }
        } else if let Some(file) = path.file_name().and_then(|f| f.to_str())
            && [".ko", ".ko.xz", ".ko.zst"].iter().any(|ext| file.replace('-', "_") == format!("{name}{ext}"))
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn decompress(tool: &str, from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new(tool).arg("-dc").arg(from).output().with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -d {} failed", from.display());
    }
    Ok(std::fs::write(to, out.stdout)?)
}

/// The guest's init: modules, the host's root over 9p with writable scratch mounts, the
/// command (base64 on the kernel command line), its exit status on the console, power off.
fn init_script(modules: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /host
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in {modules}; do
  $B insmod /modules/$m.ko || echo "VMTEST: module $m not loaded"
done
if ! $B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host; then
  echo "VMTEST-EXIT=254 (9p mount failed)"; $B poweroff -f
fi
for d in proc sys dev; do $B mount --bind /$d /host/$d; done
$B mount -t tmpfs run /host/run
$B mkdir -p /host/run/tmp
$B mount -t bpf bpf /host/sys/fs/bpf
$B mount -t tracefs tracefs /host/sys/kernel/tracing 2>/dev/null
CMD=$($B sed -n 's/.*vmtest.cmd=\([^ ]*\).*/\1/p' /proc/cmdline | $B base64 -d)
echo "VMTEST: kernel $($B uname -r)"
$B chroot /host /bin/sh -c "$CMD"
echo "VMTEST-EXIT=$?"
$B poweroff -f
"#,
        modules = modules.join(" ")
    )
}

/// Boots `kernel` running `cmd`, passing its console through; the command's exit status.
fn boot(kernel: &Kernel, initrd: &Path, cmd: &str) -> anyhow::Result<i32> {
    let encoded = base64(cmd.as_bytes());
    // Two cables, each two UDP sockets sending to each other: ports the host has free, all
    // taken before any is let go so that no two are the same.
    let sockets = NICS
        .iter()
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free UDP ports for the guest's cables")?;
    let ports = sockets.iter().map(|s| s.local_addr().map(|a| a.port())).collect::<Result<Vec<_>, _>>()?;
    drop(sockets);
    let mut nics = Vec::new();
    for (i, mac) in NICS.iter().enumerate() {
        let (local, remote) = (ports[i], ports[i ^ 1]);
        nics.push("-netdev".to_owned());
        nics.push(format!(
            "dgram,id=nic{i},local.type=inet,local.host=127.0.0.1,local.port={local},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={remote}"
        ));
        nics.push("-device".to_owned());
        nics.push(format!("virtio-net-pci,netdev=nic{i},mac={mac}"));
    }
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35,accel=tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(&nics)
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 quiet panic=-1 vmtest.cmd={encoded}"))
        .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let started = Instant::now();
    let pid = child.id();
    // The guest's own timeout: qemu is killed (by its PID) if it outlives it.
    let watchdog = std::thread::spawn(move || {
        while started.elapsed() < TIMEOUT {
            std::thread::sleep(Duration::from_secs(1));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    });
    let mut code = None;
    for line in BufReader::new(child.stdout.take().context("qemu's console")?).lines() {
        let line = line?;
        println!("[{}] {line}", kernel.release);
        if let Some(rest) = line.trim().strip_prefix("VMTEST-EXIT=") {
            code = rest.split_whitespace().next().and_then(|c| c.parse().ok());
        }
    }
    child.wait()?;
    let _ = watchdog.join();
    code.with_context(|| format!("the guest stopped without an exit status (after {:?})", started.elapsed()))
}

/// Standard base64 (the command goes on the kernel command line, which splits at spaces).
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = u32::from(c[0]) << 16 | u32::from(*c.get(1).unwrap_or(&0)) << 8 | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::base64(b"cd /x && echo hi"), "Y2QgL3ggJiYgZWNobyBoaQ==");
        assert_eq!(super::base64(b"ab"), "YWI=");
        assert_eq!(super::base64(b"abc"), "YWJj");
    }
}
