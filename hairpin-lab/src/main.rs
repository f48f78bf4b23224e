//! `cargo xtask lab` runs this: builds the lab, tells the hairpin story, tears it down.

use std::path::PathBuf;

fn main() -> std::process::ExitCode {
    let ctl =
        std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/release/hairpin-ctl"));
    let result = hairpin_lab::Lab::new(ctl).and_then(|mut lab| {
        println!(
            "lab {}: namespaces {}-{{gw,sw,srv,cli,inet,far}}\n  far host 192.0.2.10 -- router/internet host 198.51.100.7 -- wan0 [gateway 203.0.113.1 | 192.168.0.1] lan0 -- switch -- server 192.168.0.2, client 192.168.0.3\n",
            lab.prefix, lab.prefix
        );
        hairpin_lab::scenario::story(&mut lab, &mut |line| println!("{line}"))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
