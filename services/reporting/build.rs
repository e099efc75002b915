//! Rebuild when a migration or a dashboard asset changes: both are embedded at compile time.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/reporting");
    println!("cargo:rerun-if-changed=assets");
}
