//! The `trident` command line.

/// Entry point of the `trident` binary; returns the process exit code.
pub fn main() -> i32 {
    0
}
