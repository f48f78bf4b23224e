//! Lab tests: the four cases of the hairpin story in network namespaces, with real TCP and UDP
//! sockets, through the real hairpin-ctl binary. Each test builds its own uniquely named lab
//! and tears it down on drop, pass or fail.

use std::{
    net::{IpAddr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use hairpin_common::flow_cache::GEN_CONTROLLER;
use hairpin_lab::{
    Lab,
    probe::{self, Answer, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, ICMP_TIME_EXCEEDED},
    scenario::{self, HAIRPIN_BYTES},
    topology::{ALT_HTTP_PORT, CLIENT, DNS_PORT, FAR, GW_LAN, HTTP_PORT, INET, PUBLIC, PUBLIC_DNS_PORT, Peers, SERVER},
    traffic,
};
use hairpin_tests::{
    controller::{Controller, wait_for},
    hairpin_ctl, require_root,
};

/// The plain topology: nothing on the far ends of the gateway's veths, hosts with their
/// default offloads.
fn lab() -> Lab {
    lab_with(Peers::Plain)
}

fn lab_with(peers: Peers) -> Lab {
    require_root();
    let mut lab = Lab::with_peers(hairpin_ctl(), peers).expect("build the lab");
    lab.start_servers().expect("start the LAN server");
    lab
}

/// Proof that the NAT was hairpin's: the gateway has no nftables/iptables rules at all.
fn assert_no_kernel_nat(lab: &Lab) {
    let rules = lab.kernel_nat_rules().expect("list kernel rules");
    assert!(rules.trim().is_empty(), "the gateway has kernel rules:\n{rules}");
}

/// Default flags on the plain topology: veths, so `up` puts ingress in TC, fast path on.
#[test]
fn port_forward_and_hairpin_over_tcp_and_udp() {
    forward_and_hairpin(Peers::Plain, &[]);
}

/// The same with every packet left to the kernel to forward.
#[test]
fn port_forward_and_hairpin_on_the_slow_path() {
    forward_and_hairpin(Peers::Plain, &["--no-fast-path"]);
}

/// The same with the fast path looking every packet up in conntrack.
#[test]
fn port_forward_and_hairpin_without_flow_cache() {
    forward_and_hairpin(Peers::Plain, &["--no-flow-cache"]);
}

/// The same with ingress as TC programs chosen explicitly (for NICs without XDP).
#[test]
fn port_forward_and_hairpin_with_tc_ingress() {
    forward_and_hairpin(Peers::Plain, &["--mode", "tc"]);
}

/// TC programs as netlink filters (what kernels without TCX get; asked for here): the same
/// translation, fast path included; `down` removes hairpin's filters, by program name, and
/// leaves another program's filter on the same hook alone.
#[test]
fn tc_programs_as_netlink_filters_and_down_removes_only_them() {
    let lab = lab();
    lab.gw.exec("tc", &["qdisc", "add", "dev", "lan0", "clsact"]).unwrap();
    let foreign = ["filter", "add", "dev", "lan0", "ingress", "pref", "60000", "protocol", "ip", "u32"];
    lab.gw.exec("tc", &[&foreign[..], &["match", "u32", "0", "0", "classid", "1:1"]].concat()).unwrap();
    let up = lab.up_output(&["--tc-attach", "netlink"]).expect("hairpin-ctl up --tc-attach netlink");
    assert!(up.contains("tc programs: netlink filters (--tc-attach netlink)"), "{up}");
    assert!(!lab.pin_dir.join("links/tc_ingress_lan").exists(), "a netlink filter has no link to pin");
    assert_eq!(lab.stats_json().unwrap()["tc_attach"], "netlink");
    let filters = |dev: &str, dir: &str| lab.gw.exec("tc", &["filter", "show", "dev", dev, dir]).unwrap();
    assert!(filters("lan0", "ingress").contains("tc_ingress_lan"), "{}", filters("lan0", "ingress"));
    assert!(filters("wan0", "egress").contains("tc_egress_wan"), "{}", filters("wan0", "egress"));
    // `up` has exited: the filters and their programs stay.
    assert_eq!(scenario::port_forward(&lab, HTTP_PORT).unwrap().seen_by_server.ip(), IpAddr::V4(INET));
    let hp = scenario::hairpin_tcp(&lab, HTTP_PORT, HAIRPIN_BYTES).expect("hairpin");
    assert_eq!(hp.seen_by_server.ip(), IpAddr::V4(GW_LAN));
    assert!(fast_packets(&lab) > 0, "the fast path ran in the filters");
    lab.down().unwrap();
    for (dev, dir) in [("lan0", "ingress"), ("lan0", "egress"), ("wan0", "ingress"), ("wan0", "egress")] {
        let left = filters(dev, dir);
        assert!(!left.contains("tc_"), "down left a filter on {dev} {dir}: {left}");
    }
    assert!(filters("lan0", "ingress").contains("u32"), "down removed another program's filter");
}

/// Peers with GRO on: the veths now claim to take XDP frames (XDP_TX frames would wait in
/// the peer's ring), and default flags must still not send any into them.
#[test]
fn port_forward_and_hairpin_with_gro_on_the_peers() {
    forward_and_hairpin(Peers::Gro, &[]);
}

/// A LAN that is a macvlan network (as a container's): lan0 is a macvlan child, without
/// native XDP, so TC; hairpinned packets go back out of it with `bpf_redirect`, and the LAN
/// hosts' frames reach it with checksums left to offload, switched by the macvlan driver.
#[test]
fn port_forward_and_hairpin_on_a_macvlan_lan() {
    forward_and_hairpin(Peers::MacvlanLan, &[]);
}

/// Peers that run XDP, and native XDP asked for on the gateway's veths: the XDP fast path
/// redirects and sends back into them (hosts' checksums are left to offload, which only the
/// receiving namespaces' own stacks check, so this is what a benchmark harness may do).
#[test]
fn port_forward_and_hairpin_in_native_xdp_with_xdp_peers() {
    forward_and_hairpin(Peers::Xdp, &["--xdp-mode", "native"]);
}

/// Known flows' packets that took the fast path (redirected or sent back by XDP).
fn fast_packets(lab: &Lab) -> u64 {
    lab.counter("fast_redirect").unwrap() + lab.counter("fast_tx").unwrap()
}

/// The flow cache's (enabled, hits, misses) from `stats --json`.
fn flow_cache(lab: &Lab) -> (bool, u64, u64) {
    let s = lab.stats_json().unwrap();
    let get = |k: &str| s["flow_cache"][k].as_u64().unwrap_or_else(|| panic!("stats --json: no flow_cache.{k}: {s}"));
    let enabled = s["flow_cache"]["enabled"].as_bool().unwrap_or_else(|| panic!("stats --json: no flow_cache.enabled"));
    (enabled, get("hits"), get("misses"))
}

fn forward_and_hairpin(peers: Peers, up_args: &[&str]) {
    let fast = !up_args.contains(&"--no-fast-path");
    let cache = fast && !up_args.contains(&"--no-flow-cache");
    let xdp = up_args.contains(&"--xdp-mode");
    let lab = lab_with(peers);
    let up = lab.up_output(up_args).expect("hairpin-ctl up");
    // veths: TC unless XDP is asked for, and `up` says so and why.
    let path = if fast { "fast path" } else { "slow path" };
    for iface in ["lan0", "wan0"] {
        let line = if xdp { format!("{iface}: {path} xdp (--xdp-mode given") } else { format!("{iface}: {path} tc (") };
        assert!(up.contains(&line), "up printed no '{line}': {up}");
        let links = lab.gw.ip(&["link", "show", iface]).unwrap();
        assert_eq!(links.contains("xdp"), xdp, "{iface}: {links}");
    }
    // stats reports the same placement, with the line up printed.
    let stats = lab.stats_json().unwrap();
    // TCX where the kernel has it (6.6 on), else netlink filters: stats says what up said.
    let tc = if up.contains("tc programs: tcx links") { "tcx" } else { "netlink" };
    assert_eq!(stats["tc_attach"], tc, "{up}");
    let rows = stats["interfaces"].as_array().unwrap_or_else(|| panic!("stats --json: no interfaces: {stats:#}"));
    assert_eq!(rows.len(), 2, "{stats:#}");
    for row in rows {
        assert_eq!(row["ingress"], if xdp { "xdp" } else { "tc" }, "{row:#}");
        assert_eq!(row["fast_path"], fast, "{row:#}");
        assert!(up.contains(row["summary"].as_str().unwrap()), "{row:#} vs {up}");
    }
    assert_no_kernel_nat(&lab);

    // Case 1: the first packet of the flow must resolve every neighbour itself.
    lab.flush_neighbours().unwrap();
    let wan = scenario::port_forward(&lab, HTTP_PORT).expect("case 1: port forward");
    assert_eq!(wan.seen_by_server.ip(), IpAddr::V4(INET));

    // Case 2: 1 MiB each way, byte for byte, and the server sees the gateway.
    lab.flush_neighbours().unwrap();
    let before = lab.counter("egress_flow").unwrap() + fast_packets(&lab);
    let hp = scenario::hairpin_tcp(&lab, HTTP_PORT, HAIRPIN_BYTES).expect("case 2: hairpin");
    assert_eq!(hp.bytes, 1 << 20);
    assert_eq!(hp.seen_by_server.ip(), IpAddr::V4(GW_LAN));
    // Port preservation: the gateway kept the client's port when it was free.
    assert_eq!(hp.seen_by_server.port(), hp.local.port());
    // Every translated packet is counted once: by egress on the slow path, at ingress on the fast.
    let moved = lab.counter("egress_flow").unwrap() + fast_packets(&lab) - before;
    assert!(moved > 2 * (HAIRPIN_BYTES as u64 / 65536), "only {moved} packets translated for a 1 MiB echo");
    if fast {
        assert!(lab.counter("fast_tx").unwrap() > 0 && lab.counter("fast_redirect").unwrap() > 0);
        // A copy per flow direction and CPU, refreshed every few seconds and by FINs: most of a
        // 1 MiB echo's packets come from the cache.
        let (enabled, hits, misses) = flow_cache(&lab);
        assert_eq!(enabled, cache, "stats says whether the flow cache is on");
        match cache {
            true => assert!(hits > misses, "flow cache: {hits} hits, {misses} misses"),
            false => assert_eq!(hits, 0, "--no-flow-cache: {misses} packets looked up, yet {hits} hits"),
        }
    } else {
        assert_eq!(fast_packets(&lab), 0, "--no-fast-path still took the fast path");
    }

    // The gateway's own traffic passes untouched, including large segments: its veth does TSO,
    // so egress sees GSO skbs whose IPv4 total length exceeds their linear part.
    let own =
        traffic::tcp_echo(&lab.gw, SocketAddrV4::new(SERVER, HTTP_PORT), HAIRPIN_BYTES, scenario::CONNECT_TIMEOUT)
            .expect("the gateway's own connection to the server");
    assert_eq!(own.seen_by_server.ip(), IpAddr::V4(GW_LAN));
    assert_eq!(own.seen_by_server.port(), own.local.port(), "the gateway's own source port was rewritten");

    // Case 4: a mapping that changes the port, and UDP both ways.
    assert_eq!(scenario::port_forward(&lab, ALT_HTTP_PORT).unwrap().seen_by_server.ip(), IpAddr::V4(INET));
    assert_eq!(scenario::hairpin_tcp(&lab, ALT_HTTP_PORT, 4096).unwrap().seen_by_server.ip(), IpAddr::V4(GW_LAN));
    lab.flush_neighbours().unwrap();
    scenario::udp_forward(&lab.inet, INET).expect("case 4: udp from the internet");
    lab.flush_neighbours().unwrap();
    scenario::udp_forward(&lab.cli, GW_LAN).expect("case 4: udp hairpin");

    // Masquerade: the LAN client reaches the internet host, which sees the public address.
    lab.flush_neighbours().unwrap();
    let (tcp, udp) = scenario::masquerade(&lab).expect("masquerade");
    assert_eq!(tcp.seen_by_server.port(), tcp.local.port(), "the client's port was free: preserved");
    assert_eq!(udp.seen_by_server.ip(), IpAddr::V4(PUBLIC));
    // Unsolicited traffic from the internet goes to the gateway's own stack (which refuses it).
    let before = lab.counter("pass_no_mapping").unwrap();
    let e = traffic::tcp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, 9), 1, scenario::CONNECT_TIMEOUT).unwrap_err();
    assert_eq!(traffic::io_kind(&e), Some(std::io::ErrorKind::ConnectionRefused), "{e:#}");
    assert!(lab.counter("pass_no_mapping").unwrap() > before);

    // An internet host that routes the LAN prefix at the gateway still cannot reach a LAN host
    // directly: the gateway drops it.
    lab.inet.ip(&["route", "add", "192.168.0.0/24", "via", "203.0.113.1"]).unwrap();
    let before = lab.counter("drop_wan_to_lan").unwrap();
    let direct = traffic::tcp_echo(&lab.inet, SocketAddrV4::new(SERVER, HTTP_PORT), 1, Duration::from_secs(2));
    assert!(direct.is_err(), "the internet reached a LAN host directly");
    assert!(lab.counter("drop_wan_to_lan").unwrap() > before);
    lab.inet.ip(&["route", "del", "192.168.0.0/24"]).unwrap();

    // Every flow is in conntrack, both directions, and the counters moved.
    let flows = lab.flows().unwrap();
    assert_eq!(flows.len(), 2 * 8, "eight flows, two entries each: {flows:#?}");
    assert_eq!(flows.iter().filter(|f| f["hairpin"] == true).count(), 2 * 3);
    assert_eq!(flows.iter().filter(|f| f["masquerade"] == true).count(), 2 * 2);
    assert!(lab.counter("ingress_new_flow").unwrap() >= 6);
    assert_eq!(lab.counter("drop_malformed").unwrap(), 0);
    assert_no_kernel_nat(&lab);

    // Deleting a mapping removes its flows (both directions) and stops the forward at once.
    let out = lab.ctl(&["map", "del", "tcp", "203.0.113.1:8080"]).unwrap();
    assert!(out.contains("2 flows removed"), "{out}");
    let flows = lab.flows().unwrap();
    assert_eq!(flows.len(), 2 * 6);
    assert!(flows.iter().all(|f| f["dst"] != "203.0.113.1:8080" && f["translated_src"] != "203.0.113.1:8080"));
    let refused = scenario::port_forward(&lab, ALT_HTTP_PORT).expect_err("the deleted forward still works");
    assert_eq!(traffic::io_kind(&refused), Some(std::io::ErrorKind::ConnectionRefused), "{refused:#}");
    lab.down().unwrap();
    assert!(!lab.pin_dir.exists(), "down removed the pins");
}

/// The gateway on NICs with a real driver (virtio-net, cabled by qemu in `cargo xtask
/// vmtest`'s guests) and default flags: native XDP on both, and both take XDP frames, which
/// virtio-net says only once an XDP program is attached to it (`up` asks again after
/// attaching). The XDP fast path then carries a forward, a 1 MiB hairpin echo and a 1 MiB
/// masquerade echo.
#[test]
#[ignore = "needs the VM's NICs: `cargo xtask vmtest` runs it"]
fn the_gateway_on_virtio_nics_takes_the_xdp_fast_path() {
    let lab = lab_with(Peers::Nics);
    let up = lab.up_output(&[]).expect("hairpin-ctl up");
    for iface in ["lan0", "wan0"] {
        let line = format!("{iface}: fast path xdp (native XDP in the driver)");
        assert!(up.contains(&line), "up printed no '{line}': {up}");
    }
    assert_eq!(takes_xdp_frames(&lab), [true, true], "{up}");
    assert_eq!(scenario::port_forward(&lab, HTTP_PORT).expect("port forward").seen_by_server.ip(), IpAddr::V4(INET));
    let hp = scenario::hairpin_tcp(&lab, HTTP_PORT, HAIRPIN_BYTES).expect("hairpin");
    assert_eq!((hp.bytes, hp.seen_by_server.ip()), (1 << 20, IpAddr::V4(GW_LAN)));
    let masq =
        traffic::tcp_echo(&lab.cli, SocketAddrV4::new(INET, HTTP_PORT), HAIRPIN_BYTES, scenario::CONNECT_TIMEOUT)
            .expect("masquerade echo");
    assert_eq!((masq.bytes, masq.seen_by_server.ip()), (1 << 20, IpAddr::V4(PUBLIC)));
    let (tx, redirect) = (lab.counter("fast_tx").unwrap(), lab.counter("fast_redirect").unwrap());
    assert!(tx > 100 && redirect > 100, "the XDP fast path sent {tx} frames back out and redirected {redirect}");
    assert_eq!(refused(&lab), [0, 0]);
    assert_eq!(lab.counter("drop_malformed").unwrap(), 0);
    lab.down().unwrap();
}

/// Bulk TCP with the hosts' default offloads (TSO super-packets, checksums left to offload):
/// 64 MiB each way through the port-forward, the masquerade and the hairpin, byte for byte, on
/// the fast path, and no receiver ever sees a bad checksum.
#[test]
fn bulk_tcp_with_default_offloads_arrives_intact() {
    const BULK: usize = 64 << 20;
    let lab = lab();
    lab.up(&[]).expect("hairpin-ctl up");
    let before = fast_packets(&lab);
    let t = Duration::from_secs(5);
    let runs = [
        ("port-forward", &lab.inet, SocketAddrV4::new(PUBLIC, HTTP_PORT)),
        ("masquerade", &lab.cli, SocketAddrV4::new(INET, HTTP_PORT)),
        ("hairpin", &lab.cli, SocketAddrV4::new(PUBLIC, HTTP_PORT)),
    ];
    for (what, from, to) in runs {
        let echo = traffic::tcp_echo(from, to, BULK, t).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(echo.bytes, BULK, "{what}");
    }
    assert!(fast_packets(&lab) > before, "the fast path carried none of it");
    for (name, ns) in [("server", &lab.srv), ("client", &lab.cli), ("internet host", &lab.inet)] {
        assert_eq!(ns.snmp("Tcp", "InCsumErrors").unwrap(), 0, "{name} received TCP with bad checksums");
    }
    assert_eq!(lab.counter("drop_malformed").unwrap(), 0);
}

/// Tagged frames from the internet host, aimed at a LAN host through the gateway's MAC: with a
/// priority tag (VLAN 0, which the gateway's kernel delivers on wan0 as untagged) they are
/// checked like untagged ones and dropped; tagged for a VLAN (which the gateway does not have)
/// they are left to the kernel, which drops them. Either way no LAN host hears of them. TC
/// (the plain topology) sees the tag already taken out of the frame, XDP sees it in the frame.
#[test]
fn vlan_tagged_frames_from_the_wan_do_not_reach_the_lan() {
    vlan_tagged_frames(Peers::Plain, &[]);
    vlan_tagged_frames(Peers::Xdp, &["--xdp-mode", "native"]);
}

fn vlan_tagged_frames(peers: Peers, up_args: &[&str]) {
    use hairpin_tests::frame::{Pkt, TCP_SYN};
    let lab = lab_with(peers);
    lab.up(up_args).expect("hairpin-ctl up");
    let (gw_mac, inet_mac) = (mac(&lab.gw, "wan0"), mac(&lab.inet, "eth0"));
    for (tci, counter) in [(0x2000, "drop_wan_to_lan"), (100, "pass_vlan")] {
        let mut syn = Pkt::tcp("198.51.100.7:41000", "192.168.0.2:80").flags(TCP_SYN).vlan(tci);
        syn.macs = (gw_mac, inet_mac);
        let (before, server_before) = (lab.counter(counter).unwrap(), lab.srv.snmp("Tcp", "InSegs").unwrap());
        probe::send_frame(&lab.inet, "eth0", &syn.build()).unwrap();
        wait_for(5, &format!("{counter} to count the VLAN {tci:#x} frame"), || lab.counter(counter).unwrap() > before);
        // Decided: had it been forwarded, it would be at the server within this bound.
        std::thread::sleep(Duration::from_millis(300));
        let after = lab.srv.snmp("Tcp", "InSegs").unwrap();
        assert_eq!(after, server_before, "{up_args:?}: VLAN {tci:#x} reached the server");
    }
}

/// On veths whose peers are in other namespaces (every plain topology), the TC fast path sends
/// straight into the peer's ingress; a queueing discipline on the device (a shaper) keeps the
/// packets for it going through it, and `run` notices one removed or added later.
#[test]
fn tc_fast_path_enters_veth_peers_unless_a_qdisc_is_in_the_way() {
    let lab = lab();
    lab.gw.exec("tc", &["qdisc", "add", "dev", "wan0", "root", "pfifo"]).unwrap();
    let mut ctl = Controller::start(&lab, &[]);
    lab.add_mappings().unwrap();
    let out = ctl.output();
    assert!(out.contains("lan0: fast path tc (") && out.contains("; TC sends into its peer directly)"), "{out}");
    let wan_line = out.lines().find(|l| l.contains("wan0: fast path tc (")).unwrap_or_else(|| panic!("{out}"));
    assert!(!wan_line.contains("its peer directly"), "{wan_line}");
    let sent = |lab: &Lab| -> u64 {
        let s = lab.gw.exec("tc", &["-s", "qdisc", "show", "dev", "wan0"]).unwrap();
        let after = s.split("Sent ").nth(1).unwrap_or_else(|| panic!("{s}"));
        after.split_whitespace().nth(2).unwrap().parse().unwrap_or_else(|_| panic!("{s}"))
    };
    let (queued, fast) = (sent(&lab), fast_packets(&lab));
    let echo = traffic::tcp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, HTTP_PORT), 256 * 1024, Duration::from_secs(3))
        .expect("through the forward");
    assert_eq!(echo.seen_by_server.ip(), IpAddr::V4(INET));
    // The server's replies went out of wan0 on the fast path, through its qdisc.
    let (queued, fast) = (sent(&lab) - queued, fast_packets(&lab) - fast);
    assert!(fast > 0 && queued >= 20, "fast path packets {fast}, through wan0's qdisc {queued}");
    lab.gw.exec("tc", &["qdisc", "del", "dev", "wan0", "root"]).unwrap();
    wait_for(10, "run to see wan0's qdisc gone", || {
        ctl.output().contains("wan0: no queueing discipline of its own now")
    });
    let echo = traffic::tcp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, HTTP_PORT), 256 * 1024, Duration::from_secs(3))
        .expect("through the forward, into wan0's peer directly");
    assert_eq!(echo.seen_by_server.ip(), IpAddr::V4(INET));
    lab.gw.exec("tc", &["qdisc", "add", "dev", "wan0", "root", "pfifo"]).unwrap();
    wait_for(10, "run to see wan0's qdisc back", || ctl.output().contains("wan0: it has a queueing discipline now"));
    assert!(ctl.terminate().success());
}

/// Frames on the gateway's wire that are addressed to another host's MAC (a switch flooding,
/// a bridge, a promiscuous NIC) are none of its business: the kernel forwards only frames sent
/// to its own MAC. The dataplane neither translates, forwards nor makes flows for them, in
/// every ingress placement (TC by default, generic XDP, native XDP), and sends nothing back:
/// all the internet host receives carries the gateway's own MAC.
#[test]
fn frames_for_another_mac_are_left_to_the_kernel() {
    for (peers, up_args) in [
        (Peers::Plain, &[][..]),
        (Peers::Plain, &["--xdp-mode", "generic"][..]),
        (Peers::Xdp, &["--xdp-mode", "native"][..]),
    ] {
        frames_for_another_mac(peers, up_args);
    }
}

fn frames_for_another_mac(peers: Peers, up_args: &[&str]) {
    use hairpin_tests::frame::{Pkt, TCP_ACK, TCP_SYN};
    const OTHER: [u8; 6] = [0x02, 0x42, 0, 0, 0, 0x99];
    let lab = lab_with(peers);
    lab.up(up_args).expect("hairpin-ctl up");
    let (gw_mac, inet_mac) = (mac(&lab.gw, "wan0"), mac(&lab.inet, "eth0"));
    let capture = probe::Capture::open(&lab.inet, "eth0").unwrap();
    let (segs, datagrams) = (lab.srv.snmp("Tcp", "InSegs").unwrap(), lab.srv.snmp("Udp", "InDatagrams").unwrap());
    let before = lab.counter("pass_other_host").unwrap();
    // A forward's handshake (the ACK would take a fast path, were there a flow), a forwarded
    // UDP port, a LAN host's inside address, a ping.
    let frames = [
        Pkt::tcp("198.51.100.7:41000", "203.0.113.1:80").flags(TCP_SYN),
        Pkt::tcp("198.51.100.7:41000", "203.0.113.1:80").flags(TCP_ACK),
        Pkt::tcp("198.51.100.7:41000", "203.0.113.1:80").flags(TCP_ACK),
        Pkt::udp("198.51.100.7:41001", "203.0.113.1:5353"),
        Pkt::tcp("198.51.100.7:41002", "192.168.0.2:80").flags(TCP_SYN),
        Pkt::ping("198.51.100.7:7", "203.0.113.1:0"),
    ];
    for mut f in frames.clone() {
        f.macs = (OTHER, inet_mac);
        probe::send_frame(&lab.inet, "eth0", &f.build()).unwrap();
    }
    let n = frames.len() as u64;
    wait_for(5, "pass_other_host to count every frame", || lab.counter("pass_other_host").unwrap() >= before + n);
    // A ping the gateway answers, sent after them on the same link: once its reply is back,
    // anything they set off has happened.
    let answer = probe::ping(&lab.inet, PUBLIC, 64, Duration::from_secs(2)).unwrap();
    assert_eq!(answer, Answer::EchoReply { from: PUBLIC }, "{up_args:?}");
    assert!(lab.flows().unwrap().is_empty(), "{up_args:?}: flows were made: {:?}", lab.flows().unwrap());
    assert_eq!(lab.srv.snmp("Tcp", "InSegs").unwrap(), segs, "{up_args:?}: TCP reached the server");
    assert_eq!(lab.srv.snmp("Udp", "InDatagrams").unwrap(), datagrams, "{up_args:?}: UDP reached the server");
    for f in capture.received().unwrap() {
        assert_eq!(f[6..12], gw_mac, "{up_args:?}: the internet host received a frame not from the gateway: {f:02x?}");
    }
}

/// The MAC address of `iface` in `ns`.
fn mac(ns: &hairpin_lab::Netns, iface: &str) -> [u8; 6] {
    let link = ns.ip(&["-o", "link", "show", iface]).unwrap();
    let text = link.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("a MAC address");
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

#[test]
fn without_hairpin_the_lan_client_times_out_but_the_internet_still_gets_in() {
    let lab = lab();
    lab.up(&["--no-hairpin"]).expect("hairpin-ctl up --no-hairpin");
    lab.flush_neighbours().unwrap();
    let new_flows = lab.counter("ingress_new_flow").unwrap();
    let kind = scenario::no_hairpin_fails(&lab).expect("case 3");
    assert_eq!(kind, std::io::ErrorKind::TimedOut);
    // The gateway did translate the SYN (so the failure is the missing source rewrite).
    assert!(lab.counter("ingress_new_flow").unwrap() > new_flows);
    let wan = scenario::port_forward(&lab, HTTP_PORT).expect("case 1 still works");
    assert_eq!(wan.seen_by_server.ip(), IpAddr::V4(INET));
    // UDP shows why: the server saw the client itself and answered it directly, so the reply
    // comes from 192.168.0.2:53, not the 203.0.113.1:5353 the client asked (a connected socket,
    // or any real resolver, drops it).
    let to = SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT);
    let udp = traffic::udp_echo(&lab.cli, to, b"probe", scenario::UDP_TIMEOUT).expect("the direct reply arrives");
    assert_eq!(udp.reply_from, SocketAddr::V4(SocketAddrV4::new(SERVER, DNS_PORT)));
    assert_eq!(udp.seen_by_server.ip(), IpAddr::V4(CLIENT));
    assert_no_kernel_nat(&lab);
}

/// Honest counters, as the kernel reports them: under a gateway in native XDP (and no `run`),
/// the veths' peers detach their XDP programs, so the kernel refuses the frames the fast path
/// sends into them; the dataplane's tracepoint programs count them per interface, and `stats`
/// shows them beside the fast-path counters that counted them as handed on.
#[test]
fn refused_xdp_frames_are_counted() {
    let mut lab = lab_with(Peers::Xdp);
    lab.up(&["--xdp-mode", "native"]).unwrap();
    let hairpin = SocketAddrV4::new(PUBLIC, HTTP_PORT);
    traffic::tcp_echo(&lab.cli, hairpin, 64 << 10, Duration::from_secs(5)).expect("hairpin on the XDP fast path");
    assert_eq!(refused(&lab), [0, 0]);
    lab.detach_peer_xdp();
    // Nothing turns the XDP fast path off without `run`: these fail, their frames refused
    // (hairpinned ones by XDP_TX into lan0, the masqueraded SYN's retransmission into wan0).
    let _ = traffic::tcp_echo(&lab.cli, hairpin, 1024, Duration::from_secs(2));
    let _ = traffic::tcp_echo(&lab.cli, SocketAddrV4::new(INET, HTTP_PORT), 1024, Duration::from_secs(3));
    let [lan, wan] = refused(&lab);
    assert!(lan > 0 && wan > 0, "refused XDP frames: lan0 {lan}, wan0 {wan}");
}

/// Frames refused into an interface (as the dataplane's counters report them; simulated here,
/// the kernel's side is the test above) make `run` stop the XDP fast path sending into it,
/// even though the kernel still says it takes XDP frames: from then on the fast-path counters
/// do not move while traffic flows there, on the slow path.
#[test]
fn refused_xdp_frames_turn_the_xdp_fast_path_off() {
    let lab = lab_with(Peers::Xdp);
    let ctl = Controller::start(&lab, &["--xdp-mode", "native"]);
    lab.add_mappings().unwrap();
    let hairpin = SocketAddrV4::new(PUBLIC, HTTP_PORT);
    let t = Duration::from_secs(5);
    traffic::tcp_echo(&lab.cli, hairpin, 64 << 10, t).expect("hairpin on the XDP fast path");
    assert!(lab.counter("fast_tx").unwrap() > 0);
    {
        // As the dataplane's tracepoint counts frames the kernel refused.
        let pins = ::hairpin_ctl::dataplane::PinDir::new(&lab.pin_dir);
        let mut counters: aya::maps::PerCpuArray<_, u64> =
            hairpin_lab::raw::pinned(&pins, hairpin_common::consts::map_names::COUNTERS).unwrap().try_into().unwrap();
        let cpus = aya::util::nr_cpus().unwrap().get() as usize;
        let values = aya::maps::PerCpuValues::try_from(vec![3u64; cpus]).unwrap();
        counters.set(hairpin_common::Counter::LanXdpRefused as u32, values, 0).unwrap();
    }
    wait_for(10, "run to stop sending XDP frames into lan0", || takes_xdp_frames(&lab) == [false, true]);
    let before = lab.counter("fast_tx").unwrap();
    traffic::tcp_echo(&lab.cli, hairpin, 64 << 10, t).expect("hairpin on the slow path");
    assert_eq!(lab.counter("fast_tx").unwrap(), before, "fast_tx moved while lan0 refused XDP frames");
    let (status, out, err) = ctl.stop_with_stderr();
    assert!(status.success(), "{status}: {err}");
    assert!(out.lines().any(|l| l.contains("WARN") && l.contains("lan0: the kernel refused")), "{out}");
}

/// Refused XDP frames per interface (LAN, WAN), from `stats --json`.
fn refused(lab: &Lab) -> [u64; 2] {
    let s = lab.stats_json().unwrap();
    let n = |i: usize| s["interfaces"][i]["refused_xdp_frames"].as_u64().unwrap_or_else(|| panic!("{s:#}"));
    [n(0), n(1)]
}

/// What each interface's placement says of XDP frames, from `stats --json`.
fn takes_xdp_frames(lab: &Lab) -> Vec<bool> {
    let s = lab.stats_json().unwrap();
    s["interfaces"].as_array().unwrap().iter().map(|i| i["takes_xdp_frames"].as_bool().unwrap()).collect()
}

/// `run` reads the interfaces' XDP features at every sweep: when the veths' peers detach their
/// XDP programs the kernel stops saying the veths take XDP frames, and the fast path stops
/// sending them any, before a frame is lost; when the peers attach them again, it resumes.
#[test]
fn run_follows_what_the_kernel_says_of_the_interfaces() {
    let mut lab = lab_with(Peers::Xdp);
    let ctl = Controller::start(&lab, &["--xdp-mode", "native"]);
    assert_eq!(takes_xdp_frames(&lab), [true, true]);
    lab.detach_peer_xdp();
    wait_for(10, "run to see the peers' XDP go", || takes_xdp_frames(&lab) == [false, false]);
    lab.attach_peer_xdp().unwrap();
    wait_for(10, "run to see the peers' XDP back", || takes_xdp_frames(&lab) == [true, true]);
    let (status, out, err) = ctl.stop_with_stderr();
    assert!(status.success(), "{status}: {err}");
    let warned = |what: &str| out.lines().any(|l| l.contains("WARN") && l.contains(what));
    assert!(warned("lan0: the kernel no longer says it takes XDP frames"), "{out}");
    assert!(out.contains("wan0: the kernel now says it takes XDP frames"), "{out}");
    assert_eq!(lab.counter("drop_malformed").unwrap(), 0);
}

fn udp_flows(lab: &Lab) -> Vec<serde_json::Value> {
    lab.flows().unwrap().into_iter().filter(|f| f["proto"] == "udp").collect()
}

#[test]
fn run_expires_idle_flows_and_leaves_the_dataplane_running() {
    let lab = lab();
    let ctl = Controller::start(&lab, &["--udp-timeout", "2"]);
    lab.add_mappings().unwrap();

    // A UDP hairpin exchange creates a flow with a lifetime of (at most) the UDP timeout.
    scenario::udp_forward(&lab.cli, GW_LAN).expect("udp through the gateway");
    let flows = udp_flows(&lab);
    assert_eq!(flows.len(), 2, "{flows:#?}");
    assert!(
        flows.iter().all(|f| f["expires_in_s"].as_f64().unwrap() > 0.0 && f["expires_in_s"].as_f64().unwrap() <= 2.0)
    );
    // The controller removes it, both directions, once idle past the timeout...
    wait_for(15, "the idle UDP flow to expire", || udp_flows(&lab).is_empty());
    // ...and the next exchange simply makes a new one.
    scenario::udp_forward(&lab.cli, GW_LAN).expect("udp after expiry");
    assert_eq!(udp_flows(&lab).len(), 2);
    // An established TCP flow is not touched by the UDP timeout.
    let tcp = traffic::tcp_echo(&lab.cli, SocketAddrV4::new(INET, HTTP_PORT), 1024, scenario::CONNECT_TIMEOUT).unwrap();
    assert_eq!(tcp.seen_by_server.ip(), IpAddr::V4(PUBLIC));

    let (status, out) = ctl.stop();
    assert!(status.success(), "run exited with {status}: {out}");
    assert!(out.contains("expired"), "run did not report the expiry: {out}");
    // Stopped, the controller left the dataplane up: translation goes on.
    assert!(lab.pin_dir.exists());
    scenario::udp_forward(&lab.inet, INET).expect("udp port-forward after run exited");

    // A second run adopts the pinned state: mappings and flows survive. The timeout it is
    // given differs, so the flow cache's copies, which serve until a deadline set under the
    // old ones, are retired: the controller's generation moves.
    let generation = || {
        let pins = ::hairpin_ctl::dataplane::PinDir::new(&lab.pin_dir);
        let ct_gen: aya::maps::Array<_, u32> =
            hairpin_lab::raw::pinned(&pins, hairpin_common::consts::map_names::CT_GEN).unwrap().try_into().unwrap();
        ct_gen.get(&GEN_CONTROLLER, 0).expect("read the generation")
    };
    let (flows_before, generation_before) = (udp_flows(&lab).len(), generation());
    let ctl = Controller::start(&lab, &["--udp-timeout", "300"]);
    assert_eq!(udp_flows(&lab).len(), flows_before);
    assert_eq!(lab.ctl_json(&["map", "list"]).unwrap().len(), 3);
    let (status, out) = ctl.stop();
    assert!(status.success() && out.contains("adopted"), "{status}: {out}");
    assert_ne!(generation(), generation_before, "new timeouts retire cached copies");

    lab.ctl(&["flows", "flush"]).unwrap();
    assert_eq!(lab.flows().unwrap(), Vec::<serde_json::Value>::new());
}

/// ICMP through the gateway, and LAN hosts' public bindings. Each ICMP answer is checked by the
/// LAN host's own kernel: it hands an echo reply or an error only to the socket whose echo id
/// or packet it carries, so an answer that arrives was translated back exactly.
#[test]
fn icmp_errors_and_endpoint_independent_bindings() {
    let lab = lab();
    lab.up(&["--udp-filtering", "endpoint-independent"]).expect("hairpin-ctl up");
    let t = Duration::from_secs(3);
    let error = |offender, icmp_type, icmp_code| Answer::IcmpError { offender, icmp_type, icmp_code };

    // Ping through the gateway, masqueraded by echo id.
    assert_eq!(probe::ping(&lab.cli, INET, 64, t).unwrap(), Answer::EchoReply { from: INET });
    let flows = lab.flows().unwrap();
    assert!(
        flows.iter().any(|f| f["proto"] == "icmp"
            && f["masquerade"] == true
            && f["translated_src"].as_str().unwrap().starts_with("203.0.113.1:")),
        "{flows:#?}"
    );
    // Traceroute: hop 1 is the gateway itself, hop 2 the router beyond it, whose time-exceeded
    // quotes the translated packet and must reach the client translated back; then the far
    // host answers. Likewise for UDP, and a port unreachable from the destination itself.
    let before = lab.counter("icmp_error").unwrap();
    scenario::traceroute(&lab).expect("traceroute: the gateway, the router beyond, the far host");
    let far_udp = SocketAddrV4::new(FAR, 33434);
    assert_eq!(probe::udp_probe(&lab.cli, far_udp, 2, t).unwrap(), error(INET, ICMP_TIME_EXCEEDED, 0));
    let closed = SocketAddrV4::new(INET, 9);
    assert_eq!(probe::udp_probe(&lab.cli, closed, 64, t).unwrap(), error(INET, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH));
    assert!(lab.counter("icmp_error").unwrap() >= before + 3);
    assert_eq!(lab.counter("drop_lan_source_to_wan").unwrap(), 0);

    // Two LAN hosts learn their public endpoints (ports preserved) and reach each other there.
    let peers = scenario::peers(&lab).expect("LAN hosts through their public bindings");
    assert_eq!(peers.server_public, SocketAddr::V4(SocketAddrV4::new(PUBLIC, 7000)), "port preserved");
    assert_eq!(peers.client_public, SocketAddr::V4(SocketAddrV4::new(PUBLIC, 7100)));
    // Endpoint-independent filtering: the far host, which the server never sent to, gets in.
    let far = lab.far.run(|| std::net::UdpSocket::bind("0.0.0.0:7200")).unwrap().unwrap();
    far.send_to(b"knock", peers.server_public).unwrap();
    let knock = scenario::recv(&peers.server).expect("the far host's datagram");
    assert_eq!(knock, (b"knock".to_vec(), SocketAddr::V4(SocketAddrV4::new(FAR, 7200))));
    assert!(lab.counter("ingress_binding").unwrap() >= 2);

    // stats shows the bindings held and how full the tables are.
    let stats = lab.stats_json().unwrap();
    let pool =
        |proto: &str| stats["port_pools"].as_array().unwrap().iter().find(|r| r["name"] == proto).unwrap().clone();
    assert!(pool("udp")["in_use"].as_u64().unwrap() >= 2, "{stats:#}");
    assert_eq!(pool("udp")["capacity"], 65535 - 1024 + 1 - 1, "the range less the forwarded UDP port 5353");
    assert!(pool("icmp")["in_use"].as_u64().unwrap() >= 1, "{stats:#}");
    let conntrack = &stats["tables"][0];
    assert_eq!(conntrack["name"], "conntrack entries");
    assert!(conntrack["in_use"].as_u64().unwrap() >= 10, "{stats:#}");
    assert!(stats["exhaustion"].as_array().unwrap().iter().all(|r| r["no_port"] == 0 && r["no_table_space"] == 0));
    assert_no_kernel_nat(&lab);
}

/// What the dataplane logs (aya-log) surfaces in `run`'s output: here, a new flow dropped for
/// want of a public port, which `stats` also counts under its protocol.
#[test]
fn run_prints_the_dataplane_log() {
    let lab = lab();
    let ctl = Controller::start(&lab, &["--port-range", "40000-40000"]);
    // The client's UDP binding takes the only public port...
    let first = traffic::udp_echo(&lab.cli, SocketAddrV4::new(INET, DNS_PORT), b"one", scenario::UDP_TIMEOUT).unwrap();
    assert_eq!(first.seen_by_server, SocketAddr::V4(SocketAddrV4::new(PUBLIC, 40000)));
    // ...so the server has none left for its own.
    let to = SocketAddrV4::new(INET, DNS_PORT);
    traffic::udp_echo(&lab.srv, to, b"two", Duration::from_secs(1)).expect_err("a second binding got a port");
    let stats = lab.stats_json().unwrap();
    let udp = stats["exhaustion"].as_array().unwrap().iter().find(|r| r["proto"] == "udp").unwrap().clone();
    assert_eq!(udp["no_port"], 1, "{stats:#}");
    let (status, out) = ctl.stop();
    assert!(status.success(), "{status}: {out}");
    let line = format!("dataplane: no free public port for a new flow (proto 17) {SERVER}:");
    assert!(out.lines().any(|l| l.contains("WARN") && l.contains(&line)), "{out}");
}

/// Which NAT the gateway runs: hairpin's, or netfilter's (`nft::reference_nat`), against which
/// every behaviour a lab test checks is proved first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nat {
    Hairpin,
    Netfilter,
}

/// The lab with `nat` up for its forwards and masquerade.
fn lab_with_nat(nat: Nat) -> Lab {
    let lab = lab();
    match nat {
        Nat::Hairpin => lab.up(&[]).expect("hairpin-ctl up, with the forwards"),
        Nat::Netfilter => hairpin_lab::nft::reference_nat(&lab.gw).expect("netfilter's NAT"),
    }
    lab
}

/// How many of `n` datagrams from `sock` to `to` an echo answered, each given `wait`.
fn udp_answered(sock: &std::net::UdpSocket, to: SocketAddrV4, n: usize, wait: Duration) -> usize {
    (0..n).filter(|i| traffic::udp_echo_from(sock, to, format!("datagram {i}").as_bytes(), wait).is_ok()).count()
}

/// The gateway's own filter has the last word, beside hairpin as beside netfilter's NAT: a
/// barred internet host reaches no forwarded port, a barred LAN host no internet host, by TCP
/// (connect retries its SYN, which must not slip through a flow the first SYN made) or by UDP
/// (every one of 8 datagrams); hosts the filter lets through are served.
fn the_gateways_filter_keeps_barred_hosts_out(nat: Nat) {
    const BARRED_INET: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 99);
    let lab = lab_with_nat(nat);
    let far = traffic::Servers::start(&lab.far, SocketAddrV4::new(FAR, HTTP_PORT), SocketAddrV4::new(FAR, DNS_PORT))
        .expect("servers on the far host");
    lab.inet.ip(&["addr", "add", &format!("{BARRED_INET}/24"), "dev", "eth0"]).unwrap();
    hairpin_lab::nft::filter(
        &lab.gw,
        &[&format!("ip saddr {BARRED_INET} ip daddr {SERVER} drop"), &format!("ip saddr {CLIENT} ip daddr {FAR} drop")],
    )
    .unwrap();
    let (http, dns) = (SocketAddrV4::new(PUBLIC, HTTP_PORT), SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT));
    let far_http = SocketAddrV4::new(FAR, HTTP_PORT);
    let far_dns = SocketAddrV4::new(FAR, DNS_PORT);
    let wait = Duration::from_millis(400);
    // Let through: the internet host to the forwards, the server to the far host.
    scenario::port_forward(&lab, HTTP_PORT).expect("an allowed internet host through the forward");
    let answered =
        lab.inet.run(move || udp_answered(&std::net::UdpSocket::bind("198.51.100.7:0").unwrap(), dns, 8, wait));
    assert_eq!(answered.unwrap(), 8, "{nat:?}: an allowed internet host's datagrams");
    traffic::tcp_echo(&lab.srv, far_http, 1000, scenario::CONNECT_TIMEOUT).expect("the server to the far host");
    let answered =
        lab.srv.run(move || udp_answered(&std::net::UdpSocket::bind("0.0.0.0:0").unwrap(), far_dns, 8, wait));
    assert_eq!(answered.unwrap(), 8, "{nat:?}: the server's datagrams to the far host");
    // Kept out. The barred internet host's connections come from its own address.
    lab.inet.ip(&["route", "replace", "203.0.113.0/24", "dev", "eth0", "src", &BARRED_INET.to_string()]).unwrap();
    let barred = traffic::tcp_echo(&lab.inet, http, 10, Duration::from_millis(3500));
    assert!(barred.is_err(), "{nat:?}: the barred internet host connected through the forward: {barred:?}");
    let answered =
        lab.inet.run(move || udp_answered(&std::net::UdpSocket::bind((BARRED_INET, 0)).unwrap(), dns, 8, wait));
    assert_eq!(answered.unwrap(), 0, "{nat:?}: the barred internet host's datagrams answered");
    let barred = traffic::tcp_echo(&lab.cli, far_http, 10, Duration::from_millis(3500));
    assert!(barred.is_err(), "{nat:?}: the barred LAN host connected to the far host: {barred:?}");
    let answered =
        lab.cli.run(move || udp_answered(&std::net::UdpSocket::bind("0.0.0.0:0").unwrap(), far_dns, 8, wait));
    assert_eq!(answered.unwrap(), 0, "{nat:?}: the barred LAN host's datagrams answered");
    drop(far);
    if nat == Nat::Hairpin {
        // The barred flows were made and never confirmed: the fast path served none of them.
        let flows = lab.flows().unwrap();
        let barred: Vec<_> = flows
            .iter()
            .filter(|f| f["src"].as_str().is_some_and(|s| s.starts_with(&format!("{BARRED_INET}:"))))
            .collect();
        assert!(!barred.is_empty() && barred.iter().all(|f| f["confirmed"] == false), "{flows:#?}");
    }
}

#[test]
fn the_gateways_filter_keeps_barred_hosts_out_beside_hairpin() {
    the_gateways_filter_keeps_barred_hosts_out(Nat::Hairpin);
}

/// The same test against netfilter's NAT: the reference.
#[test]
fn the_gateways_filter_keeps_barred_hosts_out_beside_netfilter_nat() {
    the_gateways_filter_keeps_barred_hosts_out(Nat::Netfilter);
}

/// Fragmented datagrams both ways (RFC 4787 REQ-14, RFC 5508): 3000-byte UDP datagrams, which
/// their senders fragment at MTU 1500, through masquerade, a forward and hairpin, the same with
/// their fragments sent last first by a raw socket, and a 3000-byte ping through masquerade:
/// each answered whole, from the address dialled.
fn fragmented_datagrams_arrive_whole(nat: Nat) {
    let lab = lab_with_nat(nat);
    let payload: Vec<u8> = (0..3000).map(traffic::pattern).collect();
    let dns = SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT);
    let cases = [
        ("masquerade", &lab.cli, SocketAddrV4::new(INET, DNS_PORT), PUBLIC),
        ("forward", &lab.inet, dns, INET),
        ("hairpin", &lab.cli, dns, GW_LAN),
    ];
    for (what, from, to, seen) in cases {
        let echo = traffic::udp_echo(from, to, &payload, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{nat:?}: {what}: a 3000-byte datagram: {e:#}"));
        assert_eq!(echo.reply_from, SocketAddr::V4(to), "{nat:?}: {what}");
        assert_eq!(echo.seen_by_server.ip(), IpAddr::V4(seen), "{nat:?}: {what}");
    }
    // The same datagrams with their fragments sent last first: the UDP header comes last.
    let last_first = [
        ("masquerade", &lab.cli, CLIENT, SocketAddrV4::new(INET, DNS_PORT), PUBLIC),
        ("forward", &lab.inet, INET, dns, INET),
        ("hairpin", &lab.cli, CLIENT, dns, GW_LAN),
    ];
    for (what, from, src, to, seen) in last_first {
        let echo = traffic::udp_echo_last_first(from, src, to, &payload, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{nat:?}: {what}: a 3000-byte datagram, last fragment first: {e:#}"));
        assert_eq!(echo.reply_from, SocketAddr::V4(to), "{nat:?}: {what}, last fragment first");
        assert_eq!(echo.seen_by_server.ip(), IpAddr::V4(seen), "{nat:?}: {what}, last fragment first");
    }
    let ping = lab.cli.exec("ping", &["-c", "3", "-i", "0.2", "-W", "2", "-s", "3000", &INET.to_string()]);
    let ping = ping.unwrap_or_else(|e| panic!("{nat:?}: ping -s 3000: {e:#}"));
    assert!(ping.contains("3 received"), "{nat:?}: {ping}");
    if nat == Nat::Hairpin {
        let stats = lab.stats_json().unwrap();
        let total = |reason: &str| lab.counter(reason).unwrap();
        assert!(total("ingress_fragment") > 0 && total("egress_fragment") > 0, "{stats:#}");
        assert!(total("held_fragment") >= 6, "two held per datagram sent last first: {stats:#}");
    }
}

#[test]
fn fragmented_datagrams_arrive_whole_through_hairpin() {
    fragmented_datagrams_arrive_whole(Nat::Hairpin);
}

/// The same through netfilter's NAT: the reference.
#[test]
fn fragmented_datagrams_arrive_whole_through_netfilter_nat() {
    fragmented_datagrams_arrive_whole(Nat::Netfilter);
}

/// A PPPoE-like WAN: the gateway's WAN link and the router's side of it at MTU 1492, the LAN
/// and the far host's network at 1500. Datagrams of 1500 bytes without DF cross both ways
/// (the gateway fragments what leaves on the WAN, translated; the router fragments its
/// answers), for masquerade and a forward; bulk TCP to the far host behind the router, with
/// TSO and GRO on, finds the path MTU both ways.
fn a_pppoe_wan_carries_what_does_not_fit(nat: Nat) {
    let lab = lab_with_nat(nat);
    for (ns, dev) in [(&lab.gw, "wan0"), (&lab.inet, "eth0")] {
        ns.ip(&["link", "set", dev, "mtu", "1492"]).unwrap();
    }
    let far = traffic::Servers::start(&lab.far, SocketAddrV4::new(FAR, HTTP_PORT), SocketAddrV4::new(FAR, DNS_PORT))
        .expect("servers on the far host");
    let payload: Vec<u8> = (0..1472).map(traffic::pattern).collect();
    let cases = [
        ("masquerade", &lab.cli, SocketAddrV4::new(INET, DNS_PORT), PUBLIC),
        ("a forward", &lab.inet, SocketAddrV4::new(PUBLIC, PUBLIC_DNS_PORT), INET),
    ];
    for (what, from, to, seen) in cases {
        let payload = payload.clone();
        let echo = from
            .run(move || {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
                traffic::allow_fragmentation(&sock)?;
                traffic::udp_echo_from(&sock, to, &payload, Duration::from_secs(3))
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{nat:?}: {what}: a 1500-byte datagram without DF: {e:#}"));
        assert_eq!(echo.reply_from, SocketAddr::V4(to), "{nat:?}: {what}");
        assert_eq!(echo.seen_by_server.ip(), IpAddr::V4(seen), "{nat:?}: {what}");
    }
    let bulk = traffic::tcp_echo(&lab.cli, SocketAddrV4::new(FAR, HTTP_PORT), 1 << 20, scenario::CONNECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{nat:?}: 1 MiB both ways to the far host over the 1492 WAN: {e:#}"));
    assert_eq!(bulk.seen_by_server.ip(), IpAddr::V4(PUBLIC), "{nat:?}");
    let fwd = traffic::tcp_echo(&lab.inet, SocketAddrV4::new(PUBLIC, HTTP_PORT), 1 << 20, scenario::CONNECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{nat:?}: 1 MiB both ways through the forward over the 1492 WAN: {e:#}"));
    assert_eq!(fwd.seen_by_server.ip(), IpAddr::V4(INET), "{nat:?}");
    for ns in [&lab.cli, &lab.srv, &lab.inet, &lab.far] {
        assert_eq!(ns.snmp("Tcp", "InCsumErrors").unwrap(), 0, "{nat:?}: {}", ns.name);
    }
    drop(far);
}

#[test]
fn a_pppoe_wan_carries_what_does_not_fit_through_hairpin() {
    a_pppoe_wan_carries_what_does_not_fit(Nat::Hairpin);
}

/// The same through netfilter's NAT: the reference.
#[test]
fn a_pppoe_wan_carries_what_does_not_fit_through_netfilter_nat() {
    a_pppoe_wan_carries_what_does_not_fit(Nat::Netfilter);
}

/// A UDP forward's server streams to a WAN client that asked once (a media server, a game
/// server): every datagram comes from the forward's public port, long after a UDP timeout
/// would have ended a flow that only the client's packets kept alive. A forward is the
/// operator's mapping, refreshed by its server's packets too (netfilter's conntrack, the
/// reference, is refreshed by both directions, here with its UDP timeouts as short).
fn a_forwards_server_streams_to_a_client_that_asked_once(nat: Nat) {
    const PORT: u16 = 5400;
    let lab = lab();
    let _ctl = match nat {
        Nat::Hairpin => {
            let ctl = Controller::start(&lab, &["--udp-timeout", "2"]);
            lab.ctl(&["map", "add", "udp", &format!("{PUBLIC}:{PORT}"), &format!("{SERVER}:{PORT}")]).unwrap();
            Some(ctl)
        }
        Nat::Netfilter => {
            hairpin_lab::nft::reference_nat(&lab.gw).unwrap();
            let rule = format!("add rule ip hpnat pre ip daddr {PUBLIC} udp dport {PORT} dnat to {SERVER}:{PORT}\n");
            hairpin_lab::nft::script(&lab.gw, &rule).unwrap();
            for t in ["nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"] {
                lab.gw.sysctl(&format!("net.netfilter.{t}"), "2").unwrap();
            }
            None
        }
    };
    const DATAGRAMS: usize = 12;
    let server = lab
        .srv
        .spawn(move || -> std::io::Result<()> {
            let sock = std::net::UdpSocket::bind((SERVER, PORT))?;
            sock.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 64];
            let (_, client) = sock.recv_from(&mut buf)?;
            // One every half second: 6 s, three UDP timeouts.
            for i in 0..DATAGRAMS {
                sock.send_to(format!("frame {i}").as_bytes(), client)?;
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(())
        })
        .unwrap();
    let heard = lab
        .inet
        .run(move || -> std::io::Result<Vec<SocketAddr>> {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_secs(2)))?;
            // The server must be listening first: ask until it answers.
            let mut from = Vec::new();
            let mut buf = [0u8; 64];
            for _ in 0..20 {
                sock.send_to(b"play", (PUBLIC, PORT))?;
                if let Ok((_, addr)) = sock.recv_from(&mut buf) {
                    from.push(addr);
                    break;
                }
            }
            while let Ok((_, addr)) = sock.recv_from(&mut buf) {
                from.push(addr);
            }
            Ok(from)
        })
        .unwrap()
        .unwrap();
    server.join().unwrap().unwrap();
    let forward = SocketAddr::V4(SocketAddrV4::new(PUBLIC, PORT));
    let from_forward = heard.iter().filter(|a| **a == forward).count();
    assert_eq!((heard.len(), from_forward), (DATAGRAMS, DATAGRAMS), "{nat:?}: heard from {heard:?}");
}

#[test]
fn a_forwards_server_streams_to_a_client_that_asked_once_through_hairpin() {
    a_forwards_server_streams_to_a_client_that_asked_once(Nat::Hairpin);
}

/// The same through netfilter's NAT: the reference.
#[test]
fn a_forwards_server_streams_to_a_client_that_asked_once_through_netfilter_nat() {
    a_forwards_server_streams_to_a_client_that_asked_once(Nat::Netfilter);
}

/// RFC 5780's hairpinning test, as `turnutils_natdiscovery` runs it: a LAN host learns its
/// public endpoint from a server on the internet, then sends to it, and hears every datagram
/// itself, from that public endpoint; on the fast path and off it, under `run`'s sweep with a
/// short UDP timeout. (netfilter has no hairpin to a host's own mapping: no reference.)
fn a_host_hears_itself_through_its_own_mapping(flags: &[&str]) {
    let lab = lab();
    let _ctl = Controller::start(&lab, &[&["--udp-timeout", "3"], flags].concat());
    let heard = lab
        .cli
        .run(|| -> anyhow::Result<(SocketAddr, Vec<SocketAddr>)> {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            let mapped =
                traffic::udp_echo_from(&sock, SocketAddrV4::new(INET, DNS_PORT), b"binding", scenario::UDP_TIMEOUT)?
                    .seen_by_server;
            sock.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut from = Vec::new();
            let mut buf = [0u8; 64];
            for i in 0..3 {
                sock.send_to(format!("to myself {i}").as_bytes(), mapped)?;
                let (n, addr) = sock.recv_from(&mut buf)?;
                anyhow::ensure!(buf[..n] == *format!("to myself {i}").as_bytes(), "datagram {i} changed");
                from.push(addr);
            }
            Ok((mapped, from))
        })
        .unwrap();
    let (mapped, from) = heard.unwrap_or_else(|e| panic!("{flags:?}: {e:#}"));
    assert_eq!(mapped.ip(), IpAddr::V4(PUBLIC));
    assert_eq!(from, vec![mapped; 3], "{flags:?}: each datagram heard from the mapped address");
}

#[test]
fn a_host_hears_itself_through_its_own_mapping_on_the_fast_path() {
    a_host_hears_itself_through_its_own_mapping(&[]);
}

#[test]
fn a_host_hears_itself_through_its_own_mapping_on_the_slow_path() {
    a_host_hears_itself_through_its_own_mapping(&["--no-fast-path"]);
}

/// Two forwards to one LAN service (udp 5353 and 5354 to the server's 53), used from one
/// client port on the internet: each answer comes back from the port it was sent to, on the
/// slow path as on the fast one. (From one LAN client port, hairpinned, the second flow is
/// refused for now: its packets would leave ingress like the first's.)
fn two_forwards_to_one_service_never_cross(nat: Nat, flags: &[&str]) {
    const SECOND: u16 = 5354;
    let lab = lab();
    match nat {
        Nat::Hairpin => lab.up(flags).unwrap(),
        Nat::Netfilter => {
            hairpin_lab::nft::reference_nat(&lab.gw).unwrap();
            let rule =
                format!("add rule ip hpnat pre ip daddr {PUBLIC} udp dport {SECOND} dnat to {SERVER}:{DNS_PORT}\n");
            hairpin_lab::nft::script(&lab.gw, &rule).unwrap();
        }
    }
    if nat == Nat::Hairpin {
        lab.ctl(&["map", "add", "udp", &format!("{PUBLIC}:{SECOND}"), &format!("{SERVER}:{DNS_PORT}")]).unwrap();
    }
    for (what, from) in [("from the internet", &lab.inet)] {
        let answers = from
            .run(|| -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
                let mut answers = Vec::new();
                for i in 0..6 {
                    let to = SocketAddrV4::new(PUBLIC, if i % 2 == 0 { PUBLIC_DNS_PORT } else { SECOND });
                    let echo =
                        traffic::udp_echo_from(&sock, to, format!("query {i}").as_bytes(), scenario::UDP_TIMEOUT)?;
                    answers.push((SocketAddr::V4(to), echo.reply_from));
                }
                Ok(answers)
            })
            .unwrap()
            .unwrap_or_else(|e| panic!("{nat:?} {flags:?}: {what}: {e:#}"));
        for (to, from) in answers {
            assert_eq!(from, to, "{nat:?} {flags:?}: {what}: an answer to {to} came from {from}");
        }
    }
}

#[test]
fn two_forwards_to_one_service_never_cross_through_hairpin() {
    two_forwards_to_one_service_never_cross(Nat::Hairpin, &[]);
    two_forwards_to_one_service_never_cross(Nat::Hairpin, &["--no-fast-path"]);
}

/// The same through netfilter's NAT: the reference.
#[test]
fn two_forwards_to_one_service_never_cross_through_netfilter_nat() {
    two_forwards_to_one_service_never_cross(Nat::Netfilter, &[]);
}
