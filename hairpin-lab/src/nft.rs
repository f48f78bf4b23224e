//! nftables in the lab's gateway: netfilter's NAT for the lab's forwards and masquerade, the
//! reference every lab behaviour is proved against first, and the gateway's own filter, which
//! runs beside either.

use anyhow::{Context as _, ensure};

use crate::{
    Netns,
    topology::{MAPPINGS, PUBLIC, SERVER},
};

/// Runs an nft script in `ns`.
pub fn script(ns: &Netns, rules: &str) -> anyhow::Result<()> {
    let mut c = ns.command("nft");
    c.args(["-f", "-"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().context("running nft")?;
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), rules.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "nft -f failed: {}\n{rules}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// netfilter's NAT for what hairpin does in the lab: the forwards of [`MAPPINGS`] (DNAT of the
/// public address's ports, from anywhere), masquerade of what leaves on the WAN, and of
/// forwarded flows that came from the LAN and go back into it (hairpin), as an operator writes
/// them.
pub fn reference_nat(gw: &Netns) -> anyhow::Result<()> {
    let dnat: String = MAPPINGS
        .iter()
        .map(|(proto, public, private)| {
            format!("    ip daddr {PUBLIC} {proto} dport {public} dnat to {SERVER}:{private}\n")
        })
        .collect();
    script(
        gw,
        &format!(
            "table ip hpnat {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat}  }}\n  \
             chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"wan0\" masquerade\n    iifname \"lan0\" oifname \"lan0\" ct status dnat masquerade\n  }}\n}}\n"
        ),
    )
}

/// The gateway's own filter: `rules` in the forward chain of `table inet filter` (policy
/// accept), as a router's firewall has them.
pub fn filter(gw: &Netns, rules: &[&str]) -> anyhow::Result<()> {
    let rules: String = rules.iter().map(|r| format!("    {r}\n")).collect();
    script(
        gw,
        &format!(
            "table inet filter {{\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{rules}  }}\n}}\n"
        ),
    )
}
