//! The `flashsale` command: parses arguments and calls the library.

use std::process::ExitCode;

use clap::Parser;

use flashsale::cli::{self, Cli};

/// mimalloc rather than glibc's allocator: the request path allocates and frees many
/// small buffers across worker threads, where glibc's `malloc`, `free` and
/// `malloc_consolidate` took about 14 % of the engine's CPU under reserve load (README,
/// Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    cli::run(Cli::parse()).await
}
