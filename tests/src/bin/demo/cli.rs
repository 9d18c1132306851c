//! The product's own commands, run inside a namespace host as a user would type them, shown as
//! they run, each under a deadline.
use super::*;

use std::io::Read as _;

/// How long one command may take (token purchases hash a chain; nothing takes long).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the binaries are, and where the demo keeps its files.
pub(super) struct Tools {
    pub(super) bin: PathBuf,
    pub(super) dir: PathBuf,
}

impl Tools {
    pub(super) fn path(&self, program: &str) -> PathBuf {
        self.bin.join(program)
    }

    /// `program args…` inside `host`, shown as `[host] $ program args…`.
    pub(super) fn command(&self, host: &Host, program: &str, args: &[&str]) -> Command {
        let mut command = host.command(self.path(program));
        command.args(args);
        command
    }

    /// Runs `program args… --json` inside `host` and parses what it prints.
    pub(super) fn json(
        &self,
        host: &Host,
        program: &str,
        args: &[&str],
        out: Out,
    ) -> Result<Value> {
        let text = self.text(host, program, &[args, &["--json"]].concat(), out)?;
        serde_json::from_str(text.trim())
            .with_context(|| format!("`{program}` printed something that is not JSON: {text}"))
    }

    /// Runs `program args…` inside `host`; its stdout, or an error with its stderr.
    pub(super) fn text(
        &self,
        host: &Host,
        program: &str,
        args: &[&str],
        out: Out,
    ) -> Result<String> {
        let (status, stdout, stderr) = self.run(host, program, args, out)?;
        ensure!(
            status.success(),
            "`{program} {}` failed ({status}): {}",
            args.join(" "),
            stderr.trim()
        );
        Ok(stdout)
    }

    /// Runs `program args… --json` and parses what it prints, whatever its exit status (for
    /// commands such as `broker check` that report a failure as JSON).
    pub(super) fn json_any_status(
        &self,
        host: &Host,
        program: &str,
        args: &[&str],
        out: Out,
    ) -> Result<Value> {
        let (status, stdout, stderr) =
            self.run(host, program, &[args, &["--json"]].concat(), out)?;
        serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "`{program}` ({status}) printed no JSON: {stdout} {}",
                stderr.trim()
            )
        })
    }

    fn run(
        &self,
        host: &Host,
        program: &str,
        args: &[&str],
        out: Out,
    ) -> Result<(ExitStatus, String, String)> {
        out.line(format_args!(
            "[{}] $ {program} {}",
            host.name(),
            shown(args)
        ));
        let mut command = self.command(host, program, args);
        output_within(&mut command, COMMAND_TIMEOUT)
            .with_context(|| format!("cannot run `{program}`"))
    }
}

/// Arguments as a user would read them: long hex strings shortened.
pub(super) fn shown(args: &[&str]) -> String {
    let short = |arg: &&str| match arg.len() > 24 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        true => format!("{}…", &arg[..12]),
        false => arg.to_string(),
    };
    args.iter().map(short).collect::<Vec<_>>().join(" ")
}

/// Runs `command` to its end, killing it after `timeout`: its status, stdout and stderr.
fn output_within(command: &mut Command, timeout: Duration) -> Result<(ExitStatus, String, String)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pipe = |stream: Option<Box<dyn io::Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = pipe(child.stdout.take().map(|s| Box::new(s) as _));
    let stderr = pipe(child.stderr.take().map(|s| Box::new(s) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline || STOP.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{}` did not finish within {timeout:?}",
                command_line(command)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let text = |handle: thread::JoinHandle<String>| handle.join().unwrap_or_default();
    Ok((status, text(stdout), text(stderr)))
}

/// `value[key]` as a string, or an error naming what was missing.
pub(super) fn string(value: &Value, key: &str) -> Result<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no {key:?} in {value}"))
}

/// `value[key]` as a number, or an error naming what was missing.
pub(super) fn number(value: &Value, key: &str) -> Result<u64> {
    value
        .get(key)
        .and_then(Value::as_u64)
        .with_context(|| format!("no number {key:?} in {value}"))
}
