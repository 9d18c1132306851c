//! tcpdump in a test host's namespace, writing its text output to a file until stopped.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use laundromat_tests::netns::Host;

/// A running `tcpdump -n -tt -l` on one interface of a host; killed when dropped.
/// Its stderr stays open in `child`: tcpdump writes the rest of its "listening on" line, and its
/// closing counts, there, and a closed pipe would kill it with SIGPIPE.
pub struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `host`'s `iface` with `flags` and `filter` into `path`, and returns once
    /// its filter is attached (it says "listening on"), so nothing after is missed.
    pub fn start(
        host: &Host,
        iface: &str,
        flags: &[&str],
        filter: &str,
        path: &Path,
    ) -> Result<Self> {
        let mut cmd = host.command("tcpdump");
        cmd.args(["-i", iface, "-n", "-tt", "-l"])
            .args(flags)
            .arg(filter)
            .stdout(fs::File::create(path)?)
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .context("cannot start tcpdump (apt-get install tcpdump)")?;
        // Dropped on error, which stops tcpdump.
        let mut capture = Capture {
            child,
            path: path.to_owned(),
        };
        let stderr = capture.child.stderr.as_mut().context("tcpdump stderr")?;
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            let mut b = [0u8; 256];
            let n = stderr.read(&mut b)?;
            if n == 0 || Instant::now() > deadline {
                bail!("tcpdump did not start: {}", String::from_utf8_lossy(&seen));
            }
            seen.extend_from_slice(&b[..n]);
        }
        Ok(capture)
    }

    /// Stops tcpdump and returns what it printed.
    pub fn finish(mut self) -> Result<String> {
        self.stop();
        Ok(fs::read_to_string(&self.path)?)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}
