//! `cargo xtask fuzz [--steps N] [--seed S]`: the differential test (the dataplane against the
//! reference model, `tests/tests/model.rs`) run long: XDP and TC ingress, the fast path off
//! and on (TC's also without its flow cache), and two runs with full tables. `cargo xtask test`
//! runs it with a fixed seed and a count that fits the CI budget; this is for a change of the
//! dataplane.

use crate::util;

/// The differential test's runs (its test functions), which share the steps.
pub const RUNS: u64 = 7;

pub fn run(steps: u64, seed: Option<u64>) -> anyhow::Result<()> {
    util::require_root("the differential test")?;
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "hairpin-tests",
        "--test",
        "model",
        "--",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    cmd.env("HAIRPIN_MODEL_STEPS", (steps / RUNS).max(1).to_string());
    if let Some(seed) = seed {
        cmd.env("HAIRPIN_MODEL_SEED", seed.to_string());
    }
    util::run(&mut cmd)
}
