//! systemd generator; see `trident::generator` and docs/units.md.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(trident::generator::main(&args));
}
