//! A network namespace owned by the lab: created on `new`, deleted on drop.

use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Output},
    thread,
};

use anyhow::{Context as _, bail};
use nix::sched::{CloneFlags, setns};

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", name])).with_context(|| format!("creating netns {name}"))?;
        let ns = Self { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a program inside the namespace. `nsenter --net` rather than `ip netns exec`, which
    /// remounts /sys and would hide the bpffs pins.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        c
    }

    /// Runs `program args` in the namespace and returns its stdout, or an error with stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(self.command(program).args(args))
    }

    /// A counter of this namespace's `/proc/net/snmp` (`Tcp`, `InCsumErrors` style names).
    pub fn snmp(&self, group: &str, field: &str) -> anyhow::Result<u64> {
        let (group, field) = (format!("{group}:"), field.to_owned());
        self.run(move || -> anyhow::Result<u64> {
            // thread-self: the calling thread's namespace (self is the process's).
            let text = std::fs::read_to_string("/proc/thread-self/net/snmp").context("reading snmp")?;
            let mut rows = text.lines().filter(|l| l.starts_with(&group));
            let (names, values) = (rows.next().context("no header")?, rows.next().context("no values")?);
            let i = names.split_whitespace().position(|n| n == field).with_context(|| format!("no {group} {field}"))?;
            Ok(values.split_whitespace().nth(i).context("short row")?.parse()?)
        })?
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward` style name).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value).with_context(|| format!("writing {path}")))?
    }

    /// The index of interface `dev` here (`/sys/class/net` would show the caller's namespace).
    pub fn ifindex(&self, dev: &str) -> anyhow::Result<u32> {
        let line = self.ip(&["-o", "link", "show", dev])?;
        line.split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .with_context(|| format!("ifindex of {dev} in {}", self.name))
    }

    /// Runs `f` on a scoped thread that has entered the namespace, so `f` may borrow: for
    /// calls that resolve interfaces or open sockets in the calling thread's namespace
    /// (netlink attaches, device map updates, test runs).
    pub fn scoped<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))?;
        thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {}", self.name))?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
        })
    }

    /// Runs `f` on a thread that has entered the namespace: its sockets live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        self.spawn(f)?.join().map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))
    }

    /// As [`run`](Self::run), without waiting.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<thread::JoinHandle<T>> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path().display()))?;
        let name = self.name.clone();
        Ok(thread::Builder::new().name(format!("ns-{name}")).spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns into {name}: {e}"));
            f()
        })?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its interfaces (and their veth peers elsewhere).
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Runs a command to completion; its stdout, or an error that quotes it and its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out: Output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A MAC address as `ip` writes it.
pub fn mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
