//! A `hairpin-ctl run` under test, and polling for a condition instead of sleeping.

use hairpin_lab::Lab;

/// Polls `cond` every 100 ms until it holds or `secs` pass.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A `hairpin-ctl run` child process, stopped with SIGTERM (by its PID) when dropped.
pub struct Controller {
    child: std::process::Child,
    /// Its stdout so far, read as it comes (a thread drains the pipe).
    out: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Controller {
    /// Starts `run` and waits until it is running: it has said so on stdout (after its signal
    /// handlers are in place, so a SIGTERM from then on is a clean stop).
    pub fn start(lab: &Lab, extra: &[&str]) -> Self {
        let mut args = vec!["run", "--lan", "lan0", "--wan", "wan0", "--sweep-interval", "1"];
        args.extend_from_slice(extra);
        Self::spawn(lab, &args)
    }

    /// Starts `hairpin-ctl args...` (a `run`) and waits as [`start`](Self::start) does.
    pub fn spawn(lab: &Lab, args: &[&str]) -> Self {
        let ctl = Self::spawn_any(lab, args);
        wait_for(30, "run to say it is running", || {
            let o = ctl.out.lock().unwrap();
            o.contains("hairpin up:") || o.contains("hairpin run: adopted")
        });
        ctl
    }

    /// Starts `hairpin-ctl args...` (any long-running command: `flows --watch`) without
    /// waiting for anything.
    pub fn spawn_any(lab: &Lab, args: &[&str]) -> Self {
        Self::spawn_env(lab, args, &[])
    }

    /// As [`spawn_any`](Self::spawn_any), with these environment variables set.
    pub fn spawn_env(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = lab
            .ctl_command(args)
            .unwrap()
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start hairpin-ctl");
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (pipe, sink) = (child.stdout.take().unwrap(), out.clone());
        let reader = std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)).map_while(Result::ok) {
                let mut o = sink.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        Self { child, out, reader: Some(reader) }
    }

    /// SIGTERM, then the exit status and stdout.
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        let (status, out, _) = self.stop_with_stderr();
        (status, out)
    }

    /// SIGTERM, then the exit status, stdout and stderr.
    pub fn stop_with_stderr(mut self) -> (std::process::ExitStatus, String, String) {
        let status = self.terminate();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let mut err = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
        let out = self.out.lock().unwrap().clone();
        (status, out, err)
    }

    /// Its stdout so far.
    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Sends it a signal (`HUP`, `TERM`), by its PID: nsenter execs hairpin-ctl, so this PID is
    /// the controller itself.
    pub fn signal(&self, sig: &str) {
        let _ = std::process::Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status();
    }

    /// Waits up to `secs` for it to exit by itself; its status.
    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let mut status = None;
        wait_for(secs, "run to exit", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut status = None;
        wait_for(30, "run to exit on SIGTERM", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Controller {
    /// Stops `run` if it is still running, never panicking (a panic while a failed test
    /// unwinds aborts the process, and the labs' namespaces and pins would stay): SIGTERM, up to
    /// 30 s, then SIGKILL to this child.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        self.signal("TERM");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
