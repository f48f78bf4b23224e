//! Bulk TCP through the gateway with iperf3, on the lab's plain topology: hosts in namespaces
//! with their default offloads (TSO super-packets, checksums left to offload), nothing on the
//! veths' peers. Gbit/s of plain routing, nftables and hairpin with default flags, side by side
//! in one run: the port-forward (internet host -> public address -> LAN server) and the
//! masquerade (LAN client -> internet host), with 1 and 4 streams.

use std::{
    fmt::Write as _,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hairpin_lab::{Lab, Netns};

use hairpin_lab::nft::script as nft_script;

/// What translates (or only routes) the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gateway {
    /// The kernel routing, no NAT: the hosts address each other directly.
    Routing,
    /// nftables: DNAT of the forwarded port, masquerade of what leaves by the WAN.
    Nftables,
    /// hairpin with default flags (`up` places ingress by the devices: TC on these veths).
    Hairpin,
}

impl Gateway {
    const ALL: [Gateway; 3] = [Gateway::Routing, Gateway::Nftables, Gateway::Hairpin];
    fn name(self) -> &'static str {
        match self {
            Gateway::Routing => "kernel routing (no NAT)",
            Gateway::Nftables => "nftables",
            Gateway::Hairpin => "hairpin, default flags",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    /// The internet host to the LAN server's forwarded port.
    Forward,
    /// The LAN client to the internet host.
    Masquerade,
}

const PORT: u16 = 5201;
const NFT: &str = "table ip hpbulk {\n  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n    \
                   ip daddr 203.0.113.1 tcp dport 5201 dnat to 192.168.0.2\n  }\n  chain post {\n    \
                   type nat hook postrouting priority srcnat; policy accept;\n    oifname \"wan0\" masquerade\n  }\n}\n";

/// An iperf3 server in a namespace, killed (by its PID) when dropped.
struct Server(Child);

impl Server {
    fn start(ns: &Netns) -> anyhow::Result<Self> {
        let child = ns
            .command("iperf3")
            .args(["-s", "-p", &PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s (is iperf3 installed? `cargo xtask setup`)")?;
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prints the report as a markdown section, also appended to `append` if given.
pub fn run(
    ctl: std::path::PathBuf,
    quick: bool,
    secs: u32,
    reps: usize,
    append: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (secs, reps) = if quick { (1, 1) } else { (secs, reps) };
    let lab = Lab::new(ctl).context("building the lab")?;
    // Plain routing needs the internet host to route the LAN at the gateway; the NAT cases
    // never use that route (and hairpin drops what would).
    lab.inet.ip(&["route", "add", "192.168.0.0/24", "via", "203.0.113.1"])?;
    let _servers = (Server::start(&lab.srv)?, Server::start(&lab.inet)?);
    let cases: Vec<(Traffic, u32)> =
        [Traffic::Forward, Traffic::Masquerade].into_iter().flat_map(|t| [(t, 1), (t, 4)]).collect();
    // results[case][gateway]: Gbit/s per repetition.
    let mut results = vec![vec![Vec::new(); Gateway::ALL.len()]; cases.len()];
    for rep in 0..reps {
        // Each repetition goes round the gateways, starting one further along.
        for g in (0..Gateway::ALL.len()).map(|g| (g + rep) % Gateway::ALL.len()) {
            let gateway = Gateway::ALL[g];
            set_up(&lab, gateway)?;
            for (c, &(traffic, streams)) in cases.iter().enumerate() {
                let gbps = iperf(&lab, gateway, traffic, streams, secs)
                    .with_context(|| format!("{} {traffic:?} with {streams} stream(s)", gateway.name()))?;
                results[c][g].push(gbps);
            }
            tear_down(&lab, gateway)?;
        }
    }
    let report = report(&cases, &results, secs, reps);
    println!("{report}");
    if let Some(path) = append {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "\n{report}").with_context(|| format!("appending to {}", path.display()))?;
    }
    Ok(())
}

fn set_up(lab: &Lab, g: Gateway) -> anyhow::Result<()> {
    match g {
        Gateway::Routing => Ok(()),
        Gateway::Nftables => nft_script(&lab.gw, NFT),
        Gateway::Hairpin => {
            lab.ctl(&["up", "--lan", "lan0", "--wan", "wan0"])?;
            lab.ctl(&["map", "add", "tcp", &format!("203.0.113.1:{PORT}"), &format!("192.168.0.2:{PORT}")])?;
            Ok(())
        }
    }
}

fn tear_down(lab: &Lab, g: Gateway) -> anyhow::Result<()> {
    match g {
        Gateway::Routing => Ok(()),
        Gateway::Nftables => nft_script(&lab.gw, "delete table ip hpbulk\n"),
        Gateway::Hairpin => lab.down(),
    }
}

/// Gbit/s that the receiver of one iperf3 run counted.
fn iperf(lab: &Lab, g: Gateway, traffic: Traffic, streams: u32, secs: u32) -> anyhow::Result<f64> {
    let (from, to) = match (traffic, g) {
        (Traffic::Forward, Gateway::Routing) => (&lab.inet, "192.168.0.2"),
        (Traffic::Forward, _) => (&lab.inet, "203.0.113.1"),
        (Traffic::Masquerade, _) => (&lab.cli, "198.51.100.7"),
    };
    // The server may take a moment to listen after a namespace change: retry the connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = from
            .command("iperf3")
            .args(["-c", to, "-p", &PORT.to_string(), "-t", &secs.to_string(), "-P", &streams.to_string(), "-J"])
            .args(["--connect-timeout", "3000"])
            .output()
            .context("running iperf3 -c")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        if Instant::now() > deadline {
            bail!("iperf3 failed: {} {}", json["error"], String::from_utf8_lossy(&out.stderr).trim());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(cases: &[(Traffic, u32)], results: &[Vec<Vec<f64>>], secs: u32, reps: usize) -> String {
    let mut s = String::from("## Bulk TCP (iperf3, Gbit/s, median)\n\n| traffic | streams |");
    for g in Gateway::ALL {
        let _ = write!(s, " {} |", g.name());
    }
    s.push_str(" hairpin / nftables | hairpin / routing |\n|---|---:|");
    s.push_str(&"---:|".repeat(Gateway::ALL.len() + 2));
    s.push('\n');
    for (c, (traffic, streams)) in cases.iter().enumerate() {
        let m: Vec<f64> = results[c].iter().map(|r| median(r)).collect();
        let _ = write!(s, "| {traffic:?} | {streams} |");
        for v in &m {
            let _ = write!(s, " {v:.1} |");
        }
        let _ = writeln!(s, " {:.2} | {:.2} |", m[2] / m[1], m[2] / m[0]);
    }
    let _ = writeln!(
        s,
        "\nThe lab's plain topology: veths with nothing on their peers, hosts with default offloads \
         (TSO, TX checksum offload), so hairpin's `up` puts ingress in TC. {reps} repetition(s) of {secs} s \
         per cell, gateways alternated within each repetition."
    );
    s
}
