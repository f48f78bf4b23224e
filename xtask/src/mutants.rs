//! `cargo xtask mutants [NAME...]`: the proof that the differential test (`tests/tests/model.rs`)
//! can fail. Each `tests/mutants/*.patch` puts one defect into the dataplane or the controller
//! (a fix reverted, a check inverted, a checksum update left out). It is applied to the tree,
//! the test's fixed-seed set (the one `cargo xtask test` runs) runs against it, and it is
//! taken out again. A mutant is caught when a run disagrees with the model; its figure is the
//! generated actions before the first disagreement. A patch whose header has the line
//! `expect: survives` is a second check that no frame sequence reaches while the first holds.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{fuzz, util};

/// A mutant's runs take about a minute; one that runs far longer is stuck.
const TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Shrinking tries per disagreement: the figure is found before shrinking, which a run over
/// many mutants keeps short.
const SHRINK: &str = "20";

/// What the test's loader panics with when the kernel refuses the object.
const LOAD_FAILED: &str = "load and verify the eBPF object";

enum Outcome {
    Caught {
        after: u64,
        runs: usize,
    },
    Survived,
    /// The patch no longer applies: the code it mutates has changed.
    Stale,
    NoBuild,
    /// The kernel's verifier refuses a mutated program: every case would fail to load.
    NoLoad(String),
    /// The test failed without a disagreement (a panic in the harness, a timeout).
    Broken(String),
}

pub fn run(filters: &[String]) -> anyhow::Result<()> {
    util::require_root("the differential test")?;
    let root = util::root();
    let dir = root.join("tests/mutants");
    let mut patches: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    patches.retain(|p| p.extension().is_some_and(|e| e == "patch"));
    patches.retain(|p| filters.is_empty() || filters.iter().any(|f| name(p).contains(f.as_str())));
    patches.sort();
    if patches.is_empty() {
        bail!("no mutant in {} matches {filters:?}", dir.display());
    }
    // A mutant is taken out with `git apply -R`: other changes would mix with it.
    let dirty =
        util::output(git(&root).args(["status", "--porcelain", "--untracked-files=no"])).context("git status")?;
    if !dirty.trim().is_empty() {
        bail!("the tree has uncommitted changes; commit or stash them first:\n{dirty}");
    }
    let logs = root.join("target/mutants");
    std::fs::create_dir_all(&logs)?;
    let mut results = Vec::new();
    for (i, patch) in patches.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, patches.len(), name(patch));
        let outcome = one(&root, patch, &logs.join(format!("{}.log", name(patch))))?;
        eprintln!("  {}", describe(&outcome));
        results.push((patch, outcome));
    }
    println!("\n| mutant | result |\n|---|---|");
    let mut wrong = 0;
    for (patch, outcome) in &results {
        let expected_survivor = std::fs::read_to_string(patch)?.lines().any(|l| l.trim() == "expect: survives");
        let ok = match outcome {
            Outcome::Caught { .. } => !expected_survivor,
            Outcome::Survived => expected_survivor,
            _ => false,
        };
        wrong += usize::from(!ok);
        let note = if expected_survivor { " (expected to survive)" } else { "" };
        println!("| {} | {}{note} |", name(patch), describe(outcome));
    }
    eprintln!("logs in {}", logs.display());
    if wrong > 0 {
        bail!("{wrong} of {} mutants not as expected", results.len());
    }
    Ok(())
}

/// Applies `patch`, runs the fixed-seed set, takes the patch out again.
fn one(root: &Path, patch: &Path, log: &Path) -> anyhow::Result<Outcome> {
    if !util::ok(git(root).args(["apply", "--check"]).arg(patch)) {
        return Ok(Outcome::Stale);
    }
    util::run(git(root).args(["apply"]).arg(patch))?;
    eprintln!("  (if this is interrupted, take it out with `git apply -R {}`)", patch.display());
    let outcome = test(root, log);
    // Taken out whatever the run did; a failure here leaves the tree mutated, said loudly.
    util::run(git(root).args(["apply", "-R"]).arg(patch))
        .with_context(|| format!("taking {} out of the tree: revert it by hand", patch.display()))?;
    outcome
}

/// Builds the model test against the mutated tree and runs it.
fn test(root: &Path, log: &Path) -> anyhow::Result<Outcome> {
    let build = util::cargo()
        .args(["test", "--release", "-p", "hairpin-tests", "--test", "model", "--no-run"])
        .stdout(Stdio::null())
        .output()
        .context("cargo test --no-run")?;
    let said = String::from_utf8_lossy(&build.stderr).into_owned();
    std::fs::write(log, &said)?;
    if !build.status.success() {
        return Ok(Outcome::NoBuild);
    }
    // cargo names the test binary: "Executable tests/model.rs (target/release/deps/model-…)".
    let mut named = said.lines().filter_map(|l| l.trim().strip_prefix("Executable ")?.split_once(" ("));
    let Some((_, binary)) = named.find(|(source, _)| source.ends_with("model.rs")) else {
        bail!("cargo did not name the model test's binary (see {})", log.display());
    };
    let binary = root.join(binary.trim_end_matches(')'));
    let out = std::fs::File::create(log)?;
    let mut child = Command::new(&binary)
        .args(["--test-threads", "1", "--nocapture"])
        .env("HAIRPIN_MODEL_SHRINK", SHRINK)
        .env_remove("HAIRPIN_MODEL_STEPS")
        .env_remove("HAIRPIN_MODEL_SEED")
        .current_dir(root.join("tests"))
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        // A program the verifier refuses fails every case, and shrinking tries again and
        // again: stop at the first refusal. Our own child, by the handle that started it.
        let refused = std::fs::read_to_string(log)?.contains(LOAD_FAILED);
        if refused || start.elapsed() > TIMEOUT {
            child.kill()?;
            child.wait()?;
            break None;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let said = std::fs::read_to_string(log)?;
    if let Some(at) = said.find(LOAD_FAILED) {
        let why = said[at..].lines().take(6).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>();
        return Ok(Outcome::NoLoad(why.join(" ")));
    }
    // A case that panicked has no count of actions ("found after 0").
    let found: Vec<u64> = said
        .match_indices("found after ")
        .filter_map(|(at, m)| said[at + m.len()..].split(' ').next()?.parse().ok())
        .filter(|n| *n > 0)
        .collect();
    Ok(match (status, found.iter().min()) {
        (Some(s), _) if s.success() => Outcome::Survived,
        (_, Some(&after)) => Outcome::Caught { after, runs: found.len() },
        (None, None) => Outcome::Broken(format!("no result in {} min", TIMEOUT.as_secs() / 60)),
        (Some(_), None) => Outcome::Broken(
            said.lines().find(|l| l.contains("panicked")).unwrap_or("failed without a disagreement").to_owned(),
        ),
    })
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Caught { after, runs } => {
            format!("caught after {after} actions ({runs} of {} runs disagree)", fuzz::RUNS)
        }
        Outcome::Survived => "SURVIVED".into(),
        Outcome::Stale => "does not apply (the code changed: write it again)".into(),
        Outcome::NoBuild => "does not build".into(),
        Outcome::NoLoad(why) => format!("does not load: {why}"),
        Outcome::Broken(why) => format!("broken: {why}"),
    }
}

fn name(patch: &Path) -> String {
    patch.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn git(root: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(root);
    c
}
