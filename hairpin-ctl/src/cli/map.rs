//! `map`'s arguments: forwards added, deleted and listed one at a time.

use clap::Subcommand;

use crate::{
    cli::{HostPort, JsonArg},
    spec::Proto,
};

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Forward PUBLIC_IP:PORT to PRIVATE_IP:PORT for one protocol, at runtime.
    ///
    /// Example: hairpin-ctl map add tcp 203.0.113.1:80 192.168.0.2:80
    /// The public address must be the gateway's public address, and the target a host in the
    /// LAN prefix other than the gateway. A public port a LAN host's masquerade binding holds
    /// is refused. A forward added here outlives reloads of the configuration file (`apply`,
    /// SIGHUP to `run`), unless the file declares the same port (the file's then takes it);
    /// `show` does not write it.
    Add {
        #[arg(value_enum)]
        proto: Proto,
        /// Public address and port, e.g. 203.0.113.1:80.
        #[arg(value_name = "PUBLIC_IP:PORT")]
        public: HostPort,
        /// LAN server address and port, e.g. 192.168.0.2:80.
        #[arg(value_name = "PRIVATE_IP:PORT")]
        private: HostPort,
        /// Remove the forward, with its flows, this many seconds from now (at `run`'s first
        /// sweep after it; without `run`, it stays). [default: never]
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..))]
        lifetime: Option<u32>,
    },
    /// Delete a forward (of any origin), and the flows it created (it stops at once).
    Del {
        #[arg(value_enum)]
        proto: Proto,
        #[arg(value_name = "PUBLIC_IP:PORT")]
        public: HostPort,
    },
    /// List the forwards, each with its origin (file or runtime), its live flows and the
    /// packets and bytes they have carried (both directions; flows that ended are no longer
    /// counted).
    List(JsonArg),
}
