//! Packet tests: crafted frames through the real compiled XDP and TC programs with
//! BPF_PROG_TEST_RUN. Each case is a table of steps run in order against one dataplane, so a
//! flow created by one step is used by the next (Katran-style fixtures), one module per feature.
//! Every case runs twice, ingress as XDP and as TC programs.
//!
//! Every step asserts the verdict, the exact output bytes (built independently, checksums from
//! scratch with etherparse), and that exactly the expected (hook, reason) counter moved.

use hairpin_common::{
    CT_F_REPLY, Config, CtEntry, FlowKey, Reason,
    consts::Hook,
    placement::{Ingress, Placement, Why},
};
use hairpin_lab::routed::{CLIENT_MAC, LAN_MAC, ROUTER_MAC, RoutedGateway, SERVER_MAC, WAN_MAC};
use hairpin_tests::{
    dp::{self, Dataplane, Mode, TC_NEXT, ep},
    frame::{self, L4, Pkt, diff, verify_checksums},
};

/// What a step feeds in and what must come out.
struct Step {
    what: &'static str,
    hook: Hook,
    input: Vec<u8>,
    reason: Reason,
    /// The exact frame expected out; `None` means the input unchanged.
    output: Option<Vec<u8>>,
}

fn step(what: &'static str, hook: Hook, input: &Pkt, reason: Reason, output: Option<&Pkt>) -> Step {
    Step { what, hook, input: input.build(), reason, output: output.map(Pkt::build) }
}

fn raw(what: &'static str, hook: Hook, input: Vec<u8>, reason: Reason) -> Step {
    Step { what, hook, input, reason, output: None }
}

fn run_case(case: &str, dp: &mut Dataplane, steps: &[Step]) {
    for (i, s) in steps.iter().enumerate() {
        let ctx = format!("{case} / step {i} ({}, {:?})", s.what, s.hook);
        let before: Vec<u64> = Reason::ALL.iter().map(|r| dp.counter(s.hook, *r)).collect();
        let (verdict, out) = dp.run(s.hook, &s.input);
        let slow: Vec<u64> = hairpin_common::Slow::ALL.iter().map(|w| dp.slow(*w)).collect();
        let moved: Vec<&str> = Reason::ALL
            .iter()
            .zip(&before)
            .filter(|(r, b)| dp.counter(s.hook, **r) != **b)
            .map(|(r, _)| r.name())
            .collect();
        let slow = (slow, moved);
        assert_eq!(verdict, dp.verdict(s.hook, s.reason), "{ctx}: verdict (slow {slow:?})");
        for (r, b) in Reason::ALL.iter().zip(&before) {
            let moved = dp.counter(s.hook, *r) - b;
            let want = u64::from(*r == s.reason);
            assert_eq!(moved, want, "{ctx}: counter {} moved by {moved}, expected {want}", r.name());
        }
        if s.reason.is_drop() {
            continue;
        }
        let want = s.output.as_ref().unwrap_or(&s.input);
        if s.output.is_some() {
            verify_checksums(&out).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
        assert!(out == *want, "{ctx}: {}", diff(&out, want));
    }
}

const PUBLIC_80: &str = "203.0.113.1:80";
const SERVER_80: &str = "192.168.0.2:80";

/// Masquerade and the fast path decide by the kernel's routes, so these steps run in a
/// namespace of their own that routes like the gateway (`hairpin_lab::routed`), with both
/// interfaces in the fast path's device map.
fn in_gateway_ns(name: &str, cfg: Config, mode: Mode, test: impl FnOnce(&mut Dataplane) + Send + 'static) {
    hairpin_tests::require_root();
    let gw = RoutedGateway::new(&format!("hpt{}-{name}-{mode:?}", std::process::id())).unwrap();
    let (lan, wan) = (gw.lan, gw.wan);
    gw.ns
        .run(move || {
            // Both interfaces native XDP, taking XDP frames: the fast path may send into either.
            let xdp = Placement { ingress: Ingress::Xdp, why: Why::Forced, xdp_target: true }.encode();
            let cfg = Config { wan_ifindex: wan, lan_ifindex: lan, lan_placement: xdp, wan_placement: xdp, ..cfg };
            let mut dp = Dataplane::load(cfg, mode);
            dp.ifindex = Some((lan, wan));
            dp.add_device(lan);
            dp.add_device(wan);
            test(&mut dp);
        })
        .expect("test body (see the panic above)");
}

/// `in_gateway_ns` with the lab's configuration, the fast path on and `flags` added, on CPU 0
/// only: the flow cache is per CPU, so each test run must see the last one's.
fn in_fast_gateway(name: &str, mode: Mode, flags: u32, test: impl FnOnce(&mut Dataplane) + Send + 'static) {
    let cfg = Config { flags: dp::lab_config().flags | hairpin_common::CFG_F_FAST_PATH | flags, ..dp::lab_config() };
    in_gateway_ns(name, cfg, mode, |dp| {
        hairpin_lab::pin_thread_to_cpu(0).unwrap();
        test(dp)
    });
}

// Every case runs with ingress as XDP programs and as TC programs: one shared code path, the
// fast path's included, which must decide and rewrite the same.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod xdp {
            $(#[test]
            fn $name() {
                super::$name(super::Mode::Xdp)
            })*
        }
        mod tc {
            $(#[test]
            fn $name() {
                super::$name(super::Mode::Tc)
            })*
        }
    };
}

mod boundary;
mod fast_path;
mod forward;
mod hairpin;
mod icmp;
mod masquerade;
