//! A headless Chromium behind its WebDriver: Debian's `chromedriver` on a free loopback
//! port, in a process group of its own so that the browsers it starts go with it, and a
//! browser profile in a temporary directory.

use std::io;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

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
            .process_group(0)
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
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > START_WITHIN {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "chromedriver did not listen in time",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
        // The whole group: chromedriver and any Chromium a failed test left open.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(format!("-{}", self.driver.id()))
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
