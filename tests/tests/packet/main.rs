//! Packet tests: crafted frames through the real compiled XDP and TC programs with
//! BPF_PROG_TEST_RUN. Each test is a [`Case`]: a dataplane set up from data, and a table of
//! steps run in order against it, so a flow created by one step is used by the next
//! (Katran-style fixtures), one module per feature. Every case runs twice, ingress as XDP and
//! as TC programs.
//!
//! Every step asserts the verdict, the exact output bytes (built independently, checksums from
//! scratch with etherparse), and that exactly the expected (hook, reason) counter moved.

use hairpin_common::{CT_F_REPLY, Config, CtEntry, FlowKey, Reason, consts::Hook};
use hairpin_lab::routed::{CLIENT_MAC, LAN_MAC, ROUTER_MAC, SERVER_MAC, WAN_MAC};
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
        if s.reason.consumes() {
            continue;
        }
        let want = s.output.as_ref().unwrap_or(&s.input);
        // Valid out where valid in (a wrong one must stay wrong: the exact bytes say how).
        if s.output.is_some() && verify_checksums(&s.input).is_ok() {
            verify_checksums(&out).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
        assert!(out == *want, "{ctx}: {}", diff(&out, want));
    }
}

const PUBLIC_80: &str = "203.0.113.1:80";
const SERVER_80: &str = "192.168.0.2:80";

/// Where a case's dataplane runs.
#[derive(Clone, Copy)]
enum Env {
    /// Loaded in the test's own namespace: translation decided by maps alone.
    Bare,
    /// In a namespace that routes like the gateway (`hairpin_lab::routed`), both interfaces in
    /// the fast path's device map: masquerade and the fast path decide by its routes.
    Gateway,
    /// As `Gateway`, with the fast path on and these flags added, on CPU 0 only: the flow
    /// cache is per CPU, so each step must see the last one's.
    Fast(u32),
}

/// A packet test as data (as Katran's fixtures): where its dataplane runs, its configuration
/// and forwards, the steps fed to it in order, and what they leave in the tables. What cannot
/// be a row (a port the dataplane picks, a state machine read back) goes in the closure given
/// to [`Case::run_then`], which runs after the steps on the same dataplane.
struct Case {
    name: &'static str,
    env: Env,
    config: Config,
    forwards: Vec<(L4, &'static str, &'static str)>,
    steps: Vec<Step>,
    /// Conntrack entries (two per flow) after the last step, if checked, and as many egress
    /// entries.
    flows: Option<usize>,
    /// The tables' size (`up --max-flows`).
    max_flows: u32,
}

impl Case {
    /// The lab's configuration (`dp::lab_config`), no forwards, no steps.
    fn new(name: &'static str, env: Env) -> Self {
        Self {
            name,
            env,
            config: dp::lab_config(),
            forwards: Vec::new(),
            steps: Vec::new(),
            flows: None,
            max_flows: hairpin_common::consts::DEFAULT_MAX_FLOWS,
        }
    }

    /// Tables for `max_flows` flows rather than the default.
    fn max_flows(self, max_flows: u32) -> Self {
        Self { max_flows, ..self }
    }

    fn config(self, config: Config) -> Self {
        Self { config, ..self }
    }

    fn forward(mut self, l4: L4, public: &'static str, private: &'static str) -> Self {
        self.forwards.push((l4, public, private));
        self
    }

    fn steps(self, steps: Vec<Step>) -> Self {
        Self { steps, ..self }
    }

    /// Checks that the steps leave `flows` conntrack entries, and an egress entry for each.
    fn leaves_flows(self, flows: usize) -> Self {
        Self { flows: Some(flows), ..self }
    }

    fn run(self, mode: Mode) {
        self.run_then(mode, |_| {})
    }

    /// Runs the case, then `then` on the same dataplane.
    fn run_then(self, mode: Mode, then: impl FnOnce(&mut Dataplane) + Send + 'static) {
        let Case { name, env, config, forwards, steps, flows, max_flows } = self;
        let body = move |dp: &mut Dataplane| {
            for (l4, public, private) in &forwards {
                dp.add_mapping(*l4, public, private);
            }
            run_case(name, dp, &steps);
            if let Some(n) = flows {
                assert_eq!(dp.ct().len(), n, "{name}: conntrack entries after the steps: {:#?}", dp.ct());
            }
            if let Some(n) = flows {
                assert_eq!(dp.egress().len(), n, "{name}: egress entries after the steps: {:#?}", dp.egress());
            }
            then(dp)
        };
        match env {
            Env::Bare => body(&mut Dataplane::load_sized(config, mode, max_flows)),
            Env::Gateway => in_gateway_ns(config, mode, max_flows, body),
            Env::Fast(flags) => {
                let config = Config { flags: config.flags | hairpin_common::CFG_F_FAST_PATH | flags, ..config };
                in_gateway_ns(config, mode, max_flows, |dp| {
                    hairpin_lab::pin_thread_to_cpu(0).unwrap();
                    body(dp)
                })
            }
        }
    }
}

/// Runs `test` on a dataplane with `cfg` in a namespace of its own that routes like the
/// gateway (see [`Env::Gateway`]).
fn in_gateway_ns(cfg: Config, mode: Mode, max_flows: u32, test: impl FnOnce(&mut Dataplane) + Send + 'static) {
    dp::in_routed_ns(&format!("t{mode:?}"), move |sides| test(&mut Dataplane::load_routed(cfg, mode, max_flows, sides)))
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
mod fragment;
mod hairpin;
mod icmp;
mod masquerade;
