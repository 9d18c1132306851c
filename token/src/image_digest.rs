//! The digest that binds a boot token to one VM image.

use sha2::{Digest, Sha256};

use crate::ids::ImageDigest;

/// Separates image digests from every other SHA-256 this system computes.
const DOMAIN: &[u8] = b"laundromat/image-digest/v1\0";

/// SHA-256 over a kernel, an optional initrd and a command line.
///
/// Input: `DOMAIN ‖ len(kernel) ‖ kernel ‖ initrd? ‖ len(cmdline) ‖ cmdline`, where each length
/// is a u64 big-endian and `initrd?` is the byte 0 when there is no initrd, or the byte 1, its
/// length and its bytes. The length prefixes make the split between the parts unambiguous: the
/// same bytes cut differently into kernel, initrd and command line give different digests,
/// and "no initrd" differs from "an empty initrd".
pub fn image_digest(kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> ImageDigest {
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
    ImageDigest(hasher.finalize().into())
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
    fn is_deterministic() {
        assert_eq!(
            image_digest(b"k", None, "console=ttyS0"),
            image_digest(b"k", None, "console=ttyS0")
        );
    }
}
