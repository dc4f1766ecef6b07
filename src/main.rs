fn main() -> std::process::ExitCode {
    labelgate::cli::main()
}
