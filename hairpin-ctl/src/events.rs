//! Flow events, as `flows --watch` shows them: new flows (from the dataplane's ring buffer) and
//! flows that ended, with why: `expired` (idle past its timeout) or `evicted` (the LRU table
//! pushed it, or half of it, out), both seen by `run`'s sweep, and `flushed` (removed by a
//! command: `flows del|flush`, `map del`, `apply`), which those commands report.
//!
//! `run` is the ring buffer's one reader, so it hands the events on: it listens on a Unix
//! socket beside its pins' name (`/run/hairpin/<pin dir>.events`), sends every event to every
//! watcher as a JSON line, and takes the lines commands send it (their removals) to pass on.

use std::{
    collections::HashSet,
    io::Write as _,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use hairpin_common::{CtEntry, FlowKey};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};

use crate::{dataplane::PinDir, output};

/// One flow event, as a JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowEvent {
    /// `new` or `end`.
    pub event: String,
    /// Why it ended: `expired`, `evicted` or `flushed` (absent for `new`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub proto: String,
    /// forward, hairpin or masquerade.
    pub kind: String,
    /// The original direction as it arrived, and as it left.
    pub src: String,
    pub dst: String,
    pub translated_src: String,
    pub translated_dst: String,
    /// Seconds since the Unix epoch.
    pub time: f64,
}

impl FlowEvent {
    /// The event for a flow's original direction (`key` arriving, translated to `xlate`).
    pub fn new(event: &str, reason: Option<&str>, key: &FlowKey, xlate: &FlowKey, flags: u32) -> Self {
        Self {
            event: event.into(),
            reason: reason.map(Into::into),
            proto: output::proto_name(key.proto).into(),
            kind: output::Kind::of(flags).name().into(),
            src: output::src(key).to_string(),
            dst: output::dst(key).to_string(),
            translated_src: output::src(xlate).to_string(),
            translated_dst: output::dst(xlate).to_string(),
            time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// A flow that ended, from its original entry.
    pub fn ended(reason: &str, key: &FlowKey, e: &CtEntry) -> Self {
        Self::new("end", Some(reason), key, &e.xlate, e.flags)
    }

    /// What identifies the flow across its events.
    fn tuple(&self) -> String {
        format!("{} {} {}", self.proto, self.src, self.dst)
    }
}

impl std::fmt::Display for FlowEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = format!(
            "{:<5} {:<5} {:<10} {:<21} -> {:<21} as {:<21} -> {:<21}{}",
            self.event,
            self.proto,
            self.kind,
            self.src,
            self.dst,
            self.translated_src,
            self.translated_dst,
            self.reason.as_ref().map_or(String::new(), |r| format!(" {r}"))
        );
        f.write_str(line.trim_end())
    }
}

/// Where `run` serving `pins` listens.
pub fn socket_path(pins: &PinDir) -> PathBuf {
    // One name per directory: absolute, '-' doubled before '/' becomes '-'.
    let root = std::path::absolute(&pins.root).unwrap_or_else(|_| pins.root.clone());
    let name: String = root.to_string_lossy().trim_matches('/').replace('-', "--").replace('/', "-");
    PathBuf::from("/run/hairpin").join(format!("{name}.events"))
}

/// What a watcher says first, so that `run` tells it from a command reporting removals (which
/// it never writes to).
const WATCH_HELLO: &str = "watch";

/// Flows removed by `run` itself (a reload, a new WAN address): handed to its hub directly,
/// since writing to its own socket from its one thread could wait on itself.
static IN_RUN: Mutex<Option<Vec<FlowEvent>>> = Mutex::new(None);

/// Tells the `run` serving `pins`, if one does, that a command removed these flows (original
/// entries): it passes them on to its watchers as `flushed`.
pub fn flushed<'a>(pins: &PinDir, flows: impl IntoIterator<Item = (&'a FlowKey, &'a CtEntry)>) {
    let events = flows.into_iter().map(|(k, e)| FlowEvent::ended("flushed", k, e));
    if let Some(pending) = IN_RUN.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        pending.extend(events);
        return;
    }
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket_path(pins)) else { return };
    let _ = s.set_write_timeout(Some(std::time::Duration::from_secs(5)));
    let mut text = String::new();
    for ev in events {
        if let Ok(line) = serde_json::to_string(&ev) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    let _ = s.write_all(text.as_bytes());
}

/// `run`'s side: the listening socket and the watchers.
pub struct Hub {
    tx: broadcast::Sender<String>,
    path: PathBuf,
    /// Tuples commands reported flushed since the last sweep: not `evicted` when the sweep
    /// finds them gone.
    flushed: Arc<Mutex<HashSet<String>>>,
}

impl Hub {
    pub fn start(pins: &PinDir) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let path = socket_path(pins);
        let dir = path.parent().expect("a directory");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // One run per pin directory holds the lock: a socket left here is a dead run's.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
        let (tx, _) = broadcast::channel(4096);
        let flushed = Arc::new(Mutex::new(HashSet::new()));
        let (accept_tx, accept_flushed) = (tx.clone(), flushed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, accept_tx.clone(), accept_flushed.clone()));
            }
        });
        *IN_RUN.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        Ok(Self { tx, path, flushed })
    }

    /// Passes on what `run` itself removed (see [`flushed`]).
    pub fn send_own(&self) {
        let own = IN_RUN.lock().unwrap_or_else(|e| e.into_inner()).as_mut().map(std::mem::take).unwrap_or_default();
        let mut flushed = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        for ev in own {
            flushed.insert(ev.tuple());
            self.send(&ev);
        }
    }

    pub fn send(&self, e: &FlowEvent) {
        if let Ok(line) = serde_json::to_string(e) {
            let _ = self.tx.send(line);
        }
    }

    /// The tuples reported flushed since the last call.
    pub fn take_flushed(&self) -> HashSet<String> {
        std::mem::take(&mut *self.flushed.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection: a watcher (its first line says so) gets every event; a command's lines are
/// passed on to all, and nothing is written back to it.
async fn serve(stream: UnixStream, tx: broadcast::Sender<String>, flushed: Arc<Mutex<HashSet<String>>>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let first = match lines.next_line().await {
        Ok(Some(line)) => line,
        _ => return,
    };
    if first != WATCH_HELLO {
        let mut line = Some(first);
        while let Some(l) = line {
            if let Ok(e) = serde_json::from_str::<FlowEvent>(&l) {
                flushed.lock().unwrap_or_else(|e| e.into_inner()).insert(e.tuple());
                let _ = tx.send(l);
            }
            line = lines.next_line().await.ok().flatten();
        }
        return;
    }
    let mut rx = tx.subscribe();
    loop {
        let line = match rx.recv().await {
            Ok(line) => line,
            // A watcher too slow for the rate of flows: say how many it missed.
            Err(broadcast::error::RecvError::Lagged(n)) => format!("{{\"event\":\"lost\",\"count\":{n}}}"),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The flows `run` knows of (from the sweep's snapshots and the dataplane's new-flow events),
/// to tell flows pushed out of the table behind its back (evicted) from those a command removed
/// (flushed). Per flow: its translated tuple and kind flags (36 bytes and the table's own).
#[derive(Default)]
pub struct Seen {
    flows: std::collections::HashMap<FlowKey, (FlowKey, u32)>,
}

impl Seen {
    /// A flow the dataplane reported new.
    pub fn add(&mut self, key: FlowKey, xlate: FlowKey, flags: u32) {
        self.flows.insert(key, (xlate, flags));
    }

    /// Takes in a sweep's snapshot (original entries left after its removals), the flows it
    /// removed, and the tuples commands reported flushed; returns the flows gone otherwise, as
    /// `evicted` events.
    pub fn update(
        &mut self,
        now: std::collections::HashMap<FlowKey, CtEntry>,
        swept: &HashSet<FlowKey>,
        flushed: &HashSet<String>,
    ) -> Vec<FlowEvent> {
        let mut gone = Vec::new();
        for (k, (xlate, flags)) in &self.flows {
            if now.contains_key(k) || swept.contains(k) {
                continue;
            }
            let end = FlowEvent::new("end", Some("evicted"), k, xlate, *flags);
            if !flushed.contains(&end.tuple()) {
                gone.push(end);
            }
        }
        self.flows = now.into_iter().map(|(k, e)| (k, (e.xlate, e.flags))).collect();
        gone
    }
}

/// `flows --watch`: prints the events of the `run` serving `pins` as they come.
pub fn watch(pins: &PinDir, json: bool) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let path = socket_path(pins);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        anyhow::anyhow!(
            "no `hairpin-ctl run` serves the pins at {} ({}: {e}): flow events come from it",
            pins.root.display(),
            path.display()
        )
    })?;
    stream.write_all(format!("{WATCH_HELLO}\n").as_bytes())?;
    if !json {
        say!(
            "{:<5} {:<5} {:<10} {:<21}    {:<21}    {:<21}    {:<21} reason",
            "event",
            "proto",
            "kind",
            "src",
            "dst",
            "translated src",
            "translated dst"
        );
    }
    for line in std::io::BufReader::new(stream).lines() {
        let line = line?;
        match (json, serde_json::from_str::<FlowEvent>(&line)) {
            (true, _) => say!("{line}"),
            (false, Ok(e)) => say!("{e}"),
            (false, Err(_)) => say!("{line}"),
        }
    }
    say!("(run stopped)");
    Ok(())
}
