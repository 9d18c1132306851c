//! The digest that binds a boot token to one VM image.

use sha2::{Digest, Sha256};

use crate::ids::ImageDigest;

/// Separates image digests from every other SHA-256 this system computes.
const DOMAIN: &[u8] = b"laundromat/image-digest/v1\0";

/// Separates the disk part of an image digest from the parts before it.
const DISK_DOMAIN: &[u8] = b"laundromat/image-digest/disk/v1\0";

/// A disk image as the image digest binds it: its content's SHA-256 (the disk is named by
/// digest, never read whole into memory to be hashed again) and whether the VM may write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskPart {
    pub sha256: [u8; 32],
    pub readonly: bool,
}

/// SHA-256 over a kernel, an optional initrd and a command line.
///
/// Input: `DOMAIN ‖ len(kernel) ‖ kernel ‖ initrd? ‖ len(cmdline) ‖ cmdline`, where each length
/// is a u64 big-endian and `initrd?` is the byte 0 when there is no initrd, or the byte 1, its
/// length and its bytes. The length prefixes make the split between the parts unambiguous: the
/// same bytes cut differently into kernel, initrd and command line give different digests,
/// and "no initrd" differs from "an empty initrd".
pub fn image_digest(kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> ImageDigest {
    ImageDigest(hasher_over(kernel, initrd, cmdline).finalize().into())
}

/// [`image_digest`] for an image that may carry a disk. Without a disk it is exactly
/// [`image_digest`], so tokens bought for disk-less images stay valid. With one, the input
/// goes on after the command line with `DISK_DOMAIN ‖ sha256(disk) ‖ readonly (0 or 1)`:
/// every earlier part is length-prefixed, so no disk-less input is a prefix-equal of it, and
/// another disk, or the same disk writable instead of read-only, gives another digest.
pub fn image_digest_with_disk(
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    disk: Option<DiskPart>,
) -> ImageDigest {
    let mut hasher = hasher_over(kernel, initrd, cmdline);
    if let Some(disk) = disk {
        hasher.update(DISK_DOMAIN);
        hasher.update(disk.sha256);
        hasher.update([u8::from(disk.readonly)]);
    }
    ImageDigest(hasher.finalize().into())
}

fn hasher_over(kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(DOMAIN);
    update_with_length(&mut hasher, kernel);
    match initrd {
        None => hasher.update([0]),
        Some(initrd) => {
            hasher.update([1]);
            update_with_length(&mut hasher, initrd);
        }
    }
    update_with_length(&mut hasher, cmdline.as_bytes());
    hasher
}

fn update_with_length(hasher: &mut Sha256, part: &[u8]) {
    // usize is at most 64 bits on every target Rust supports, so this never saturates.
    let length = u64::try_from(part.len()).unwrap_or(u64::MAX);
    hasher.update(length.to_be_bytes());
    hasher.update(part);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_bytes_between_parts_changes_the_digest() {
        let digests = [
            image_digest(b"ab", Some(b"c"), "d"),
            image_digest(b"a", Some(b"bc"), "d"),
            image_digest(b"ab", Some(b"cd"), ""),
            image_digest(b"abc", None, "d"),
            image_digest(b"abc", Some(b""), "d"),
            image_digest(b"", None, "abcd"),
        ];
        for (i, a) in digests.iter().enumerate() {
            for b in &digests[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_disk_is_bound_and_no_disk_keeps_the_old_digest() {
        // Known answers, computed outside Rust over the documented input layout: the
        // disk-less digest is the one tokens were bought with before disks existed.
        let hex = |d: ImageDigest| crate::hex::encode(d.as_bytes());
        assert_eq!(
            hex(image_digest_with_disk(b"k", None, "c", None)),
            "28170730338bd1d7ca4a2ed3b5d24e992a64a4b61f97f258ca470c755af766c1"
        );
        let read_only = DiskPart {
            sha256: [1; 32],
            readonly: true,
        };
        assert_eq!(
            hex(image_digest_with_disk(b"k", None, "c", Some(read_only))),
            "c32e14127c1f754d49d59e24720029e82ef22b5a512f520a1bf3aa134a20d1eb"
        );
        assert_eq!(
            image_digest_with_disk(b"k", Some(b"i"), "c", None),
            image_digest(b"k", Some(b"i"), "c")
        );
        let disk = |byte, readonly| DiskPart {
            sha256: [byte; 32],
            readonly,
        };
        let digests = [
            image_digest(b"k", None, "c"),
            image_digest_with_disk(b"k", None, "c", Some(disk(1, false))),
            image_digest_with_disk(b"k", None, "c", Some(disk(2, false))),
            image_digest_with_disk(b"k", None, "c", Some(disk(1, true))),
        ];
        for (i, a) in digests.iter().enumerate() {
            for b in &digests[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn is_deterministic() {
        assert_eq!(
            image_digest(b"k", None, "console=ttyS0"),
            image_digest(b"k", None, "console=ttyS0")
        );
    }
}
