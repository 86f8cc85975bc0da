//! The `pgbridge` command: everything is in the library ([`pgbridge::cli`]).

fn main() -> std::process::ExitCode {
    pgbridge::cli::main()
}
