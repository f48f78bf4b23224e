//! Per-packet cost of the dataplane's XDP program, measured with BPF_PROG_TEST_RUN in a
//! namespace routed like a gateway (so the fast path's FIB lookup finds route and neighbour):
//! the established-flow path (fast and slow), the new-flow path, and a trivial XDP_TX program.
//!
//! Two ways, each with its own bias, both reported: single runs on fresh frames (each figure
//! carries the test run's own ~100 ns), and runs with `repeat` (the syscall's cost spread
//! over 1,000,000 runs) behind `bench_restore`, which puts the headers back and tail-calls
//! the program under test (its own cost, measured alone, is in each figure).

use std::time::Duration;

use anyhow::{Context as _, ensure};
use aya::{
    maps::{Array, DevMapHash, HashMap, PerCpuArray, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use hairpin_common::{
    CFG_F_FAST_PATH, CFG_F_HAIRPIN, Config, Endpoint, ForwardEntry, Ipv4Be, PortBe, ProtoEndpoint,
    consts::{DEFAULT_MAX_FLOWS, IPPROTO_UDP, map_names, prog_names},
};
use hairpin_lab::routed::RoutedGateway;

/// Single runs per figure.
const RUNS: u32 = 60_000;
/// Repeats per figure, in `ROUNDS` test runs.
const REPEATS: u32 = 1_000_000;
const ROUNDS: u32 = 10;
/// Runs of one case before the next case's turn.
const BLOCK: u32 = 1_000;

/// Prints the figures as a markdown section, also appended to `append` if given.
pub fn run(append: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let gw = RoutedGateway::new(&format!("hpbm{}", std::process::id()))?;
    let (lan, wan) = (gw.lan, gw.wan);
    let rows = gw.ns.run(move || measure(lan, wan))??;
    let mut s = String::from("\n## Per packet (`cargo xtask bench micro`)\n\n");
    let _ = writeln!(
        s,
        "| path | ns per packet, single runs (mean of {RUNS}) | ns per packet, repeated ({REPEATS} repeats) |\n\
         |---|---:|---:|"
    );
    let ns = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
    for r in &rows {
        let _ = writeln!(s, "| {} | {} | {} |", r.what, ns(r.single), ns(r.repeated));
    }
    let find = |what: &str| rows.iter().find(|r| r.what == what);
    if let (Some(est), Some(tx)) = (find(ESTABLISHED_CACHED), find(TRIVIAL)) {
        let ratio =
            |e: Option<f64>, t: Option<f64>| e.zip(t).map_or("n/a".to_owned(), |(e, t)| format!("{:.2}", e / t));
        let _ = writeln!(s, "\nestablished fast path / trivial XDP_TX, single runs: {}", ratio(est.single, tx.single));
        let _ = writeln!(s, "established fast path / trivial XDP_TX, repeated: {}", ratio(est.repeated, tx.repeated));
    }
    let _ = writeln!(
        s,
        "\nSingle runs: each on a fresh frame, with about 100 ns of the test run's own timing in \
         each figure. Repeated: `bench_restore` puts the headers back and tail-calls the program \
         (a NAT rewrites its frame, and `repeat` reruns it on what it left); its own cost, in \
         every repeated figure, is the harness row (here about the trivial program's: this machine \
         mitigates Spectre v2 with retpolines and SRSO with safe RET, which make the tail call's \
         indirect jump and every return dear). A new flow needs a new tuple per run: single \
         runs only."
    );
    print!("{s}");
    if let Some(path) = append {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(s.as_bytes()))
            .with_context(|| format!("appending to {}", path.display()))?;
    }
    Ok(())
}

/// The rows the ratios are taken of.
const ESTABLISHED_CACHED: &str = "established, fast path, from the flow cache (XDP_REDIRECT)";
const TRIVIAL: &str = "trivial XDP_TX program (reference)";
const HARNESS: &str = "the repeat harness alone (restore, failed tail call)";

/// A row of figures, in ns per packet.
struct Row {
    what: &'static str,
    single: Option<f64>,
    repeated: Option<f64>,
}

const XDP_BOTH: u16 = hairpin_common::placement::Placement {
    ingress: hairpin_common::placement::Ingress::Xdp,
    why: hairpin_common::placement::Why::Forced,
    xdp_target: true,
    peer_target: false,
}
.encode();

fn measure(lan: u32, wan: u32) -> anyhow::Result<Vec<Row>> {
    // The flow cache is per CPU: every run on one CPU, as a flow's packets are on a NIC queue.
    hairpin_lab::pin_thread_to_cpu(0)?;
    let ip = Ipv4Be::from_octets;
    let cfg = |flags| Config {
        flags,
        ifindex: [lan, wan],
        // Native XDP on both, sending into both: what the benchmark measures.
        placement: [XDP_BOTH; 2],
        // The frames' destination (see below): the check runs as on a gateway.
        mac: [[0x02, 0, 0, 0, 0x02, 0x01]; 2],
        ..Config::new(ip([192, 168, 0, 1]), ip([192, 168, 0, 0]), ip([255, 255, 255, 0]), ip([203, 0, 113, 1]))
    };
    let set_cfg = |ebpf: &mut aya::Ebpf, flags| -> anyhow::Result<()> {
        Array::try_from(ebpf.map_mut(map_names::CONFIG).context("config")?)?.set(0, &cfg(flags), 0)?;
        Ok(())
    };
    // The dataplane, set up as `up` would, with a port-forward of UDP 203.0.113.1:9.
    let prepare = |flow_cache: bool| -> anyhow::Result<aya::Ebpf> {
        let mut ebpf = hairpin_ctl::dataplane::load(DEFAULT_MAX_FLOWS, flow_cache)?;
        set_cfg(&mut ebpf, CFG_F_HAIRPIN | CFG_F_FAST_PATH)?;
        let mut devices = DevMapHash::try_from(ebpf.map_mut(map_names::DEVICES).context("devices")?)?;
        devices.insert(lan, lan, None, 0)?;
        devices.insert(wan, wan, None, 0)?;
        let public = Endpoint::new(Ipv4Be::from_octets([203, 0, 113, 1]), PortBe::from_host(9));
        let server = Endpoint::new(Ipv4Be::from_octets([192, 168, 0, 2]), PortBe::from_host(9));
        HashMap::<_, ProtoEndpoint, ForwardEntry>::try_from(ebpf.map_mut(map_names::FORWARDS).context("forwards")?)?
            .insert(
                &ProtoEndpoint::new(IPPROTO_UDP, public),
                &ForwardEntry { target: server, ..Default::default() },
                0,
            )?;
        Ok(ebpf)
    };

    let run = |ebpf: &mut aya::Ebpf,
               prog: &str,
               frame: &[u8],
               ifindex: u32,
               repeat: u32|
     -> anyhow::Result<(u32, Duration)> {
        let md: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0].iter().flat_map(|w| w.to_ne_bytes()).collect();
        let p: &mut Xdp = ebpf.program_mut(prog).context("program")?.try_into()?;
        let r = p.test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(&md), repeat, ..Default::default() })?;
        Ok((r.return_value, r.duration))
    };
    // A test run repeats on the same buffer, so a program that rewrites the packet would see
    // its own output from the second repeat on: every figure is the mean over single runs,
    // each on a fresh copy of the frame, the reference program included. The cases take
    // turns in blocks of `BLOCK` runs (warm, as a program is when packets come back to back),
    // so that a noisier second on this shared machine weighs on all alike.
    let (dmac, smac) = ([0x02, 0, 0, 0, 0x02, 0x01], [0x02, 0, 0, 0, 0x02, 0xfe]);
    let frame = |sport| crate::frame::udp(dmac, smac, [198, 51, 100, 7].into(), sport, [203, 0, 113, 1].into(), 9);
    let misses = |ebpf: &aya::Ebpf| -> anyhow::Result<u64> {
        let m = PerCpuArray::<_, u64>::try_from(ebpf.map(map_names::COUNTERS).context("counters")?)?;
        Ok(m.get(&(hairpin_common::Counter::CacheMiss as u32), 0)?.iter().sum())
    };
    // One dataplane per configuration, each with the established flow created: flow cache,
    // none, slow path.
    // The fourth object: the helper programs (the trivial reference and the repeat harness).
    let mut dps = [prepare(true)?, prepare(false)?, prepare(true)?, aya::Ebpf::load(hairpin_lab::HELPERS_OBJECT)?];
    const HELPERS: usize = 3;
    set_cfg(&mut dps[2], CFG_F_HAIRPIN)?;
    for ebpf in &mut dps[..HELPERS] {
        let (rv, _) = run(ebpf, prog_names::XDP_WAN, &frame(65000), wan, 1)?;
        ensure!(rv == 2, "the first packet of a flow passes to the kernel (verdict {rv})");
        hairpin_lab::confirm_all(ebpf)?;
    }
    let p: &mut Xdp = dps[HELPERS].program_mut("bench_tx").context("bench_tx")?.try_into()?;
    p.load()?;
    /// A row: the object (index in `dps`) and program run, whether each run is a new
    /// flow's first packet (which cannot be repeated: a new flow needs a new tuple), and the
    /// verdict every run must return.
    struct Case {
        row: &'static str,
        dp: usize,
        prog: &'static str,
        new_flow: bool,
        want: u32,
    }
    let case = |row, dp, prog, new_flow, want| Case { row, dp, prog, new_flow, want };
    let cases = [
        case(ESTABLISHED_CACHED, 0, prog_names::XDP_WAN, false, 4),
        case("established, fast path, without flow cache (conntrack, XDP_REDIRECT)", 1, prog_names::XDP_WAN, false, 4),
        case("established, slow path (XDP_PASS, destination rewritten)", 2, prog_names::XDP_WAN, false, 2),
        case("new flow (port-forward)", 0, prog_names::XDP_WAN, true, 2),
        case(TRIVIAL, HELPERS, "bench_tx", false, 3),
    ];
    let n = cases.len();
    let started = std::time::Instant::now();
    let mut total = vec![Duration::ZERO; n];
    for block in 0..RUNS / BLOCK {
        for (c, t) in cases.iter().zip(&mut total) {
            for i in block * BLOCK..(block + 1) * BLOCK {
                let f = if c.new_flow { frame(1024 + i as u16) } else { frame(65000) };
                let (rv, d) = run(&mut dps[c.dp], c.prog, &f, wan, 1)?;
                ensure!(rv == c.want, "{}: verdict {rv}, expected {}", c.row, c.want);
                *t += d;
            }
        }
    }

    // Repeated: `bench_restore` in front of the program under test, each case but the new
    // flow in turn for `ROUNDS` rounds; then the harness alone, the slot empty (the last
    // figure).
    let established = frame(65000);
    let headers: [u8; 42] = established[..42].try_into().expect("a 42-byte header");
    Array::try_from(dps[HELPERS].map_mut("BENCH_RESTORE").context("BENCH_RESTORE")?)?.set(0, &headers, 0)?;
    <&mut Xdp>::try_from(dps[HELPERS].program_mut("bench_restore").context("bench_restore")?)?.load()?;
    let repeated: Vec<(usize, Option<&str>, u32)> = cases
        .iter()
        .map(|c| (!c.new_flow).then_some((c.dp, Some(c.prog), c.want)))
        .chain([Some((0, None, 0))])
        .flatten()
        .collect();
    let mut rep_total = vec![Duration::ZERO; repeated.len()];
    for _ in 0..ROUNDS {
        for (&(dp, prog, want), t) in repeated.iter().zip(&mut rep_total) {
            // The harness tail-calls the program under test, in whichever object it is.
            let next = match prog {
                Some(p) => Some(dps[dp].program(p).context("program")?.fd()?.try_clone()?),
                None => None,
            };
            let helpers = &mut dps[HELPERS];
            let mut slot = ProgramArray::try_from(helpers.map_mut("BENCH_NEXT").context("BENCH_NEXT")?)?;
            match &next {
                Some(fd) => slot.set(0, fd, 0)?,
                None => slot.clear_index(&0)?,
            }
            let (rv, d) = run(helpers, "bench_restore", &established, wan, REPEATS / ROUNDS)?;
            ensure!(rv == want, "repeated {prog:?}: verdict {rv}, expected {want}");
            *t += d;
        }
    }

    // The cached dataplane's misses: the first fast-path packet, which conntrack forwarded,
    // and one per `fresh_ns` after it.
    let missed = misses(&dps[0])?;
    let allowed = 2 + started.elapsed().as_nanos() as u64 / hairpin_common::flow_cache::MAX_FRESH_NS;
    ensure!(missed <= allowed, "the flow cache missed {missed} times (at most {allowed} expected) on one CPU");
    let all = u64::from(RUNS + REPEATS);
    ensure!(misses(&dps[1])? == all, "without a flow cache, conntrack forwards every packet");
    // A test run reports the mean per repeat: the rounds' mean. The repeated figures are in
    // the cases' order, the new flow left out, then the harness's.
    let mut rep = rep_total.into_iter().map(|t| t.as_nanos() as f64 / f64::from(ROUNDS));
    let mut rows: Vec<Row> = cases
        .iter()
        .zip(total)
        .map(|(c, t)| Row {
            what: c.row,
            single: Some(t.as_nanos() as f64 / f64::from(RUNS)),
            repeated: if c.new_flow { None } else { rep.next() },
        })
        .collect();
    rows.push(Row { what: HARNESS, single: None, repeated: rep.next() });
    Ok(rows)
}
