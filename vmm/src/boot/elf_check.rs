//! Validation of an ELF64 image before it is loaded: every loadable segment must lie inside
//! guest RAM and inside the file, so a corrupt or hostile image gets a precise error instead
//! of a half-written guest.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use vm_memory::ByteValued;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file (bad magic)")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    WrongClass,
    #[error("the ELF file is truncated: {0}")]
    Truncated(&'static str),
    #[error("the ELF file has {0} program headers, more than the 64 allowed")]
    TooManySegments(u16),
    #[error("the ELF file has no loadable segment")]
    NoSegments,
    #[error("ELF segment {index} at [{start:#x}, {end:#x}) lies outside guest RAM {ram}")]
    OutsideRam {
        index: usize,
        start: u64,
        end: u64,
        ram: String,
    },
    #[error("ELF segment {index} loads at {start:#x}, below the minimum {min:#x}")]
    BelowMinimum { index: usize, start: u64, min: u64 },
    #[error("ELF segment {index} claims {filesz} file bytes at offset {offset}, past the end of the {file_len}-byte file")]
    PastFileEnd {
        index: usize,
        offset: u64,
        filesz: u64,
        file_len: u64,
    },
    #[error("ELF segment {index} has more file bytes ({filesz}) than memory bytes ({memsz})")]
    FileLargerThanMemory {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("the ELF entry point {entry:#x} is not inside a loadable segment")]
    EntryOutside { entry: u64 },
    #[error("cannot read the ELF file")]
    Io(#[source] std::io::Error),
}

/// A loadable segment, as placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// What a valid image looks like once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedElf {
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// One past the highest byte any segment occupies.
    pub end: u64,
}

fn read_struct<T: ByteValued + Default>(f: &mut File, what: &'static str) -> Result<T, ElfError> {
    let mut v = T::default();
    f.read_exact(v.as_mut_slice()).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ElfError::Truncated(what),
        _ => ElfError::Io(e),
    })?;
    Ok(v)
}

fn describe(ram: &[(u64, u64)]) -> String {
    let parts: Vec<String> = ram
        .iter()
        .map(|&(s, l)| format!("[{s:#x}, {:#x})", s + l))
        .collect();
    parts.join(" ∪ ")
}

/// Checks `file` against guest RAM `ram` (ranges of `(start, len)`), requiring every segment
/// to start at or above `min_addr`.
pub fn check(file: &mut File, ram: &[(u64, u64)], min_addr: u64) -> Result<CheckedElf, ElfError> {
    let file_len = file.metadata().map_err(ElfError::Io)?.len();
    file.seek(SeekFrom::Start(0)).map_err(ElfError::Io)?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || magic != *b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    file.seek(SeekFrom::Start(0)).map_err(ElfError::Io)?;
    let ehdr: Elf64_Ehdr = read_struct(file, "ELF header")?;
    // EI_CLASS = 2 (64-bit), EI_DATA = 1 (little-endian).
    if ehdr.e_ident[4] != 2 || ehdr.e_ident[5] != 1 {
        return Err(ElfError::WrongClass);
    }
    if usize::from(ehdr.e_phentsize) != std::mem::size_of::<Elf64_Phdr>() {
        return Err(ElfError::Truncated("program header size"));
    }
    if ehdr.e_phnum > 64 {
        return Err(ElfError::TooManySegments(ehdr.e_phnum));
    }
    file.seek(SeekFrom::Start(ehdr.e_phoff))
        .map_err(ElfError::Io)?;
    let mut segments = Vec::new();
    for index in 0..usize::from(ehdr.e_phnum) {
        let ph: Elf64_Phdr = read_struct(file, "program headers")?;
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        if ph.p_filesz > ph.p_memsz {
            return Err(ElfError::FileLargerThanMemory {
                index,
                filesz: ph.p_filesz,
                memsz: ph.p_memsz,
            });
        }
        if ph
            .p_offset
            .checked_add(ph.p_filesz)
            .is_none_or(|e| e > file_len)
        {
            return Err(ElfError::PastFileEnd {
                index,
                offset: ph.p_offset,
                filesz: ph.p_filesz,
                file_len,
            });
        }
        let start = ph.p_paddr;
        let end = start.saturating_add(ph.p_memsz);
        if start < min_addr {
            return Err(ElfError::BelowMinimum {
                index,
                start,
                min: min_addr,
            });
        }
        if !ram.iter().any(|&(s, l)| start >= s && end <= s + l) {
            return Err(ElfError::OutsideRam {
                index,
                start,
                end,
                ram: describe(ram),
            });
        }
        segments.push(Segment {
            start,
            filesz: ph.p_filesz,
            memsz: ph.p_memsz,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    let entry = ehdr.e_entry;
    if !segments
        .iter()
        .any(|s| entry >= s.start && entry < s.start + s.memsz)
    {
        return Err(ElfError::EntryOutside { entry });
    }
    let end = segments
        .iter()
        .map(|s| s.start + s.memsz)
        .max()
        .unwrap_or(0);
    Ok(CheckedElf {
        entry,
        segments,
        end,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 with one PT_LOAD segment of `code` at `paddr`, entry at its start.
    pub fn tiny_elf(paddr: u64, code: &[u8], memsz: u64) -> Vec<u8> {
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..4].copy_from_slice(b"\x7fELF");
        ehdr.e_ident[4] = 2;
        ehdr.e_ident[5] = 1;
        ehdr.e_ident[6] = 1;
        ehdr.e_type = 2;
        ehdr.e_machine = 62;
        ehdr.e_version = 1;
        ehdr.e_entry = paddr;
        ehdr.e_phoff = 64;
        ehdr.e_ehsize = 64;
        ehdr.e_phentsize = 56;
        ehdr.e_phnum = 1;
        let ph = Elf64_Phdr {
            p_type: PT_LOAD,
            p_flags: 7,
            p_offset: 0x1000,
            p_vaddr: paddr,
            p_paddr: paddr,
            p_filesz: code.len() as u64,
            p_memsz: memsz,
            p_align: 0x1000,
        };
        let mut out = Vec::new();
        out.extend_from_slice(ehdr.as_slice());
        out.extend_from_slice(ph.as_slice());
        out.resize(0x1000, 0);
        out.extend_from_slice(code);
        out
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    const RAM: [(u64, u64); 1] = [(0, 64 << 20)];

    #[test]
    fn accepts_a_well_formed_image() {
        let mut f = file_with(&tiny_elf(0x100000, &[0xf4; 16], 0x2000));
        let elf = check(&mut f, &RAM, 0x100000).unwrap();
        assert_eq!(elf.entry, 0x100000);
        assert_eq!(elf.end, 0x102000);
    }

    #[test]
    fn rejects_segments_outside_ram_or_below_minimum() {
        let mut f = file_with(&tiny_elf(0x8000_0000, &[0; 16], 16));
        assert!(matches!(
            check(&mut f, &RAM, 0x100000),
            Err(ElfError::OutsideRam { .. })
        ));
        let mut f = file_with(&tiny_elf(0x1000, &[0; 16], 16));
        assert!(matches!(
            check(&mut f, &RAM, 0x100000),
            Err(ElfError::BelowMinimum { .. })
        ));
        let mut f = file_with(&tiny_elf(u64::MAX - 4, &[0; 16], 16));
        assert!(check(&mut f, &RAM, 0x100000).is_err());
    }

    #[test]
    fn rejects_non_elf_and_truncated_files() {
        let mut f = file_with(b"#!/bin/sh\necho not a kernel\n");
        assert!(matches!(check(&mut f, &RAM, 0), Err(ElfError::NotElf)));
        let full = tiny_elf(0x100000, &[0; 64], 64);
        for cut in [10, 64, 100, 0x1010] {
            let mut f = file_with(&full[..cut]);
            assert!(check(&mut f, &RAM, 0x100000).is_err(), "cut at {cut}");
        }
    }
}
