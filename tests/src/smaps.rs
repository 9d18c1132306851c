//! A process's memory use from `/proc/PID/smaps`, split into guest RAM and the VMM's own
//! overhead.

use std::{fs, io};

use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SmapsError {
    #[error("cannot read /proc/{pid}/smaps")]
    Read {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("smaps line {line}: {problem}: {text:?}")]
    Malformed {
        line: usize,
        problem: &'static str,
        text: String,
    },
    #[error(
        "expected exactly one mapping of {guest_ram_bytes} bytes (the guest RAM), found {found}"
    )]
    GuestRam { guest_ram_bytes: u64, found: usize },
}

/// One mapping of a process: its address range, path (if a file or a kernel name such as
/// `[heap]` backs it) and resident size.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub path: Option<String>,
    pub rss_kib: u64,
}

impl Mapping {
    pub fn size_bytes(&self) -> u64 {
        self.end - self.start
    }

    /// Backed by a file (the binary, a shared library, a memory file), as opposed to anonymous
    /// memory or a kernel-named region like `[heap]` or `[stack]`.
    pub fn is_file_backed(&self) -> bool {
        self.path
            .as_deref()
            .is_some_and(|path| path.starts_with('/'))
    }
}

/// Reads and parses `/proc/PID/smaps`.
pub fn read(pid: u32) -> Result<Vec<Mapping>, SmapsError> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|source| SmapsError::Read { pid, source })?;
    parse(&text)
}

/// Parses the text of an smaps file. Only the header lines and `Rss:` are used.
pub fn parse(text: &str) -> Result<Vec<Mapping>, SmapsError> {
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut rss_seen = true;
    for (index, text_line) in text.lines().enumerate() {
        let malformed = |problem| SmapsError::Malformed {
            line: index + 1,
            problem,
            text: text_line.to_owned(),
        };
        let mut fields = text_line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = parse_range(first) {
            if !rss_seen {
                return Err(malformed("the previous mapping has no Rss line"));
            }
            rss_seen = false;
            let path = header_path(text_line);
            mappings.push(Mapping {
                start,
                end,
                path,
                rss_kib: 0,
            });
        } else if first == "Rss:" {
            let mapping = mappings
                .last_mut()
                .ok_or_else(|| malformed("Rss before the first mapping"))?;
            mapping.rss_kib = match (fields.next().map(str::parse), fields.next()) {
                (Some(Ok(kib)), Some("kB")) => kib,
                _ => return Err(malformed("expected `Rss: <n> kB`")),
            };
            rss_seen = true;
        }
    }
    if !rss_seen {
        return Err(SmapsError::Malformed {
            line: text.lines().count(),
            problem: "the last mapping has no Rss line",
            text: String::new(),
        });
    }
    Ok(mappings)
}

/// The path at the end of a header line (range, perms, offset, device, inode, path), which may
/// hold spaces.
fn header_path(line: &str) -> Option<String> {
    let mut rest = line;
    for _ in 0..5 {
        rest = rest.trim_start().split_once(char::is_whitespace)?.1;
    }
    let path = rest.trim();
    (!path.is_empty()).then(|| path.to_owned())
}

/// The resident KiB of every mapping of the file at `path`, such as a process's own binary.
pub fn file_rss_kib(mappings: &[Mapping], path: &str) -> u64 {
    mappings
        .iter()
        .filter(|mapping| mapping.path.as_deref() == Some(path))
        .map(|mapping| mapping.rss_kib)
        .sum()
}

fn parse_range(field: &str) -> Option<(u64, u64)> {
    let (start, end) = field.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    (start <= end).then_some((start, end))
}

/// A VMM process's resident memory, in KiB, split into the guest's RAM and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MemoryUsage {
    /// Everything resident: the sum of every mapping's Rss (the process's VmRSS).
    pub total_rss_kib: u64,
    /// The part of the guest-RAM mapping the guest (or the VMM) has touched.
    pub guest_rss_kib: u64,
    /// Overhead in file-backed mappings: the VMM binary's text and data, shared libraries.
    pub file_overhead_kib: u64,
    /// Overhead in anonymous memory: heap, stacks, other buffers.
    pub anon_overhead_kib: u64,
}

impl MemoryUsage {
    /// Splits `mappings` on the single mapping whose size is `guest_ram_bytes`: anonymous guest
    /// memory and a `--mem-file` mapping both appear so.
    pub fn split(mappings: &[Mapping], guest_ram_bytes: u64) -> Result<Self, SmapsError> {
        let (guest, rest): (Vec<&Mapping>, Vec<&Mapping>) = mappings
            .iter()
            .partition(|mapping| mapping.size_bytes() == guest_ram_bytes);
        let [guest] = guest[..] else {
            return Err(SmapsError::GuestRam {
                guest_ram_bytes,
                found: guest.len(),
            });
        };
        let sum = |file_backed: bool| {
            rest.iter()
                .filter(|mapping| mapping.is_file_backed() == file_backed)
                .map(|mapping| mapping.rss_kib)
                .sum::<u64>()
        };
        let (file_overhead_kib, anon_overhead_kib) = (sum(true), sum(false));
        Ok(MemoryUsage {
            total_rss_kib: guest.rss_kib + file_overhead_kib + anon_overhead_kib,
            guest_rss_kib: guest.rss_kib,
            file_overhead_kib,
            anon_overhead_kib,
        })
    }

    /// What the VMM itself keeps resident: everything but the guest's RAM.
    pub fn overhead_kib(&self) -> u64 {
        self.file_overhead_kib + self.anon_overhead_kib
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55f0a8652000-55f0a8700000 r-xp 00001000 fd:01 1234                       /opt/laundromat/target/release/vmm
Size:                696 kB
Rss:                 600 kB
Pss:                 600 kB
VmFlags: rd ex mr mw me sd
55f0a9000000-55f0a9021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  40 kB
THPeligible:    0
7f8b03200000-7f8b13200000 rw-p 00000000 00:00 0 
Size:             262144 kB
Rss:                  64 kB
Anonymous:            64 kB
7f8b14000000-7f8b14001000 r--p 00000000 fd:01 99                         /tmp/a file with spaces
Size:                  4 kB
Rss:                   4 kB
7ffd0000000-7ffd0021000 rw-p 00000000 00:00 0                            [stack]
Size:                132 kB
Rss:                  12 kB
";

    #[test]
    fn parses_headers_paths_and_rss() {
        let mappings = parse(SAMPLE).expect("valid sample");
        assert_eq!(mappings.len(), 5);
        assert_eq!(
            mappings[0],
            Mapping {
                start: 0x55f0a8652000,
                end: 0x55f0a8700000,
                path: Some("/opt/laundromat/target/release/vmm".into()),
                rss_kib: 600,
            }
        );
        assert_eq!(mappings[1].path.as_deref(), Some("[heap]"));
        assert_eq!(mappings[2].path, None);
        assert_eq!(mappings[2].size_bytes(), 256 << 20);
        assert_eq!(mappings[3].path.as_deref(), Some("/tmp/a file with spaces"));
        assert!(mappings[3].is_file_backed() && !mappings[4].is_file_backed());
    }

    #[test]
    fn splits_guest_ram_from_overhead() {
        let mappings = parse(SAMPLE).expect("valid sample");
        let usage = MemoryUsage::split(&mappings, 256 << 20).expect("one guest mapping");
        assert_eq!(
            usage,
            MemoryUsage {
                total_rss_kib: 720,
                guest_rss_kib: 64,
                file_overhead_kib: 604,
                anon_overhead_kib: 52,
            }
        );
        assert_eq!(usage.overhead_kib(), 656);
        assert_eq!(
            file_rss_kib(&mappings, "/opt/laundromat/target/release/vmm"),
            600
        );
        assert!(matches!(
            MemoryUsage::split(&mappings, 128 << 20),
            Err(SmapsError::GuestRam { found: 0, .. })
        ));
    }

    #[test]
    fn rejects_malformed_text() {
        assert!(parse("Rss: 4 kB\n").is_err());
        assert!(parse("1000-2000 rw-p 0 00:00 0\nRss: four kB\n").is_err());
        assert!(parse("1000-2000 rw-p 0 00:00 0\nSize: 4 kB\n").is_err());
        assert_eq!(parse("").map(|m| m.len()).ok(), Some(0));
    }
}
