//! `hairpin-ctl run`: the long-running controller (see `service`).

use std::time::Duration;

use crate::{
    cli::gateway::{LogFormat, RunArgs, flag_of},
    dataplane::PinDir,
    service,
};

pub async fn run(pins: &PinDir, a: &RunArgs) -> anyhow::Result<()> {
    let o = service::Options {
        config: a.up.config.clone(),
        overrides: a.up.overrides(),
        flag: flag_of,
        json_log: a.log_format == LogFormat::Json,
        log_flows: a.log_flows,
        sweep_interval: Duration::from_secs(a.sweep_interval.into()),
    };
    service::run(pins, &o).await
}
