//! `flashsale-loadtest`: parses arguments and calls the library.

use std::process::ExitCode;

use clap::Parser;

use flashsale_loadtest::cli::{self, Cli};

/// mimalloc, as the engine: the generator's CPU per request is part of what two shared
/// cores can offer.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    cli::run(Cli::parse()).await
}
