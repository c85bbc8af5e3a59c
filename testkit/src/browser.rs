//! A headless Chromium behind its WebDriver: Debian's `chromedriver` on a free loopback
//! port, and a browser profile in a temporary directory; the browsers it started go with
//! it.

use std::io;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_listening};

/// How long chromedriver may take to listen.
const START_WITHIN: Duration = Duration::from_secs(20);

/// A running `chromedriver`; stopped (with every browser it started) on drop.
pub struct LocalBrowser {
    driver: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl LocalBrowser {
    /// Starts `chromedriver` (`$FLASHSALE_CHROMEDRIVER`, or the one on `PATH`) and waits
    /// until it listens.
    pub fn start() -> io::Result<Self> {
        let binary =
            std::env::var_os("FLASHSALE_CHROMEDRIVER").unwrap_or_else(|| "chromedriver".into());
        let port = free_port()?;
        let profile = tempfile::Builder::new().prefix("chromium-").tempdir()?;
        let driver = Command::new(&binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start {binary:?} (Debian: apt-get install chromium-driver): {e}"
                    ),
                )
            })?;
        let browser = Self {
            driver,
            port,
            profile,
        };
        wait_listening(port, START_WITHIN, "chromedriver")?;
        Ok(browser)
    }

    /// The WebDriver URL.
    pub fn webdriver_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Chromium's arguments for a headless session with a profile of its own, as
    /// `goog:chromeOptions.args`.
    pub fn chromium_args(&self, width: u32, height: u32) -> Vec<String> {
        vec![
            "--headless=new".to_owned(),
            // As root (a CI container) Chromium refuses to start sandboxed.
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", self.profile.path().display()),
        ]
    }
}

impl Drop for LocalBrowser {
    fn drop(&mut self) {
        // Any Chromium a failed test left open (its renderers go with it), then the driver.
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-P")
            .arg(self.driver.id().to_string())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
