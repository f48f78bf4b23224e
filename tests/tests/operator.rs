//! The controller as an operator meets it on a gateway: a configuration file applied
//! atomically and read back, `run` as a service (reload, lock, adoption, orphaned pins),
//! interfaces already in use, address sanity, idempotent `down`, and output that behaves in a
//! pipe. Each test builds its own lab (namespaces and pin directory) and real traffic where a
//! flow's fate is the point.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    sync::mpsc,
    time::Duration,
};

use hairpin_lab::{
    Lab,
    topology::{CLIENT, DNS_PORT, INET, PUBLIC, PUBLIC_DNS_PORT, SERVER},
    traffic,
};
use hairpin_tests::{
    controller::{Controller, wait_for},
    hairpin_ctl, require_root,
};

fn lab() -> Lab {
    require_root();
    let mut lab = Lab::new(hairpin_ctl()).expect("build the lab");
    lab.start_servers().expect("start the servers");
    lab
}

/// A minimal configuration on the lab's interfaces with these extra lines.
fn config(extra: &str) -> String {
    format!("[lan]\ninterface = \"lan0\"\n\n[wan]\ninterface = \"wan0\"\n{extra}")
}

fn forward(proto: &str, port: u16, to: &str) -> String {
    format!("\n[[forward]]\nproto = \"{proto}\"\nport = {port}\nto = \"{to}\"\n")
}

fn show(lab: &Lab) -> String {
    lab.ctl(&["show"]).unwrap()
}

/// Runs hairpin-ctl expecting failure: its one `error:` line, with nothing on stdout.
fn fails(lab: &Lab, args: &[&str]) -> String {
    let out = lab.ctl_output(args).unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{args:?} succeeded: {stdout}");
    let lines: Vec<_> = stderr.lines().collect();
    assert!(lines.len() == 1 && lines[0].starts_with("error: "), "{args:?}: expected one error line:\n{stderr}");
    lines[0].to_string()
}

/// A file of the lab's, removed when dropped.
struct File(std::path::PathBuf);

impl File {
    fn new(lab: &Lab, name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}-{name}.toml", lab.prefix));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn apply_prints_the_difference_dry_runs_and_round_trips_through_show() {
    let lab = lab();
    // Nothing up: apply brings the gateway up from the file, forwards included.
    let out = lab.apply(&lab.example_config(), &[]).unwrap();
    assert!(out.contains("hairpin up: lan lan0") && out.contains("3 forwards"), "{out}");
    let live = show(&lab);
    for line in ["interface = \"lan0\"", "public_address = \"203.0.113.1\"", "port = 8080", "to = \"192.168.0.2:53\""] {
        assert!(live.contains(line), "show lacks {line}:\n{live}");
    }
    // What show prints, applied, changes nothing; so does the file itself, again.
    assert_eq!(lab.apply(&live, &[]).unwrap().trim(), "no changes");
    assert_eq!(lab.apply(&lab.example_config(), &[]).unwrap().trim(), "no changes");
    let json: serde_json::Value = serde_json::from_str(&lab.ctl(&["show", "--json"]).unwrap()).unwrap();
    assert_eq!(json["lan"]["interface"], "lan0");
    assert_eq!(json["forward"].as_array().unwrap().len(), 3);

    // A change: dry run prints the difference and changes nothing.
    let changed = lab
        .example_config()
        .replace("udp = 300", "udp = 30")
        .replace("port = 5353\nto = \"192.168.0.2:53\"", "port = 5354\nto = \"192.168.0.2:53\"");
    let dry = lab.apply(&changed, &["--dry-run"]).unwrap();
    let lines: Vec<_> = dry.lines().collect();
    for line in [
        "~ timeouts.udp: 300 -> 30",
        "+ forward udp 5354 -> 192.168.0.2:53",
        "- forward udp 5353 -> 192.168.0.2:53",
        "(dry run: nothing changed)",
    ] {
        assert!(lines.contains(&line), "dry run lacks {line:?}:\n{dry}");
    }
    assert_eq!(show(&lab), live, "a dry run changed the gateway");
    let applied = lab.apply(&changed, &[]).unwrap();
    assert!(applied.contains("+ forward udp 5354") && applied.contains("applied"), "{applied}");
    let after = show(&lab);
    assert!(after.contains("udp = 30") && after.contains("port = 5354") && !after.contains("port = 5353"), "{after}");
    // The new forward carries traffic; the removed one does not.
    let to = |port| SocketAddrV4::new(PUBLIC, port);
    let e = traffic::udp_echo(&lab.inet, to(5354), b"new", Duration::from_secs(3)).unwrap();
    assert_eq!(e.seen_by_server.ip(), std::net::IpAddr::V4(INET));
    traffic::udp_echo(&lab.inet, to(PUBLIC_DNS_PORT), b"old", Duration::from_secs(1)).expect_err("removed forward");
    lab.down().unwrap();
}

/// An established TCP connection through a kept forward carries on across an apply that
/// removes another forward (whose flow goes with it) and changes timeouts.
#[test]
fn apply_keeps_the_flows_of_kept_forwards_and_removes_the_rest() {
    let lab = lab();
    let both = config(&(forward("tcp", 80, "192.168.0.2:80") + &forward("udp", PUBLIC_DNS_PORT, "192.168.0.2:53")));
    lab.apply(&both, &[]).unwrap();
    // A UDP flow through the forward about to go.
    traffic::udp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT), b"x", Duration::from_secs(3)).unwrap();
    // A TCP connection through the kept forward, half done: the echo server serves one
    // request, reading as it goes.
    let (half_done, go) = (mpsc::channel::<()>(), mpsc::channel::<()>());
    let (half_tx, go_rx) = (half_done.0, go.1);
    let conn = lab
        .inet
        .spawn(move || -> anyhow::Result<()> {
            let s = TcpStream::connect_timeout(&SocketAddrV4::new(PUBLIC, 80).into(), Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(8)))?;
            let mut w = s.try_clone()?;
            let mut r = BufReader::new(s);
            w.write_all(b"ECHO 8\nfirst")?;
            let mut line = String::new();
            r.read_line(&mut line)?;
            let mut got = [0u8; 5];
            r.read_exact(&mut got)?;
            anyhow::ensure!(&got == b"first", "first half echoed wrong");
            half_tx.send(())?;
            go_rx.recv()?;
            w.write_all(b"two")?;
            let mut got = [0u8; 3];
            r.read_exact(&mut got)?;
            anyhow::ensure!(&got == b"two", "second half echoed wrong");
            Ok(())
        })
        .unwrap();
    half_done.1.recv_timeout(Duration::from_secs(10)).expect("the first half");
    let flows = lab.flows().unwrap();
    let dport = |f: &serde_json::Value| f["dst"].as_str().unwrap().to_string();
    assert!(flows.iter().any(|f| dport(f) == format!("{PUBLIC}:80")), "{flows:?}");
    assert!(flows.iter().any(|f| dport(f) == format!("{PUBLIC}:{PUBLIC_DNS_PORT}")), "{flows:?}");

    let out =
        lab.apply(&config(&format!("[timeouts]\nudp = 30\n{}", forward("tcp", 80, "192.168.0.2:80"))), &[]).unwrap();
    assert!(out.contains("- forward udp 5353") && out.contains("applied (1 flows removed)"), "{out}");
    let flows = lab.flows().unwrap();
    assert!(flows.iter().any(|f| dport(f) == format!("{PUBLIC}:80")), "the kept forward's flow went: {flows:?}");
    assert!(!flows.iter().any(|f| dport(f) == format!("{PUBLIC}:{PUBLIC_DNS_PORT}")), "{flows:?}");
    go.0.send(()).unwrap();
    conn.join().unwrap().expect("the connection through the kept forward carried on");
    lab.down().unwrap();
}

#[test]
fn a_file_that_fails_a_check_changes_nothing() {
    let lab = lab();
    lab.apply(&config(&forward("tcp", 80, "192.168.0.2:80")), &[]).unwrap();
    let before = show(&lab);
    for (text, needle) in [
        (config("[nat]\nport_range = \"100-70000\"\n"), ":7: nat.port_range: '100-70000': port 70000 is above 65535"),
        (config("[nat]\nhairpin = \"yes\"\n"), ":7: nat.hairpin: invalid type"),
        (config("colour = \"blue\"\n"), ":6: wan.colour: unknown field `colour`"),
        (
            config(&forward("tcp", 81, "10.9.9.9:80")),
            "forward[0].to: 10.9.9.9 is outside the LAN prefix 192.168.0.0/24",
        ),
        (config(&forward("tcp", 81, "192.168.0.1:80")), "own LAN address"),
        (config("public_address = \"192.168.0.7\"\n"), "wan.public_address: 192.168.0.7 is inside the LAN prefix"),
        (config("[dataplane]\nmax_flows = 4096\n"), "dataplane.max_flows: 131072 -> 4096 (fixed while up"),
        (
            "[lan]\ninterface = \"lan0\"\n\n[wan]\ninterface = \"nosuch0\"\n".into(),
            "wan.interface: wan0 -> nosuch0 (fixed while up",
        ),
    ] {
        let file = File::new(&lab, "bad", &text);
        let e = fails(&lab, &["apply", "-f", file.path()]);
        assert!(e.contains(file.path()) || e.contains("fixed while up"), "{e}");
        assert!(e.contains(needle), "{text}\n=> {e}");
        assert_eq!(show(&lab), before, "{text} changed the gateway");
    }
    lab.down().unwrap();
}

#[test]
fn run_applies_its_file_again_on_sighup() {
    let lab = lab();
    let file = File::new(&lab, "run", &config(&forward("tcp", 80, "192.168.0.2:80")));
    let ctl = Controller::spawn(&lab, &["run", "--config", file.path(), "--sweep-interval", "1"]);
    assert!(show(&lab).contains("port = 80"));
    file.write(&config(&format!("[timeouts]\nudp = 45\n{}", forward("udp", 5353, "192.168.0.2:53"))));
    ctl.signal("HUP");
    wait_for(10, "run to apply the file again", || {
        let s = show(&lab);
        s.contains("udp = 45") && s.contains("port = 5353") && !s.contains("port = 80")
    });
    let e = traffic::udp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, 5353), b"hup", Duration::from_secs(3)).unwrap();
    assert_eq!(e.seen_by_server.ip(), std::net::IpAddr::V4(INET));
    // A broken file on reload is reported and changes nothing; run carries on.
    file.write("[lan]\ninterface = ");
    let before = show(&lab);
    ctl.signal("HUP");
    let (status, out, err) = ctl.stop_with_stderr();
    assert!(status.success(), "{status}: {out} {err}");
    assert!(out.contains("SIGHUP: applying"), "{out}");
    assert!(
        out.lines().any(|l| l.contains("ERROR") && l.contains("reload of") && l.contains("nothing changed")),
        "{out}\n{err}"
    );
    assert_eq!(show(&lab), before);
    lab.down().unwrap();
}

/// Forwards have an origin: the file's are the file's to add and remove, and a reload removes
/// those it no longer declares; `map add` forwards outlive every reload (and `show` does not
/// write them), unless the file declares their port (the file's then takes it). A forward
/// given a lifetime goes at the sweep after it ends, with its flows.
#[test]
fn reloads_keep_runtime_forwards_and_show_writes_only_the_files() {
    let lab = lab();
    let file = File::new(&lab, "run", &config(&forward("tcp", 80, "192.168.0.2:80")));
    let ctl = Controller::spawn(&lab, &["run", "--config", file.path(), "--sweep-interval", "1"]);
    lab.ctl(&["map", "add", "udp", &format!("{PUBLIC}:5353"), "192.168.0.2:53"]).unwrap();
    lab.ctl(&["map", "add", "tcp", &format!("{PUBLIC}:8080"), "192.168.0.2:80"]).unwrap();
    let origins = || -> Vec<(String, String)> {
        let rows = lab.ctl_json(&["map", "list"]).unwrap();
        let field = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_string();
        rows.iter().map(|r| (field(r, "public"), field(r, "origin"))).collect()
    };
    let at = |port: u16| format!("{PUBLIC}:{port}");
    assert_eq!(
        origins(),
        [(at(80), "file".into()), (at(8080), "runtime".into()), (at(5353), "runtime".into())],
        "map list names each forward's origin"
    );
    assert!(!show(&lab).contains("port = 5353"), "show writes only the file's forwards");

    // The file drops tcp 80 and declares tcp 8080 (a runtime forward's port) to another port.
    file.write(&config(&forward("tcp", 8080, "192.168.0.2:8000")));
    ctl.signal("HUP");
    wait_for(10, "run to apply the file again", || {
        origins() == [(at(8080), "file".to_string()), (at(5353), "runtime".into())]
    });
    let list = lab.ctl(&["map", "list"]).unwrap();
    assert!(list.contains("192.168.0.2:8000"), "the file's target: {list}");
    let e = traffic::udp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, 5353), b"kept", Duration::from_secs(3)).unwrap();
    assert_eq!(e.seen_by_server.ip(), std::net::IpAddr::V4(INET), "the runtime forward still forwards");

    // A runtime forward with a lifetime: gone at the first sweep after it.
    lab.ctl(&["map", "add", "udp", &format!("{PUBLIC}:5354"), "192.168.0.2:53", "--lifetime", "1"]).unwrap();
    wait_for(10, "the sweep to remove the forward whose lifetime ended", || {
        !origins().iter().any(|(p, _)| *p == at(5354))
    });
    let (status, out, err) = ctl.stop_with_stderr();
    assert!(status.success(), "{status}: {out} {err}");
    assert!(out.contains("(map add) -> 192.168.0.2:8000 (the file's now)"), "the reload said the file took it: {out}");
    assert!(out.contains("5354 -> 192.168.0.2:53 expired"), "{out}");
    lab.down().unwrap();
}

#[test]
fn run_adopting_applies_what_is_given_keeps_the_rest_and_refuses_what_is_fixed() {
    let lab = lab();
    lab.up(&["--udp-filtering", "endpoint-independent", "--max-flows", "4096"]).unwrap();
    let e = fails(&lab, &["run", "--max-flows", "8192"]);
    assert!(e.contains("dataplane.max_flows: 4096 -> 8192"), "{e}");
    let e = fails(&lab, &["run", "--lan", "wan0", "--wan", "lan0"]);
    assert!(e.contains("lan.interface: lan0 -> wan0"), "{e}");
    // Flags not given keep the pinned values (endpoint-independent filtering stays on).
    let ctl = Controller::spawn(&lab, &["run", "--udp-timeout", "42", "--sweep-interval", "1"]);
    let live = show(&lab);
    assert!(live.contains("udp_filtering = \"endpoint-independent\"") && live.contains("udp = 42"), "{live}");
    assert!(live.contains("max_flows = 4096"), "{live}");
    // One run per pin directory.
    let e = fails(&lab, &["run"]);
    assert!(e.contains("another `hairpin-ctl run` already serves"), "{e}");
    // Pins removed under it (down from another shell): it says so and stops, successfully.
    let mut ctl = ctl;
    lab.down().unwrap();
    let status = ctl.wait_exit(10);
    assert!(status.success(), "{status}");
    assert!(ctl.output().contains("were removed (hairpin-ctl down?): stopping"), "{}", ctl.output());
}

#[test]
fn up_refuses_interfaces_that_already_run_programs() {
    let lab = lab();
    lab.up(&[]).unwrap();
    // A second gateway on the same interfaces, from another pin directory.
    let other = format!("{}-other", lab.pin_dir.display());
    let up_other = || {
        let out = lab
            .gw
            .command(hairpin_ctl().to_str().unwrap())
            .args(["--pin-dir", &other, "up", "--lan", "lan0", "--wan", "wan0"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && e.lines().count() == 1, "{e}");
        e
    };
    let e = up_other();
    // TCX links where the kernel has TCX (6.6 on), else netlink filters.
    let tcx_or_filter =
        e.contains("lan0 already runs TCX program id") || e.contains("lan0 already runs a cls_bpf filter");
    assert!(tcx_or_filter && e.contains("hairpin's"), "{e}");
    assert!(!std::path::Path::new(&other).exists());
    lab.down().unwrap();
    // The same with the first gateway's TC programs as netlink (cls_bpf) filters.
    lab.up(&["--tc-attach", "netlink"]).unwrap();
    let e = up_other();
    assert!(e.contains("lan0 already runs a cls_bpf filter, program id") && e.contains("hairpin's"), "{e}");
    assert!(!std::path::Path::new(&other).exists());
    lab.down().unwrap();
    // Somebody else's XDP program.
    let pass = lab.gw.run(|| hairpin_lab::xdp_pass::XdpPass::attach("wan0")).unwrap().unwrap();
    let e = fails(&lab, &["up", "--lan", "lan0", "--wan", "wan0"]);
    assert!(e.contains("wan0 already runs XDP program id") && e.contains("xdp_pass"), "{e}");
    assert!(!lab.pin_dir.exists());
    drop(pass);
    lab.up(&[]).unwrap();
    lab.down().unwrap();
}

#[test]
fn down_is_idempotent_and_leaves_what_is_not_hairpins() {
    let lab = lab();
    let out = lab.ctl(&["down"]).unwrap();
    assert!(out.contains("nothing to do"), "{out}");
    std::fs::create_dir_all(lab.pin_dir.join("someone-elses")).unwrap();
    let e = fails(&lab, &["down"]);
    assert!(e.contains("not a hairpin pin directory") && e.contains("left alone"), "{e}");
    assert!(lab.pin_dir.join("someone-elses").exists());
    std::fs::remove_dir_all(&lab.pin_dir).unwrap();
    lab.up(&[]).unwrap();
    // Under `ip netns exec` (which remounts /sys) the pins are hidden: down must not say
    // "nothing to do" while the dataplane runs, nor any command pretend hairpin is not up.
    let ns = lab.gw.path().file_name().unwrap().to_str().unwrap().to_string();
    for args in [&["down"][..], &["map", "list"], &["show"]] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, hairpin_ctl().to_str().unwrap(), "--pin-dir", lab.pin_dir.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && e.contains("nsenter --net=/run/netns/NAME"), "{args:?}: {e}");
    }
    assert!(lab.pin_dir.join("maps/HP_CONFIG").exists());
    lab.down().unwrap();
    // down returns once the kernel has detached the programs (it does so a moment after the
    // links are unpinned): an up right after it never finds them.
    for _ in 0..5 {
        lab.up(&[]).unwrap();
        lab.down().unwrap();
    }
    assert!(lab.ctl(&["down"]).unwrap().contains("nothing to do"));
}

#[test]
fn addresses_are_checked_before_anything_is_attached() {
    let lab = lab();
    for (flags, needle) in [
        (&["--public-ip", "192.168.0.9"][..], "--public-ip: 192.168.0.9 is inside the LAN prefix 192.168.0.0/24"),
        (&["--public-ip", "0.0.0.0"], "--public-ip: 0.0.0.0 is not a unicast host address"),
        (&["--lan-ip", "10.0.0.1"], "--lan-ip: 10.0.0.1 is outside the LAN prefix"),
        (&["--lan-ip", "192.168.0.255"], "network or broadcast"),
        (
            &["--lan-prefix", "203.0.113.0/24", "--lan-ip", "203.0.113.9"],
            "--public-ip: 203.0.113.1 is inside the LAN prefix",
        ),
        (&["--mode", "tc", "--xdp-mode", "native"], "--xdp-mode: mode \"tc\" attaches no XDP"),
    ] {
        let args: Vec<&str> =
            ["up", "--lan", "lan0", "--wan", "wan0"].into_iter().chain(flags.iter().copied()).collect();
        let e = fails(&lab, &args);
        assert!(e.contains(needle), "{flags:?}: {e}");
        assert!(!lab.pin_dir.exists(), "{flags:?} left pins");
    }
    let e = fails(&lab, &["up", "--lan", "lo", "--wan", "wan0"]);
    assert!(e.contains("--lan: the loopback interface cannot be a gateway side"), "{e}");
    lab.up(&[]).unwrap();
    for (target, needle) in [
        ("10.9.9.9:80", "outside the LAN prefix"),
        ("203.0.113.1:80", "public address"),
        ("192.168.0.0:80", "network or broadcast"),
    ] {
        let e = fails(&lab, &["map", "add", "tcp", "203.0.113.1:81", target]);
        assert!(e.contains(needle), "{target}: {e}");
    }
    // A public port a LAN host's binding holds cannot be forwarded.
    let u = traffic::udp_echo(&lab.cli, SocketAddrV4::new(INET, DNS_PORT), b"b", Duration::from_secs(3)).unwrap();
    let port = match u.seen_by_server {
        std::net::SocketAddr::V4(a) => a.port(),
        a => panic!("{a}"),
    };
    let e = fails(&lab, &["map", "add", "udp", &format!("{PUBLIC}:{port}"), &format!("{SERVER}:53")]);
    assert!(e.contains("is held by 192.168.0.3:") && e.contains("masquerade binding"), "{e}");
    lab.down().unwrap();
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_and_argument_errors_are_one_line() {
    let lab = lab();
    lab.up(&[]).unwrap();
    for args in [&["stats"][..], &["flows"], &["map", "list"], &["show"], &["stats", "--json"]] {
        // The reader is gone before the first write.
        let mut child = lab
            .ctl_command(args)
            .unwrap()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success() && err.is_empty(), "{args:?}: {status}: {err}");
    }
    let out = lab.ctl_output(&["up", "--lan", "a", "--wan", "b", "--port-range", "100-70000"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("port 70000 is above 65535"), "{err}");
    lab.down().unwrap();
}

/// A `run` with no public address given follows the WAN interface's: DHCP renewing with
/// another address moves the forwards and masquerade to it, as netfilter's masquerade does.
#[test]
fn run_follows_the_wan_address() {
    let lab = lab();
    let mut ctl = Controller::start(&lab, &[]);
    lab.add_mappings().unwrap();
    let moved = std::net::Ipv4Addr::new(203, 0, 113, 9);
    // A DHCP client's renewal: the new address first, then the old one goes (and the new one
    // is promoted to primary).
    lab.gw.sysctl("net.ipv4.conf.wan0.promote_secondaries", "1").unwrap();
    lab.gw.ip(&["addr", "add", "203.0.113.9/24", "dev", "wan0"]).unwrap();
    lab.gw.ip(&["addr", "del", "203.0.113.1/24", "dev", "wan0"]).unwrap();
    wait_for(10, "the forwards to move to the new address", || {
        lab.ctl_json(&["map", "list"])
            .unwrap()
            .iter()
            .all(|m| m["public"].as_str().unwrap().starts_with("203.0.113.9:"))
    });
    let e = traffic::udp_echo(&lab.inet, SocketAddrV4::new(moved, PUBLIC_DNS_PORT), b"moved", Duration::from_secs(3))
        .expect("the forward on the new address");
    assert_eq!(e.seen_by_server.ip(), std::net::IpAddr::V4(INET));
    let m = traffic::udp_echo(&lab.cli, SocketAddrV4::new(INET, DNS_PORT), b"out", Duration::from_secs(3)).unwrap();
    assert_eq!(m.seen_by_server.ip(), std::net::IpAddr::V4(moved), "masquerade to the new address");
    assert!(!show(&lab).contains("public_address"), "the public address still follows the WAN");
    assert!(ctl.output().contains("wan0's address is now 203.0.113.9 (was 203.0.113.1)"), "{}", ctl.output());
    let status = ctl.terminate();
    assert!(status.success());
    lab.down().unwrap();
}

/// A MAC address changed under a running gateway (`ip link set ... address`, a bond failing
/// over): the dataplane translates only frames sent to the interface's own address, so `run`
/// gives it the new one, and the forward carries traffic on the fast path again.
#[test]
fn run_follows_a_changed_mac_address() {
    let lab = lab();
    let mut ctl = Controller::start(&lab, &[]);
    lab.add_mappings().unwrap();
    lab.gw.ip(&["link", "set", "wan0", "address", "02:00:00:00:77:01"]).unwrap();
    // It says so, then applies the change as a plan line.
    wait_for(10, "run to follow wan0's MAC address", || {
        let out = ctl.output();
        out.contains("wan0's MAC address is now 02:00:00:00:77:01 (was ")
            && out.contains("~ wan0 MAC address: ")
            && out.contains("applied (")
    });
    // The internet host learns the new address as a neighbour does, once its entry is gone.
    lab.inet.ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    let fast = |lab: &Lab| lab.counter("fast_redirect").unwrap() + lab.counter("fast_tx").unwrap();
    let before = fast(&lab);
    let e = traffic::tcp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, 80), 64 * 1024, Duration::from_secs(3))
        .expect("the forward, to the new MAC address");
    assert_eq!(e.seen_by_server.ip(), std::net::IpAddr::V4(INET));
    assert!(fast(&lab) > before, "the forward's packets took the fast path");
    let status = ctl.terminate();
    assert!(status.success());
    lab.down().unwrap();
}

/// An interface renamed under a running gateway (`ip link set ... name`, udev): the programs
/// stay with the device, `run` says what a configuration file must now call it, and `show`
/// prints the new name.
#[test]
fn run_says_when_an_interface_is_renamed() {
    let lab = lab();
    let mut ctl = Controller::start(&lab, &[]);
    lab.add_mappings().unwrap();
    lab.gw.ip(&["link", "set", "wan0", "down"]).unwrap();
    lab.gw.ip(&["link", "set", "wan0", "name", "uplink"]).unwrap();
    lab.gw.ip(&["link", "set", "uplink", "up"]).unwrap();
    // Taking it down took its routes with it.
    lab.gw.ip(&["route", "add", "198.51.100.0/24", "dev", "uplink"]).unwrap();
    wait_for(10, "run to say wan0 was renamed", || {
        ctl.output().contains("wan0 (ifindex ") && ctl.output().contains("is now named uplink")
    });
    assert!(show(&lab).contains("interface = \"uplink\""), "{}", show(&lab));
    let e =
        traffic::udp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT), b"renamed", Duration::from_secs(3))
            .expect("the forward, on the renamed interface");
    assert_eq!(e.seen_by_server.ip(), std::net::IpAddr::V4(INET));
    let status = ctl.terminate();
    assert!(status.success());
    lab.gw.ip(&["link", "set", "uplink", "name", "wan0"]).ok();
    lab.down().unwrap();
}

/// An interface that goes away and comes back (a driver reloaded, a VLAN re-created): `run`
/// says so and attaches the dataplane again, forwards and settings as they were.
#[test]
fn run_attaches_again_when_an_interface_returns() {
    let lab = lab();
    let ctl = Controller::start(&lab, &["--udp-timeout", "77", "--log-format", "json"]);
    lab.add_mappings().unwrap();
    lab.gw.ip(&["link", "del", "lan0"]).unwrap();
    wait_for(10, "run to see lan0 go", || ctl.output().contains("lan0 (ifindex"));
    let sw = lab.sw.path().file_name().unwrap().to_str().unwrap().to_string();
    lab.gw.ip(&["link", "add", "lan0", "type", "veth", "peer", "name", "p-gw", "netns", &sw]).unwrap();
    lab.sw.ip(&["link", "set", "p-gw", "master", "br0", "up"]).unwrap();
    lab.gw.ip(&["addr", "add", "192.168.0.1/24", "dev", "lan0"]).unwrap();
    lab.gw.ip(&["link", "set", "lan0", "up"]).unwrap();
    let attached = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        ctl.output().contains("lan0 is back")
    });
    if !attached {
        let (status, out, err) = ctl.stop_with_stderr();
        panic!("run did not attach the dataplane again ({status}):\n{out}\n{err}");
    }
    let live = show(&lab);
    assert!(live.contains("udp = 77"), "{live}");
    // The forwards `map add` made (runtime ones, which `show` does not write) are back too.
    let list = lab.ctl(&["map", "list"]).unwrap();
    assert!(list.contains(&format!("{PUBLIC}:8080")) && list.matches("runtime").count() == 3, "{list}");
    let mut ok = false;
    wait_for(15, "the forward to carry traffic again", || {
        ok = traffic::udp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT), b"back", Duration::from_secs(1))
            .is_ok();
        ok
    });
    let (status, out, err) = ctl.stop_with_stderr();
    assert!(status.success(), "{status}: {out}\n{err}");
    // The log is JSON lines, one event each, with a time stamp and a level.
    for line in out.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(event["timestamp"].is_string() && event["level"].is_string() && event["message"].is_string(), "{line}");
    }
    lab.down().unwrap();
}

#[test]
fn flows_filter_delete_one_and_print_a_header() {
    let lab = lab();
    lab.up(&[]).unwrap();
    let fwd =
        traffic::udp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT), b"f", Duration::from_secs(3)).unwrap();
    let masq = traffic::udp_echo(&lab.cli, SocketAddrV4::new(INET, DNS_PORT), b"m", Duration::from_secs(3)).unwrap();
    let rows = |args: &[&str]| lab.ctl_json(&[&["flows"][..], args].concat()).unwrap();
    assert_eq!(rows(&[]).len(), 4);
    let m = rows(&["--kind", "masquerade"]);
    assert!(m.len() == 2 && m.iter().all(|r| r["kind"] == "masquerade"), "{m:?}");
    let d = rows(&["--proto", "udp", "--dst", "198.51.100.7:53"]);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d.iter().all(|r| r["kind"] == "masquerade"));
    let p = rows(&["--port", "5353"]);
    assert!(p.len() == 2 && p.iter().all(|r| r["kind"] == "forward"), "{p:?}");
    assert!(rows(&["--proto", "tcp"]).is_empty());
    assert_eq!(rows(&["--src", &format!("{INET}:{}", fwd.local.port()), "--kind", "forward"]).len(), 2);
    let masq_src = format!("{CLIENT}:{}", masq.local.port());
    let text = lab.ctl(&["flows"]).unwrap();
    let header: Vec<_> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&header[..4], ["proto", "direction", "src", "dst"], "{text}");
    // One flow goes, both directions, and the public port its LAN host held is free again.
    let public_port = match masq.seen_by_server {
        std::net::SocketAddr::V4(a) => a.port(),
        a => panic!("{a}"),
    };
    let out = lab.ctl(&["flows", "del", "udp", &masq_src, &format!("{INET}:{DNS_PORT}")]).unwrap();
    assert!(out.contains("deleted udp flow") && out.contains("1 binding released"), "{out}");
    assert!(rows(&["--kind", "masquerade"]).is_empty());
    assert_eq!(rows(&[]).len(), 2, "the other flow stays");
    lab.ctl(&["map", "add", "udp", &format!("{PUBLIC}:{public_port}"), &format!("{SERVER}:53")]).unwrap();
    let e = fails(&lab, &["flows", "del", "udp", &masq_src, &format!("{INET}:{DNS_PORT}")]);
    assert!(e.contains("no udp flow"), "{e}");
    lab.down().unwrap();
}

/// Per flow direction and per forward, what was carried: a 256 KiB TCP echo through the
/// forward, most of it served by the fast path's flow cache (whose counts are kept per slot
/// and added into conntrack later), shows at least its bytes each way in `flows`, and in
/// `map list` for the forward; TSO super-packets count as their segments.
#[test]
fn flows_and_forwards_count_packets_and_bytes() {
    const BYTES: u64 = 256 * 1024;
    let lab = lab();
    lab.up(&[]).unwrap();
    let fast = |lab: &Lab| lab.counter("fast_redirect").unwrap() + lab.counter("fast_tx").unwrap();
    let before = fast(&lab);
    let echo = traffic::tcp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, 80), BYTES as usize, Duration::from_secs(3))
        .expect("the forward");
    assert!(fast(&lab) > before, "the echo took the fast path");
    let src = echo.local.to_string();
    let rows = lab.ctl_json(&["flows", "--src", &src]).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let mss_segments = BYTES / 1460;
    for r in &rows {
        let (packets, bytes) = (r["packets"].as_u64().unwrap(), r["bytes"].as_u64().unwrap());
        assert!((BYTES..2 * BYTES).contains(&bytes), "{r}");
        assert!(packets >= mss_segments && packets * 1500 >= bytes, "{r}");
    }
    let text = lab.ctl(&["flows", "--src", &src]).unwrap();
    assert!(text.lines().next().unwrap().contains("packets"), "{text}");
    let forwards = lab.ctl_json(&["map", "list"]).unwrap();
    let http = forwards.iter().find(|m| m["public"] == format!("{PUBLIC}:80")).expect("the forward");
    assert_eq!(http["flows"], 1, "{http}");
    let total: u64 = rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert!(http["bytes"].as_u64().unwrap() >= total, "{http} (flows: {total} bytes)");
    lab.down().unwrap();
}

/// `flows --watch` shows flows as they start (from the dataplane's ring buffer, through `run`)
/// and end, with why: expired (the sweep), flushed (a command), evicted (gone from the table
/// without either: here, removed behind everyone's back as the LRU would).
#[test]
fn flows_watch_shows_flows_start_and_end_with_why() {
    let lab = lab();
    let run = Controller::start(&lab, &["--udp-timeout", "2", "--log-flows"]);
    lab.add_mappings().unwrap();
    let watcher = Controller::spawn_any(&lab, &["flows", "--watch", "--json"]);
    let events = || -> Vec<serde_json::Value> {
        watcher.output().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
    };
    let saw = |event: &str, reason: Option<&str>, src: &str| {
        events().iter().any(|e| e["event"] == event && e["src"] == src && reason.is_none_or(|r| e["reason"] == r))
    };
    // New: a masquerade flow (new ones until the watcher, which connects on its own time,
    // sees one).
    let mut src = String::new();
    wait_for(10, "a new flow on the watch", || {
        let m = traffic::udp_echo(&lab.cli, SocketAddrV4::new(INET, DNS_PORT), b"w", Duration::from_secs(2)).unwrap();
        src = format!("{CLIENT}:{}", m.local.port());
        saw("new", None, &src)
    });
    let new = events().into_iter().find(|e| e["event"] == "new" && e["src"] == src.as_str()).unwrap();
    assert_eq!((new["proto"].as_str(), new["kind"].as_str()), (Some("udp"), Some("masquerade")), "{new}");
    assert_eq!(new["translated_src"].as_str().unwrap().split(':').next(), Some("203.0.113.1"));
    // Expired: idle past the 2 s UDP timeout.
    wait_for(15, "the flow to expire on the watch", || saw("end", Some("expired"), &src));
    // Flushed: `flows del` of a forward's flow.
    let f =
        traffic::udp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT), b"f", Duration::from_secs(3)).unwrap();
    let fsrc = format!("{INET}:{}", f.local.port());
    wait_for(10, "the forward's flow on the watch", || saw("new", None, &fsrc));
    lab.ctl(&["flows", "del", "udp", &fsrc, &format!("{PUBLIC}:{PUBLIC_DNS_PORT}")]).unwrap();
    wait_for(10, "the deleted flow on the watch", || saw("end", Some("flushed"), &fsrc));
    // Evicted: both directions gone from conntrack without a command saying so.
    let e =
        traffic::udp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT), b"e", Duration::from_secs(3)).unwrap();
    let esrc = format!("{INET}:{}", e.local.port());
    // Seen new by run (the watcher heard it from run), then gone behind its back.
    wait_for(10, "the third flow on the watch", || saw("new", None, &esrc));
    let mut maps = ::hairpin_ctl::dataplane::PinDir::new(&lab.pin_dir).open().unwrap();
    let (flows, _) = ::hairpin_ctl::conntrack::snapshot(&maps).unwrap();
    let flow = flows.iter().find(|fl| format!("{}", ::hairpin_ctl::output::src(&fl.orig_key)) == esrc).unwrap();
    maps.remove_entries(flow.entries()).unwrap();
    wait_for(10, "the evicted flow on the watch", || saw("end", Some("evicted"), &esrc));
    let (status, out) = run.stop();
    assert!(status.success(), "{out}");
    assert!(out.contains(&format!("flow new   udp   masquerade {src}")), "--log-flows: {out}");
    drop(watcher);
    lab.down().unwrap();
}

/// Under systemd (`Type=notify`), `run` says READY once the dataplane is attached and STOPPING
/// on its way out, on the socket systemd names.
#[test]
fn run_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let lab = lab();
    let path = std::env::temp_dir().join(format!("{}-notify", lab.prefix));
    let _ = std::fs::remove_file(&path);
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let args = ["run", "--lan", "lan0", "--wan", "wan0"];
    let ctl = Controller::spawn_env(&lab, &args, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let recv = |buf: &mut [u8]| loop {
        match sock.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    };
    let n = recv(&mut buf).expect("READY from run");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    assert!(lab.pin_dir.join("maps/HP_CONFIG").exists(), "READY before the dataplane was up");
    let (status, out) = ctl.stop();
    assert!(status.success(), "{out}");
    let n = recv(&mut buf).expect("STOPPING from run");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    std::fs::remove_file(&path).unwrap();
    lab.down().unwrap();
}

/// `contrib/hairpin.service` as shipped: it verifies, systemd rates its exposure 4.0 or below
/// (`systemd-analyze security`: capability bounding set, address families, system-call filter,
/// protected paths), and the capabilities it grants are enough: `up` and `map add` under that
/// bounding set attach, pin and forward. It runs no `down` when the service stops, so a
/// restart adopts the dataplane with its flows.
#[test]
fn the_service_unit_is_hardened_and_its_capabilities_suffice() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/hairpin.service");
    let unit = std::fs::read_to_string(&shipped).unwrap();
    assert!(!unit.lines().any(|l| l.starts_with("ExecStop")), "a stop must leave the dataplane forwarding");
    let dir = std::env::temp_dir().join(format!("hairpin-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hairpin.service");
    std::fs::write(&path, unit.replace("/usr/local/sbin/hairpin-ctl", hairpin_ctl().to_str().unwrap())).unwrap();
    let analyze = |args: &[&str]| {
        let out =
            std::process::Command::new("systemd-analyze").args(args).arg(&path).output().expect("systemd-analyze");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = analyze(&["verify", "--man=no"]);
    assert!(ok && !out.contains("hairpin.service"), "systemd-analyze verify: {out}");
    let (ok, out) = analyze(&["security", "--offline=yes", "--no-pager"]);
    let exposure: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for hairpin.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(ok && exposure <= 4.0, "exposure {exposure}:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);

    // The bounding set the unit grants, for `up` and `map add` run as the service would be.
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("-all,{}", caps.join(","));
    let lab = lab();
    let with_caps = |bounding: &str, args: &[&str]| {
        let mut c = lab.gw.command("setpriv");
        c.args(["--bounding-set", bounding, "--"]).arg(hairpin_ctl()).arg("--pin-dir").arg(&lab.pin_dir).args(args);
        hairpin_lab::netns::run(&mut c)
    };
    // The bounding set is what limits it: with less, `up` fails (and leaves nothing behind).
    let up = ["up", "--lan", "lan0", "--wan", "wan0"];
    assert!(with_caps("-all,+net_admin", &up).is_err(), "up loaded programs without CAP_BPF");
    let as_service =
        |args: &[&str]| with_caps(&bounding, args).unwrap_or_else(|e| panic!("{args:?} with only {bounding}: {e:#}"));
    as_service(&up);
    as_service(&["map", "add", "udp", &format!("{PUBLIC}:{PUBLIC_DNS_PORT}"), &format!("{SERVER}:{DNS_PORT}")]);
    let to = SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT);
    let echo = traffic::udp_echo(&lab.inet, to, b"as a service", Duration::from_secs(3)).expect("the forward");
    assert_eq!(echo.seen_by_server.ip(), std::net::IpAddr::V4(INET));
}
