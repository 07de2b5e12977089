//! The `hayloft` binary: command line, config and wiring of roles.
fn main() {}
