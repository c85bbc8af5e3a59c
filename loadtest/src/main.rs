//! `flashsale-loadtest`: parses arguments and calls the library.

use std::process::ExitCode;

use clap::Parser;

use flashsale_loadtest::cli::{self, Cli};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    cli::run(Cli::parse()).await
}
