//! `flashsale-loadtest serve`: the engine over a private Redis (or Redis Cluster) started
//! for this run, in the foreground, for a person to try (`scripts/serve.sh`). The engine is
//! the real `flashsale serve` next to this binary; the Redis and the ledger beside it (unless
//! the engine's arguments name one) are gone when it stops, so every try-out starts clean.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use flashsale_testkit::LocalClusterOptions;
use tokio::signal::unix::{signal, SignalKind};

use crate::private_redis::PrivateRedis;
use crate::spawn::engine_binary;

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// A Redis Cluster of this shape instead of one Redis.
    pub cluster: Option<LocalClusterOptions>,
    /// More arguments for `flashsale serve`.
    pub engine_args: Vec<String>,
}

/// What the engine's own arguments (and environment) already say, read the way `flashsale
/// serve` reads them; `None` when they do not parse (the engine then says why).
fn engine_matches(engine_args: &[String]) -> Option<ArgMatches> {
    let argv = ["flashsale", "serve"]
        .into_iter()
        .map(str::to_owned)
        .chain(engine_args.iter().cloned());
    flashsale::cli::Cli::command()
        .try_get_matches_from(argv)
        .ok()?
        .subcommand_matches("serve")
        .cloned()
}

/// Whether the engine's arguments choose a ledger, or none, themselves.
fn chooses_ledger(matches: &ArgMatches) -> bool {
    let database_url = matches.try_get_one::<String>("database_url");
    let no_ledger = matches.try_get_one::<bool>("no_ledger");
    matches!(database_url, Ok(Some(_))) || matches!(no_ledger, Ok(Some(true)))
}

/// Starts the private Redis and the engine on it, forwards SIGINT and SIGTERM to the engine,
/// and stops the Redis once the engine has exited; exits as the engine did.
pub async fn serve(options: &ServeOptions) -> anyhow::Result<ExitCode> {
    let matches = engine_matches(&options.engine_args);
    if let Some(matches) = &matches {
        // The private Redis is the point of this command: another one would be ignored
        // half-way (the engine takes the last --redis-url) or refused by the engine.
        anyhow::ensure!(
            matches.value_source("redis_url") != Some(ValueSource::CommandLine),
            "flashsale-loadtest serve gives the engine its private Redis: drop --redis-url \
             (or run flashsale serve itself)"
        );
    }
    let engine = engine_binary()?;
    let redis = PrivateRedis::start(options.cluster)?;
    println!("{}", redis.describe());
    let mut command = tokio::process::Command::new(engine);
    command.arg("serve").args(redis.engine_args());
    let ledger_dir = tempfile::Builder::new()
        .prefix("flashsale-serve-")
        .tempdir()?;
    if !matches.as_ref().is_some_and(chooses_ledger) {
        let url = format!("sqlite://{}/ledger.db", ledger_dir.path().display());
        println!("ledger: {url}");
        command.args(["--database-url", &url]);
    }
    command.args(&options.engine_args).kill_on_drop(true);
    let mut child = command.spawn()?;
    let status = forward_signals_until_exit(&mut child).await?;
    // The engine is gone: now its Redis and ledger may go.
    drop(redis);
    drop(ledger_dir);
    Ok(exit_code(status))
}

/// Waits for `child` to exit, passing on every SIGINT and SIGTERM this process gets.
async fn forward_signals_until_exit(
    child: &mut tokio::process::Child,
) -> std::io::Result<ExitStatus> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let name = tokio::select! {
            status = child.wait() => return status,
            _ = interrupt.recv() => "-INT",
            _ = terminate.recv() => "-TERM",
        };
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill")
                .args([name, &pid.to_string()])
                .status()
                .await;
        }
    }
}

/// The engine's exit code; 128 + the signal's number if a signal ended it, as a shell says.
fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_ledger_is_added_unless_the_engine_args_choose_one() {
        std::env::remove_var("FLASHSALE_DATABASE_URL");
        std::env::remove_var("FLASHSALE_NO_LEDGER");
        let chooses = |words: &[&str]| engine_matches(&args(words)).map(|m| chooses_ledger(&m));
        assert_eq!(chooses(&[]), Some(false));
        assert_eq!(chooses(&["--admin-token", "t"]), Some(false));
        assert_eq!(chooses(&["--database-url", "sqlite://x.db"]), Some(true));
        assert_eq!(chooses(&["--database-url=postgres://h/db"]), Some(true));
        assert_eq!(chooses(&["--no-ledger"]), Some(true));
        // Not flashsale serve's arguments: the engine will say so itself.
        assert_eq!(chooses(&["--no-such-flag"]), None);
        let given = engine_matches(&args(&["--redis-url", "redis://x"])).unwrap();
        assert_eq!(
            given.value_source("redis_url"),
            Some(ValueSource::CommandLine)
        );
        let default = engine_matches(&[]).unwrap();
        assert_ne!(
            default.value_source("redis_url"),
            Some(ValueSource::CommandLine)
        );
    }
}
