//! A Prometheus server of its own (Debian's `prometheus`), scraping given targets every
//! second and evaluating given rule files every second, with its data in a temporary
//! directory.

use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_listening};

/// How long Prometheus may take to listen.
const START_WITHIN: Duration = Duration::from_secs(30);

/// A running `prometheus`; stopped and its data removed on drop.
pub struct LocalPrometheus {
    server: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl LocalPrometheus {
    /// Starts `prometheus` (`$FLASHSALE_PROMETHEUS`, or the one on `PATH`) scraping
    /// `targets` (`host:port`) as job `job`, with `rule_files` (copied in, every group's
    /// interval made one second so that a test need not wait for the deployed one).
    pub fn start(job: &str, targets: &[String], rule_files: &[&Path]) -> io::Result<Self> {
        let binary =
            std::env::var_os("FLASHSALE_PROMETHEUS").unwrap_or_else(|| "prometheus".into());
        let dir = tempfile::Builder::new().prefix("prometheus-").tempdir()?;
        let mut rules = Vec::new();
        for (i, file) in rule_files.iter().enumerate() {
            let text = std::fs::read_to_string(file)?;
            let fast: String = text
                .lines()
                .map(|line| match line.trim_start().strip_prefix("interval:") {
                    Some(_) => format!(
                        "{}interval: 1s",
                        &line[..line.len() - line.trim_start().len()]
                    ),
                    None => line.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            let copy = dir.path().join(format!("rules-{i}.yml"));
            std::fs::write(&copy, fast)?;
            rules.push(copy);
        }
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let rule_list = rules
            .iter()
            .map(|r| format!("  - '{}'\n", r.display()))
            .collect::<String>();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{rule_list}\
             scrape_configs:\n  - job_name: '{job}'\n    static_configs:\n      - targets: [{targets}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config)?;
        let port = free_port()?;
        let server = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start {binary:?} (Debian: apt-get install prometheus): {e}"),
                )
            })?;
        let prometheus = Self {
            server,
            port,
            _dir: dir,
        };
        wait_listening(port, START_WITHIN, "prometheus")?;
        Ok(prometheus)
    }

    /// Its HTTP API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalPrometheus {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
