//! Bounds-checked reading and writing of the fixed binary layouts that get signed (boot
//! tokens, redemption claims). All integers are big-endian.
//!
//! Signed structures need one exact byte string per value, so these layouts have no optional
//! fields, no varints and no padding: each field has one width and one position.

/// Why a byte string could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    #[error("the input ends after {actual} bytes, but this layout is {expected} bytes long")]
    Truncated { expected: usize, actual: usize },
    #[error("{extra} bytes follow the end of the layout")]
    TrailingBytes { extra: usize },
}

/// Checks that `input` is exactly `expected` bytes long, naming which way it is wrong.
pub fn check_length(input: &[u8], expected: usize) -> Result<(), EncodingError> {
    match input.len() {
        actual if actual < expected => Err(EncodingError::Truncated { expected, actual }),
        actual if actual > expected => Err(EncodingError::TrailingBytes {
            extra: actual - expected,
        }),
        _ => Ok(()),
    }
}

/// Reads fields front to back from a byte string.
pub struct Reader<'a> {
    input: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self { input, position: 0 }
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], EncodingError> {
        let truncated = EncodingError::Truncated {
            expected: self.position.saturating_add(N),
            actual: self.input.len(),
        };
        let bytes = self
            .input
            .get(self.position..)
            .and_then(|rest| rest.get(..N))
            .ok_or(truncated)?;
        self.position += N;
        <[u8; N]>::try_from(bytes).map_err(|_| truncated)
    }

    pub fn u16(&mut self) -> Result<u16, EncodingError> {
        self.array().map(u16::from_be_bytes)
    }

    pub fn u32(&mut self) -> Result<u32, EncodingError> {
        self.array().map(u32::from_be_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, EncodingError> {
        self.array().map(u64::from_be_bytes)
    }

    /// Succeeds only if every byte has been read: a canonical encoding has no slack.
    pub fn finish(self) -> Result<(), EncodingError> {
        match self.input.len() - self.position {
            0 => Ok(()),
            extra => Err(EncodingError::TrailingBytes { extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_fields_in_order() {
        let mut reader = Reader::new(&[0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 9]);
        assert_eq!(reader.u16(), Ok(1));
        assert_eq!(reader.u32(), Ok(2));
        assert_eq!(reader.u64(), Ok(3));
        assert_eq!(reader.array::<1>(), Ok([9]));
        assert_eq!(reader.finish(), Ok(()));
    }

    #[test]
    fn reports_truncation_and_trailing_bytes() {
        let mut reader = Reader::new(&[1, 2, 3]);
        assert_eq!(
            reader.u32(),
            Err(EncodingError::Truncated {
                expected: 4,
                actual: 3
            })
        );
        assert_eq!(reader.u16(), Ok(0x0102));
        assert_eq!(
            reader.finish(),
            Err(EncodingError::TrailingBytes { extra: 1 })
        );
        assert_eq!(
            check_length(&[0; 3], 4),
            Err(EncodingError::Truncated {
                expected: 4,
                actual: 3
            })
        );
        assert_eq!(
            check_length(&[0; 5], 4),
            Err(EncodingError::TrailingBytes { extra: 1 })
        );
        assert_eq!(check_length(&[0; 4], 4), Ok(()));
    }
}
