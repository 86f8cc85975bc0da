//! The `pgbridge` command: everything is in the library ([`pgbridge::cli`]).

/// mimalloc's thread-local free lists: a relayed or captured frame allocates and frees its
/// buffers on the session's thread, where glibc's malloc spent 5-8% of pgbridge's CPU
/// (docs/ARCHITECTURE.md, "Performance notes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pgbridge::cli::main()
}
