//! The command line, a leaf: the top-level parser, each command's arguments (one module per
//! group of commands) and the value types several share. Values are parsed into checked types
//! ([`HostPort`], the spec's `Proto`, ...), so a bad argument is refused with one line before
//! anything is touched. Nothing here reads a file or touches the system.

pub mod docs;
pub mod flows;
pub mod gateway;
pub mod map;

use std::{net::SocketAddrV4, path::PathBuf, str::FromStr};

use clap::{Args, Parser, Subcommand};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/hairpin";

/// hairpin: port forwarding and hairpin NAT for a Linux gateway, in eBPF.
///
/// hairpin translates a gateway's port-forwards in XDP and TC programs. A LAN host that dials
/// the gateway's public address reaches the forwarded LAN server too ("hairpin" or NAT
/// loopback): the gateway rewrites the source to its own LAN address so the server's reply comes
/// back through it. Other LAN traffic routed out of the WAN is masqueraded to the public address.
///
/// Typical use:
///   hairpin-ctl apply -f /etc/hairpin/hairpin.toml   (or: up --lan eth1 --wan eth0)
///   hairpin-ctl map add tcp 203.0.113.1:80 192.168.0.2:80
///   hairpin-ctl show
///   hairpin-ctl flows
///   hairpin-ctl down
/// As a service: contrib/hairpin.service runs `hairpin-ctl run --config FILE`.

#[derive(Debug, Parser)]
#[command(name = "hairpin-ctl", version, verbatim_doc_comment, propagate_version = true)]
pub struct Cli {
    /// Directory in bpffs where the maps and program links are pinned. Several gateways (in
    /// different network namespaces) can run side by side with different pin directories.
    #[arg(long, global = true, env = "HAIRPIN_PIN_DIR", default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the dataplane to the LAN and WAN interfaces and pin its state, then exit.
    ///
    /// Loads the ingress programs (XDP or TC, per interface: see --mode) and the TC egress
    /// programs on both interfaces, fills the configuration and the forwards, and pins maps and
    /// links under the pin directory: the dataplane keeps running after this command returns,
    /// until `down`. Either everything is attached and pinned, or nothing is. LAN traffic that
    /// the kernel routes out of the WAN interface is masqueraded to the public address.
    /// Interfaces already running XDP or TC programs are refused. Settings come from the flags
    /// or, whole, from a file (--config).
    Up(gateway::UpArgs),
    /// Detach the dataplane and remove what `up` pinned under the pin directory.
    ///
    /// Returns once the kernel has detached the programs. Nothing up is not an error (a stop
    /// step must be idempotent); a directory hairpin did not make is left alone.
    Down,
    /// Make the live gateway what a configuration file says, atomically.
    ///
    /// Checks the whole file first (errors name the file, line and key) and prints the
    /// difference against the live configuration (`+` added, `-` removed, `~` changed). Then new
    /// and changed forwards go in, the settings are written, and only then do removed forwards
    /// go, with their flows: at no moment is a kept forward missing, and flows of kept forwards
    /// survive. With nothing up, it brings the gateway up as `up --config FILE` does. Settings
    /// fixed while up (interfaces, tc_attach, flow_cache, max_flows, and mode or xdp_mode where
    /// they would move an interface's ingress) are refused, naming each: `down` first. A file
    /// that fails any check changes nothing.
    Apply(gateway::ApplyArgs),
    /// Print the live configuration in the format `apply` reads (TOML), or as JSON: `show >
    /// FILE; apply -f FILE` changes nothing.
    Show(JsonArg),
    /// Add, delete or list forwards one at a time (also `forward`).
    #[command(subcommand, visible_alias = "forward")]
    Map(map::MapCommand),
    /// Show the packet counters, the flow cache, refused flows, and how full the tables are.
    ///
    /// The per-reason packet counters of every hook (summed over CPUs), why known flows took
    /// the slow path, new flows dropped for want of a public port or table space (per
    /// protocol), and how full the tables and public port pools are. --json prints one object
    /// with a key per section.
    Stats(JsonArg),
    /// Show the flows (conntrack), filtered like `conntrack -L`; delete one, flush them all, or
    /// watch them start and end.
    ///
    /// One line per direction of each flow, as it arrives and as it leaves (an ICMP echo flow
    /// shows its identifier as the port), with its kind, state, the packets and bytes it has
    /// carried (IPv4 total lengths; a GSO super-packet counts its segments) and lifetime.
    Flows(flows::FlowsArgs),
    /// Attach like `up` (or adopt a dataplane already pinned here), then expire idle flows
    /// until SIGTERM or SIGINT, leaving the dataplane running on exit.
    ///
    /// Adopting, flags given are applied as `apply` would (those fixed while up are refused,
    /// naming each) and flags not given keep the pinned values. With --config FILE, SIGHUP
    /// re-reads the file and applies it. One `run` per pin directory; it stops, saying so, if
    /// the pins are removed under it (`down`). Under systemd (Type=notify) it says READY once
    /// attached and STOPPING on its way out. At every sweep it also reads what the kernel says
    /// of the interfaces (whether they take XDP frames) and the XDP frames the kernel refused,
    /// and stops or resumes the XDP fast path into each, saying so.
    Run(gateway::RunArgs),
    /// Write the man pages (section 8), generated from this command line, into a directory.
    Man(docs::ManArgs),
    /// Print a shell completion script, generated from this command line.
    Completions(docs::CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// An IPv4 `ADDR:PORT` with a non-zero port and a usable unicast address (not the dataplane's
/// `Endpoint`, which is in network byte order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort(pub SocketAddrV4);

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let sa: SocketAddrV4 =
            s.parse().map_err(|_| format!("'{s}' is not an IPv4 ADDR:PORT (e.g. 192.168.0.2:80)"))?;
        if sa.port() == 0 {
            return Err(format!("'{s}': port 0 cannot be forwarded"));
        }
        let ip = sa.ip();
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(format!("'{s}': {ip} is not a unicast host address"));
        }
        Ok(HostPort(sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cli::{flows::FlowsAction, map::MapCommand},
        spec::{Overrides, Proto},
    };

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hairpin-ctl").chain(args.iter().copied()))
    }

    #[test]
    fn pin_dir_is_global_before_or_after_the_subcommand() {
        let a = parse(&["--pin-dir", "/sys/fs/bpf/a", "map", "list"]).unwrap();
        let b = parse(&["map", "list", "--pin-dir", "/sys/fs/bpf/b"]).unwrap();
        assert_eq!(a.pin_dir, PathBuf::from("/sys/fs/bpf/a"));
        assert_eq!(b.pin_dir, PathBuf::from("/sys/fs/bpf/b"));
        assert!(matches!(b.command, Command::Map(MapCommand::List(JsonArg { json: false }))));
    }

    #[test]
    fn map_add_parses_protocol_and_endpoints() {
        let c = parse(&["map", "add", "udp", "203.0.113.1:5353", "192.168.0.2:53", "--lifetime", "60"]).unwrap();
        let Command::Map(MapCommand::Add { proto, public, private, lifetime }) = c.command else { panic!("{c:?}") };
        assert_eq!(lifetime, Some(60));
        assert_eq!(proto, Proto::Udp);
        assert_eq!(public.0, "203.0.113.1:5353".parse().unwrap());
        assert_eq!(private.0, "192.168.0.2:53".parse().unwrap());
    }

    #[test]
    fn bad_arguments_are_rejected_with_a_reason() {
        for (args, needle) in [
            (&["map", "add", "sctp", "203.0.113.1:80", "192.168.0.2:80"][..], "invalid value 'sctp'"),
            (&["map", "add", "tcp", "203.0.113.1:0", "192.168.0.2:80"][..], "port 0"),
            (&["map", "add", "tcp", "203.0.113.1:80", "192.168.0.2"][..], "not an IPv4 ADDR:PORT"),
            (&["map", "add", "tcp", "203.0.113.300:80", "192.168.0.2:80"][..], "not an IPv4 ADDR:PORT"),
            (&["map", "add", "tcp", "224.0.0.1:80", "192.168.0.2:80"][..], "not a unicast"),
            (&["map", "add", "tcp", "203.0.113.1:80"][..], "PRIVATE_IP:PORT"),
            (&["map", "add", "tcp", "203.0.113.1:80", "192.168.0.2:80", "--lifetime", "0"][..], "--lifetime"),
            (&["map", "del", "tcp", "[::1]:80"][..], "not an IPv4"),
            (&["up", "--lan", "a", "--wan", "b", "--public-ip", "nope"][..], "invalid value 'nope'"),
            (&["up", "--lan", "a", "--wan", "b", "--port-range", "2000-1000"][..], "empty"),
            (&["up", "--lan", "a", "--wan", "b", "--port-range", "0-10"][..], "start at 1"),
            (&["up", "--lan", "a", "--wan", "b", "--port-range", "100-70000"][..], "port 70000 is above 65535"),
            (&["up", "--lan", "a", "--wan", "b", "--port-range", "1024"][..], "MIN-MAX"),
            (&["up", "--lan", "a", "--wan", "b", "--udp-timeout", "0"][..], "--udp-timeout"),
            (&["up", "--lan", "a", "--wan", "b", "--lan-prefix", "192.168.0.0"][..], "ADDR/LEN"),
            (&["up", "--lan", "a", "--wan", "b", "--lan-prefix", "192.168.0.0/0"][..], "1 to 32"),
            (&["run", "--lan", "a", "--wan", "b", "--sweep-interval", "0"][..], "--sweep-interval"),
            (&["up", "--lan", "a", "--wan", "b", "--udp-filtering", "full-cone"][..], "endpoint-independent"),
            (&["up", "--lan", "a", "--wan", "b", "--max-flows", "10"][..], "--max-flows"),
            (&["up", "--lan", "a", "--wan", "b", "--mode", "ebpf"][..], "[possible values: auto, xdp, tc]"),
            (&["up", "--config", "f", "--lan", "a"][..], "cannot be used with"),
            (&["apply"][..], "--file"),
            (&["flows", "purge"][..], "unrecognized subcommand"),
        ] {
            let e = parse(args).expect_err(&format!("{args:?} should fail")).to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn flags_not_given_keep_the_base_spec() {
        use crate::spec::{Spec, UdpFiltering};
        let c = parse(&["run", "--udp-timeout", "30", "--no-hairpin"]).unwrap();
        let Command::Run(r) = c.command else { panic!() };
        let mut live = Spec::new("l", "w");
        live.nat.udp_filtering = UdpFiltering::EndpointIndependent;
        live.timeouts.tcp_established = 9000;
        let given = r.up.overrides().apply(&mut live);
        assert_eq!(given, ["nat.hairpin", "timeouts.udp"]);
        // What was not given keeps the base's value, whatever the flag's default.
        assert_eq!(live.nat.udp_filtering, UdpFiltering::EndpointIndependent);
        assert_eq!((live.timeouts.tcp_established, live.timeouts.udp), (9000, 30));
        assert!(!live.nat.hairpin);
        let c = parse(&["up", "--lan", "l", "--wan", "w"]).unwrap();
        let Command::Up(u) = c.command else { panic!() };
        assert_eq!(u.overrides().spec(), Some(Spec::new("l", "w")));
        assert_eq!(Overrides { lan: Some("l".into()), ..Overrides::default() }.spec(), None, "--wan missing");
        assert!(matches!(
            parse(&["flows", "flush"]).unwrap().command,
            Command::Flows(flows::FlowsArgs { action: Some(FlowsAction::Flush), .. })
        ));
    }

    #[test]
    fn help_renders_and_names_the_defaults() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("hairpin") && help.contains("--pin-dir"));
        // The flags' defaults are written in their help (they are not clap defaults, so that a
        // flag not given keeps a pinned value): they must be the spec's.
        let up = Cli::command().find_subcommand_mut("up").unwrap().render_long_help().to_string();
        let d = crate::spec::Spec::new("l", "w");
        for default in [
            format!("[default: {}]", d.nat.port_range),
            format!("[default: {}]", d.timeouts.tcp_established),
            format!("[default: {}]", d.timeouts.tcp_transitory),
            format!("[default: {}]", d.timeouts.udp),
            format!("[default: {}]", d.timeouts.icmp),
            format!("[default: {}]", d.dataplane.max_flows),
            "[default: address-and-port-dependent]".into(),
        ] {
            assert!(up.contains(&default), "up --help lacks {default}");
        }
    }
}
