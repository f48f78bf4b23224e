//! Embeds the eBPF crate's helper object (built by hairpin-ctl's build script, which says where
//! through its `links` metadata): the lab's and benchmarks' programs, kept out of the object
//! that `up` loads.
fn main() {
    let helpers =
        std::env::var("DEP_HAIRPIN_EBPF_HELPERS").expect("hairpin-ctl's build script gives the helper object's path");
    println!("cargo::rerun-if-changed={helpers}");
    println!("cargo::rustc-env=HAIRPIN_HELPERS_OBJECT={helpers}");
}
