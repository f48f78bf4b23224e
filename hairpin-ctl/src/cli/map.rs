//! `map`'s arguments: forwards added, deleted and listed one at a time.

use clap::Subcommand;

use crate::{
    cli::{HostPort, JsonArg},
    spec::Proto,
};

#[derive(Debug, Subcommand)]
pub enum MapCommand {
    /// Forward PUBLIC_IP:PORT to PRIVATE_IP:PORT for one protocol.
    ///
    /// Example: hairpin-ctl map add tcp 203.0.113.1:80 192.168.0.2:80
    /// The public address must be the gateway's public address, and the target a host in the
    /// LAN prefix other than the gateway. A public port a LAN host's masquerade binding holds
    /// is refused. (A configuration file's forwards are applied with `apply`.)
    Add {
        #[arg(value_enum)]
        proto: Proto,
        /// Public address and port, e.g. 203.0.113.1:80.
        #[arg(value_name = "PUBLIC_IP:PORT")]
        public: HostPort,
        /// LAN server address and port, e.g. 192.168.0.2:80.
        #[arg(value_name = "PRIVATE_IP:PORT")]
        private: HostPort,
    },
    /// Delete a mapping, and the flows it created (the forward stops at once).
    Del {
        #[arg(value_enum)]
        proto: Proto,
        #[arg(value_name = "PUBLIC_IP:PORT")]
        public: HostPort,
    },
    /// List the mappings, each with its live flows and the packets and bytes they have carried
    /// (both directions; flows that ended are no longer counted).
    List(JsonArg),
}
