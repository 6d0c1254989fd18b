fn main() {
    std::process::exit(trident::cli::main());
}
