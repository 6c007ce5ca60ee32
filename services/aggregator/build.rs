//! `sqlx::migrate!` embeds the workspace's migrations at build time; rebuild when they change.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
