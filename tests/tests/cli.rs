//! hairpin-ctl as an operator meets it, in a lab gateway namespace: bad arguments and wrong
//! states give one clear line and a non-zero exit, and change nothing.

use hairpin_lab::Lab;
use hairpin_tests::{hairpin_ctl, require_root};

fn lab() -> Lab {
    require_root();
    Lab::new(hairpin_ctl()).expect("build the lab")
}

/// Runs hairpin-ctl expecting failure; returns stderr, which must be one `error:` line.
fn fails(lab: &Lab, args: &[&str]) -> String {
    let out = lab.ctl_output(args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "hairpin-ctl {args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout on failure");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
    stderr
}

fn mappings(lab: &Lab) -> Vec<serde_json::Value> {
    lab.ctl_json(&["map", "list"]).unwrap()
}

#[test]
fn commands_need_the_dataplane_up() {
    let lab = lab();
    for args in [
        &["map", "add", "tcp", "203.0.113.1:80", "192.168.0.2:80"][..],
        &["map", "list"],
        &["stats"],
        &["flows"],
        &["show"],
    ] {
        let e = fails(&lab, args);
        assert!(e.contains("hairpin is not up"), "{args:?}: {e}");
    }
    // A failed up leaves nothing behind.
    let e = fails(&lab, &["up", "--lan", "lan0", "--wan", "nosuch0"]);
    assert!(e.contains("nosuch0"), "{e}");
    assert!(!lab.pin_dir.exists(), "a failed up left pins");
    let e = fails(&lab, &["up", "--lan", "lan0", "--wan", "lan0"]);
    assert!(e.contains("also the LAN interface: they must be different"), "{e}");
    assert!(!lab.gw.ip(&["link", "show", "lan0"]).unwrap().contains("xdp"), "a failed up left XDP attached");
    // A pin directory outside bpffs is refused before anything is loaded or attached.
    let not_bpffs = std::env::temp_dir().join(format!("hairpin-not-bpffs-{}", std::process::id()));
    let out = lab
        .gw
        .command(hairpin_ctl().to_str().unwrap())
        .args(["--pin-dir", not_bpffs.to_str().unwrap(), "up", "--lan", "lan0", "--wan", "wan0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not on a bpf filesystem"), "{stderr}");
    assert!(!not_bpffs.exists());
    assert!(!lab.gw.ip(&["link", "show", "lan0"]).unwrap().contains("xdp"), "the refused up attached XDP");
}

#[test]
fn bad_mappings_are_refused_and_change_nothing() {
    let lab = lab();
    lab.ctl(&["up", "--lan", "lan0", "--wan", "wan0"]).unwrap();
    lab.ctl(&["map", "add", "tcp", "203.0.113.1:80", "192.168.0.2:80"]).unwrap();
    let before = mappings(&lab);
    assert_eq!(
        before,
        [serde_json::json!({
            "proto": "tcp",
            "public": "203.0.113.1:80",
            "private": "192.168.0.2:80",
            "origin": "runtime",
            "flows": 0,
            "packets": 0,
            "bytes": 0
        })]
    );

    for (args, needle) in [
        (&["map", "add", "tcp", "203.0.113.1:80", "192.168.0.9:80"][..], "already exists"),
        (&["map", "add", "tcp", "203.0.113.1:0", "192.168.0.2:80"], "port 0"),
        (&["map", "add", "tcp", "203.0.113.1:81", "192.168.0.2:0"], "port 0"),
        (&["map", "add", "icmp", "203.0.113.1:81", "192.168.0.2:80"], "invalid value 'icmp'"),
        (&["map", "add", "tcp", "203.0.113.1:81", "192.168.0.256:80"], "not an IPv4 ADDR:PORT"),
        (&["map", "add", "tcp", "198.51.100.1:81", "192.168.0.2:80"], "not this gateway's public address"),
        (&["map", "add", "tcp", "203.0.113.1:81", "192.168.0.1:80"], "gateway's own LAN address"),
        (&["map", "del", "udp", "203.0.113.1:80"], "no forward udp 203.0.113.1:80"),
        (&["up", "--lan", "lan0", "--wan", "wan0"], "already up"),
    ] {
        let out = lab.ctl_output(args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(mappings(&lab), before, "{args:?} changed the mappings");
    }
    // The dataplane survived the refused second `up`: lan0's ingress (TC on a veth) is still
    // pinned.
    assert!(lab.pin_dir.join("links/tc_ingress_lan").exists());

    lab.ctl(&["map", "del", "tcp", "203.0.113.1:80"]).unwrap();
    assert!(mappings(&lab).is_empty());
    // ctl_json fails unless the output is a JSON array.
    assert_eq!(lab.stats().unwrap().len(), hairpin_common::Reason::ALL.len());
    assert!(lab.flows().unwrap().is_empty());
    lab.ctl(&["down"]).unwrap();
    assert!(!lab.pin_dir.exists());
    assert!(!lab.gw.ip(&["link", "show", "lan0"]).unwrap().contains("xdp"), "down left XDP attached");
}

#[test]
fn help_describes_every_command() {
    let lab = lab();
    let top = lab.ctl(&["--help"]).unwrap();
    for cmd in ["up", "down", "map", "stats", "flows", "--pin-dir", "HAIRPIN_PIN_DIR"] {
        assert!(top.contains(cmd), "--help lacks {cmd}:\n{top}");
    }
    let up = lab.ctl(&["up", "--help"]).unwrap();
    for flag in ["--lan", "--wan", "--public-ip", "--lan-ip", "--no-hairpin", "--xdp-mode"] {
        assert!(up.contains(flag), "up --help lacks {flag}");
    }
    assert!(lab.ctl(&["map", "add", "--help"]).unwrap().contains("PUBLIC_IP:PORT"));
    // Man pages and completions come from the same definition.
    let dir = std::env::temp_dir().join(format!("{}-man", lab.prefix));
    let out = lab.ctl(&["man", dir.to_str().unwrap()]).unwrap();
    assert!(out.contains("man pages (section 8)"), "{out}");
    for page in ["hairpin-ctl.8", "hairpin-ctl-apply.8", "hairpin-ctl-run.8", "hairpin-ctl-map-add.8"] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}: {text}");
    }
    assert!(std::fs::read_to_string(dir.join("hairpin-ctl-apply.8")).unwrap().contains("dry"));
    std::fs::remove_dir_all(&dir).unwrap();
    let bash = lab.ctl(&["completions", "bash"]).unwrap();
    assert!(bash.contains("hairpin-ctl") && bash.contains("--dry-run"), "{bash}");
}
