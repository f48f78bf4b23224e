//! The flow sweep over a million conntrack entries: the controller reads the table with one
//! map iteration and removes what expired, entry by entry, so the dataplane is never locked
//! out for longer than one hash bucket. This measures the sweep's wall time and the
//! established-flow cost of the XDP program while it runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::{
    maps::{HashMap, MapData},
    programs::{TestRun, TestRunOptions, Xdp},
};
use hairpin_common::{
    CT_F_MASQ, CT_F_REPLY, CT_S_SEEN, Config, CtEntry, EgressEntry, Endpoint, FlowKey, Ipv4Be, PortBe, Timeouts,
    consts::{IPPROTO_UDP, map_names, prog_names},
    nat::plan_flow,
};
use hairpin_ctl::{conntrack, dataplane, sweep as ctl_sweep};

const PUBLIC: [u8; 4] = [203, 0, 113, 1];

pub fn run(entries: u32) -> anyhow::Result<()> {
    ensure!(nix_is_root(), "the sweep benchmark loads BPF programs: run it as root");
    let flows = entries / 2;
    let mut ebpf = dataplane::load(flows + 1024, true)?;
    let mut tables = Tables::of_object(&ebpf)?;
    let mut maps = dataplane::Maps::take(&mut ebpf)?;
    let timeouts = Timeouts { udp: 300, ..Default::default() };
    maps.update_config(|c| *c = config(timeouts))?;

    let now = conntrack::boot_ns();
    println!("# flow sweep, {entries} conntrack entries ({flows} UDP flows)\n");
    println!("| sweep | entries | expired flows | time | per entry | dataplane ns/pkt meanwhile |");
    println!("|---|---:|---:|---:|---:|---:|");
    fill(&mut tables, 1, 0, now)?;
    let idle = established_ns(&mut ebpf)?;
    tables.clear()?;
    let mut rows = Vec::new();
    // Flow 0 stays live in every round: the probe packet belongs to it.
    for (what, expired) in [("nothing expired", 0), ("all but one expired", flows - 1)] {
        let filled = Instant::now();
        fill(&mut tables, flows, expired, now)?;
        let fill_time = filled.elapsed();
        let stop = Arc::new(AtomicBool::new(false));
        let during = {
            let stop = stop.clone();
            let prog: &mut Xdp = ebpf.program_mut(prog_names::XDP_WAN).context("xdp_wan")?.try_into()?;
            std::thread::scope(|s| -> anyhow::Result<(ctl_sweep::Sweep, f64)> {
                let probe = s.spawn(|| established_ns_prog(prog, &|| stop.load(Ordering::Relaxed)));
                let swept = ctl_sweep::sweep(&mut maps, conntrack::boot_ns());
                stop.store(true, Ordering::Relaxed);
                let ns = probe.join().map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
                Ok((swept?, ns))
            })?
        };
        let (s, ns) = during;
        ensure!(s.flows == flows as usize, "swept {} flows, filled {flows}", s.flows);
        ensure!(s.expired == expired as usize, "expired {} flows, expected {expired}", s.expired);
        let per = s.elapsed.as_nanos() as f64 / f64::from(entries);
        rows.push(format!(
            "| {what} | {entries} | {} | {:.2} s | {per:.0} ns | {ns:.0} |",
            s.expired,
            s.elapsed.as_secs_f64()
        ));
        eprintln!("filled {entries} entries in {fill_time:.2?}; swept in {:.2?}", s.elapsed);
        tables.clear()?;
    }
    for r in &rows {
        println!("{r}");
    }
    println!("\nidle dataplane: {idle:.0} ns per established-flow packet (xdp_wan, BPF_PROG_TEST_RUN)");
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn config(timeouts: Timeouts) -> Config {
    let ip = Ipv4Be::from_octets;
    Config { timeouts, ..Config::new(ip([192, 168, 0, 1]), ip([10, 0, 0, 0]), ip([255, 0, 0, 0]), ip(PUBLIC)) }
}

/// The `i`-th masqueraded UDP flow: LAN host 10.x.y.z:5000 to its own internet host
/// (100.64.0.0 + i) port 53, as public port 1024 + i mod 60,000: every tuple distinct.
fn flow(i: u32) -> (FlowKey, Endpoint) {
    let lan = Ipv4Be((0x0a00_0000 | i).to_be());
    let remote = Ipv4Be((0x6440_0000 + i).to_be());
    let key = FlowKey::new(
        IPPROTO_UDP,
        Endpoint::new(lan, PortBe::from_host(5000)),
        Endpoint::new(remote, PortBe::from_host(53)),
    );
    (key, Endpoint::new(Ipv4Be::from_octets(PUBLIC), PortBe::from_host(1024 + (i % 60_000) as u16)))
}

/// The conntrack and egress tables, filled as the dataplane would fill them (raw handles: the
/// controller's `Maps` only reads and removes flows).
pub struct Tables {
    ct: HashMap<MapData, FlowKey, CtEntry>,
    egress: HashMap<MapData, FlowKey, EgressEntry>,
}

impl Tables {
    /// Of a loaded object, beside the controller's maps taken out of it.
    pub fn of_object(ebpf: &aya::Ebpf) -> anyhow::Result<Self> {
        let raw = |name| hairpin_lab::raw::of_object(ebpf, name);
        Ok(Self { ct: raw(map_names::CONNTRACK)?.try_into()?, egress: raw(map_names::EGRESS)?.try_into()? })
    }

    /// Of the dataplane pinned at `pins`.
    pub fn pinned(pins: &dataplane::PinDir) -> anyhow::Result<Self> {
        let raw = |name| hairpin_lab::raw::pinned(pins, name);
        Ok(Self { ct: raw(map_names::CONNTRACK)?.try_into()?, egress: raw(map_names::EGRESS)?.try_into()? })
    }

    fn clear(&mut self) -> anyhow::Result<()> {
        let keys: Vec<FlowKey> = self.ct.keys().collect::<Result<_, _>>()?;
        for k in keys {
            let _ = self.ct.remove(&k);
        }
        let keys: Vec<FlowKey> = self.egress.keys().collect::<Result<_, _>>()?;
        for k in keys {
            let _ = self.egress.remove(&k);
        }
        Ok(())
    }
}

/// Fills the table with `flows` flows, the last `expired` of them idle for longer than the
/// UDP timeout, as the dataplane would have created them (both directions, egress rewrites).
pub fn fill(t: &mut Tables, flows: u32, expired: u32, now: u64) -> anyhow::Result<()> {
    for i in 0..flows {
        let (key, public) = flow(i);
        let seen = if i >= flows - expired { now - 400_000_000_000 } else { now };
        let mut plan = plan_flow(&key, key.dst_ep(), Some(public), CT_F_MASQ, seen);
        plan.orig.flags |= CT_S_SEEN;
        plan.reply.flags |= CT_S_SEEN | CT_F_REPLY;
        t.ct.insert(&plan.orig_key, &plan.orig, 0)?;
        t.ct.insert(&plan.reply_key, &plan.reply, 0)?;
        for (k, e) in [(plan.orig_key, plan.orig), (plan.reply_key, plan.reply)] {
            let (egress_key, value) = hairpin_common::nat::egress(&k, &e);
            t.egress.insert(&egress_key, &value, 0)?;
        }
    }
    Ok(())
}

/// The idle figure: 100,000 runs with nothing else running.
fn established_ns(ebpf: &mut aya::Ebpf) -> anyhow::Result<f64> {
    let prog: &mut Xdp = ebpf.program_mut(prog_names::XDP_WAN).context("xdp_wan")?.try_into()?;
    let runs = std::sync::atomic::AtomicU32::new(0);
    established_ns_prog(prog, &|| runs.fetch_add(1000, Ordering::Relaxed) >= 100_000)
}

/// Mean ns per packet of the reply of a live flow through xdp_wan, until `done` (asked every
/// 1,000 runs). Each run is a single one on a fresh copy of the frame: with `repeat`, the
/// program would see its own rewritten output from the second run on. Checks first that the
/// packet is translated, so the figure is the established-flow path.
fn established_ns_prog(prog: &mut Xdp, done: &(dyn Fn() -> bool + Sync)) -> anyhow::Result<f64> {
    let frame = reply_frame();
    let mut out = vec![0u8; frame.len() + 64];
    let once = TestRunOptions { data_in: Some(&frame), data_out: Some(&mut out), ..Default::default() };
    prog.test_run(once)?;
    let client = flow(0).0.src.octets();
    ensure!(out[30..34] == client, "the probe packet was not translated to {client:?}: {:?}", &out[30..34]);
    let (mut total, mut runs) = (Duration::ZERO, 0u32);
    loop {
        for _ in 0..1000 {
            total += prog.test_run(TestRunOptions { data_in: Some(&frame), ..Default::default() })?.duration;
        }
        runs += 1000;
        if done() {
            break;
        }
    }
    Ok(total.as_nanos() as f64 / f64::from(runs))
}

/// A UDP reply to flow 0, which every round keeps: a 64-byte frame.
fn reply_frame() -> Vec<u8> {
    let (key, public) = flow(0);
    let mut f = vec![0x02, 0, 0, 0, 0, 0xbb, 0x02, 0, 0, 0, 0, 0xaa, 0x08, 0x00];
    let payload = [0u8; 18];
    let tot = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0, (tot >> 8) as u8, tot as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&key.dst.octets());
    f.extend_from_slice(&PUBLIC);
    f.extend_from_slice(&key.dport.host().to_be_bytes());
    f.extend_from_slice(&public.port.host().to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}
