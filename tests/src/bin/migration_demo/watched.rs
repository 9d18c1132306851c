//! The demo's child processes, their consoles shown line by line as they arrive.
use super::*;

/// A child whose console is shown line by line as it arrives.
pub(super) struct Watched {
    pub(super) label: &'static str,
    pub(super) child: Option<BoundedChild>,
    pub(super) pid: u32,
    /// Complete console lines so far, and how many have been shown.
    pub(super) lines: Vec<String>,
    pub(super) shown: usize,
    pub(super) end: Option<End>,
}

/// How a child ended.
pub(super) struct End {
    pub(super) status: ExitStatus,
    /// Whether the last of `lines` was never finished with a newline.
    pub(super) cut: bool,
    pub(super) stderr: String,
}

/// Text no child prints; waiting for it ends only when a console closes (see `Watched::poll`).
pub(super) const NEVER_PRINTED: &str = "\0\0never printed\0\0";
/// How long an exited child's console may take to be read to its end.
pub(super) const DRAIN: Duration = Duration::from_secs(2);
/// How many times an exited child's stderr is looked at while it is still empty.
pub(super) const STDERR_LOOKS: u32 = 5;

impl Watched {
    pub(super) fn spawn(label: &'static str, command: &mut Command, out: Out) -> Result<Self> {
        out.line(format_args!("[{label}] {}", command_line(command)));
        let child = BoundedChild::spawn(label, command)?;
        Ok(Watched {
            label,
            pid: child.pid(),
            child: Some(child),
            lines: Vec::new(),
            shown: 0,
            end: None,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    pub(super) fn finished(&self) -> bool {
        self.end.is_some()
    }

    /// Takes in new console lines; once the child has exited, reads its console to the end and
    /// records how it ended.
    pub(super) fn poll(&mut self) -> Result<()> {
        let Some(child) = &mut self.child else {
            return Ok(());
        };
        let exited = !child.is_running()?;
        let stderr = match exited {
            true => drain(child),
            false => String::new(),
        };
        // The console stays far below BoundedChild's 1 MiB window, so it only grows and its
        // line count is a stable position.
        let console = child.console();
        let (complete, tail) = console.rsplit_once('\n').unwrap_or(("", &console));
        if console.contains('\n') {
            let new = complete.split('\n').skip(self.lines.len());
            self.lines
                .extend(new.map(|line| line.trim_end_matches('\r').to_owned()));
        }
        if !exited {
            return Ok(());
        }
        let cut = !tail.is_empty();
        if cut {
            self.lines.push(tail.to_owned());
        }
        // The child was reaped by `is_running`, so `kill` sends nothing and returns the status
        // it exited with.
        if let Some(child) = self.child.take() {
            let status = child.kill().context("cannot read an exit status")?;
            self.end = Some(End {
                status,
                cut,
                stderr,
            });
        }
        Ok(())
    }

    /// Fails if the child has ended, with what it printed last.
    pub(super) fn check_running(&self) -> Result<()> {
        let Some(end) = &self.end else {
            return Ok(());
        };
        let last = self.lines.last().map_or("", String::as_str);
        bail!(
            "{}'s process ended early ({}); last console line: {last:?}; stderr: {:?}",
            self.label,
            end.status,
            end.stderr
        )
    }

    pub(super) fn take_unshown(&mut self) -> Vec<String> {
        let new = self.lines[self.shown..].to_vec();
        self.shown = self.lines.len();
        new
    }

    /// Shows new guest console lines. The switchover can pause the guest in the middle of a
    /// line: the source's console then ends with the line's start and the destination's
    /// begins with its rest.
    pub(super) fn show(&mut self, out: Out) {
        let label = format!("{:>7} |", self.label);
        let first = self.shown;
        let cut_at = match &self.end {
            Some(end) if end.cut => self.lines.len().checked_sub(1),
            _ => None,
        };
        for (index, line) in self.take_unshown().into_iter().enumerate() {
            let index = first + index;
            let lead = match index == 0 && !line.starts_with("bench:") {
                true => "...",
                false => "",
            };
            let cut = match Some(index) == cut_at {
                true => "...   (the console ends mid-line: a migrated guest goes on on host-b)",
                false => "",
            };
            out.line(format_args!("{label} {lead}{line}{cut}"));
        }
    }
}

/// Waits (bounded) until an exited child's console has been read to its end, and returns the
/// tail of its stderr. BoundedChild tells both only through a wait that fails: waiting for
/// text nobody prints ends with `Exited`, carrying the stderr tail, once the console has
/// closed. Its stderr reader may finish a moment after the console's, so an empty tail gets a
/// few more looks.
pub(super) fn drain(child: &mut BoundedChild) -> String {
    let mut stderr = String::new();
    for attempt in 0..STDERR_LOOKS {
        if attempt > 0 {
            thread::sleep(POLL);
        }
        if let Err(ProcessError::Exited { stderr: tail, .. }) = child.wait_for(NEVER_PRINTED, DRAIN)
        {
            let tail = tail.to_string();
            stderr = tail
                .trim_start_matches("; its stderr ends with:\n")
                .trim()
                .to_owned();
        }
        if !stderr.is_empty() {
            break;
        }
    }
    stderr
}
