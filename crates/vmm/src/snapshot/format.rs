//! The on-disk envelope of a state blob.
//!
//! ```text
//! offset  size  field
//!      0     8  magic            b"SMSTATE\0"
//!      8     4  format version   u32 little-endian (FORMAT_VERSION)
//!     12     4  reserved         zero
//!     16     8  body length      u64 little-endian
//!     24     4  body crc32       u32 little-endian (IEEE, crc32fast)
//!     28     4  header crc32     over bytes 0..28
//!     32     …  body             postcard encoding of the state tree
//! ```
//!
//! Decoding checks, in order: enough bytes for a header, the magic, the
//! header checksum, the version, the exact length, the body checksum, then
//! parses the body and requires it to be consumed entirely. Every failure is
//! a [`FormatError`]; nothing panics on any input.
//!
//! Bump [`FORMAT_VERSION`] whenever a state struct changes shape: postcard
//! is not self-describing, so a blob is only readable by the version that
//! wrote it. (Raw KVM structs inside are stored in host byte order, which is
//! fine for an x86_64-only VMM.)

use serde::{de::DeserializeOwned, Serialize};

/// The first eight bytes of every state blob.
pub const MAGIC: [u8; 8] = *b"SMSTATE\0";
/// The envelope and state layout this build writes and reads (see the
/// module doc for when to bump it).
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of header before the body.
pub const HEADER_LEN: usize = 32;

/// Why a blob is not a state this build can read, or a state could not be
/// encoded; the checks come in the order of the variants.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than a header.
    #[error("state blob too short for a header: {len} bytes, need {HEADER_LEN}")]
    TooShort {
        /// The blob's length in bytes.
        len: usize,
    },
    /// The blob does not start with [`MAGIC`]: not a state blob at all.
    #[error("not a supermachine state blob (bad magic {found:02x?})")]
    BadMagic {
        /// The blob's first eight bytes.
        found: [u8; 8],
    },
    /// The header's checksum does not match: its length and version fields
    /// cannot be trusted.
    #[error(
        "state header is corrupted (header checksum {found:#010x}, computed {computed:#010x})"
    )]
    HeaderChecksum {
        /// The checksum stored in the header.
        found: u32,
        /// The checksum of the header's bytes as read.
        computed: u32,
    },
    /// Written by a build with another [`FORMAT_VERSION`].
    #[error("state blob has format version {found}; this build reads only version {expected}")]
    UnsupportedVersion {
        /// The blob's version.
        found: u32,
        /// The one this build reads.
        expected: u32,
    },
    /// Fewer body bytes than the header says.
    #[error("state blob truncated: header promises {expected} body bytes, {found} present")]
    Truncated {
        /// Body bytes the header promises.
        expected: u64,
        /// Body bytes present.
        found: u64,
    },
    /// More bytes after the body than the header says.
    #[error("state blob has {extra} unexpected bytes after the body")]
    TrailingBytes {
        /// Bytes past the promised body.
        extra: u64,
    },
    /// The body's checksum does not match.
    #[error("state body is corrupted (checksum {found:#010x}, computed {computed:#010x})")]
    BodyChecksum {
        /// The checksum stored in the header.
        found: u32,
        /// The checksum of the body as read.
        computed: u32,
    },
    /// The body passed its checksum but is not a state of the expected type
    /// (or has bytes left over); postcard's error, as text.
    #[error("state body does not parse: {0}")]
    Body(String),
    /// The state could not be serialized; postcard's error, as text.
    #[error("state does not serialize: {0}")]
    Encode(String),
}

/// Serialize `state` into a self-checking blob.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FormatError> {
    let body = postcard::to_allocvec(state).map_err(|e| FormatError::Encode(e.to_string()))?;
    Ok(envelope(&body))
}

/// `body` (an encoded state) in the envelope, with its header and
/// checksums: what [`encode`] writes. Public for tests and fuzzing, which
/// put bodies of their own in a valid envelope.
pub fn envelope(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let header_crc = crc32fast::hash(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Check and parse a blob written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::TooShort { len: bytes.len() });
    }
    let (header, body) = bytes.split_at(HEADER_LEN);
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&header[..8]);
    if magic != MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let found = u32_at(header, 28);
    let computed = crc32fast::hash(&header[..28]);
    if found != computed {
        return Err(FormatError::HeaderChecksum { found, computed });
    }
    let version = u32_at(header, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let expected = u64::from_le_bytes(len);
    let present = body.len() as u64;
    if present < expected {
        return Err(FormatError::Truncated {
            expected,
            found: present,
        });
    }
    if present > expected {
        return Err(FormatError::TrailingBytes {
            extra: present - expected,
        });
    }
    let found = u32_at(header, 24);
    let computed = crc32fast::hash(body);
    if found != computed {
        return Err(FormatError::BodyChecksum { found, computed });
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| FormatError::Body(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FormatError::Body(format!(
            "{} bytes left over after the state",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Small {
        a: u64,
        name: String,
        words: Vec<u32>,
        regs: kvm_bindings::kvm_regs,
    }

    fn small() -> Small {
        Small {
            a: 0x0123_4567_89ab_cdef,
            name: "vcpu0".into(),
            words: vec![1, 2, 3, 0xffff_ffff],
            regs: kvm_bindings::kvm_regs {
                rip: 0xfff0,
                rax: 42,
                rflags: 2,
                ..Default::default()
            },
        }
    }

    #[test]
    fn round_trip() {
        let blob = encode(&small()).unwrap();
        assert_eq!(&blob[..8], &MAGIC);
        assert_eq!(decode::<Small>(&blob).unwrap(), small());
    }

    #[test]
    fn rejects_every_truncation() {
        let blob = encode(&small()).unwrap();
        for len in 0..blob.len() {
            let err = decode::<Small>(&blob[..len]).unwrap_err();
            if len < HEADER_LEN {
                assert_eq!(err, FormatError::TooShort { len });
            } else {
                assert!(matches!(err, FormatError::Truncated { .. }), "{len}: {err}");
            }
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert_eq!(
            decode::<Small>(&longer).unwrap_err(),
            FormatError::TrailingBytes { extra: 1 }
        );
    }

    #[test]
    fn rejects_every_flipped_bit() {
        let blob = encode(&small()).unwrap();
        for i in 0..blob.len() {
            for bit in 0..8 {
                let mut bad = blob.clone();
                bad[i] ^= 1 << bit;
                let err = decode::<Small>(&bad).unwrap_err();
                let expected_kind = match i {
                    0..8 => matches!(err, FormatError::BadMagic { .. }),
                    8..HEADER_LEN => matches!(err, FormatError::HeaderChecksum { .. }),
                    _ => matches!(err, FormatError::BodyChecksum { .. }),
                };
                assert!(expected_kind, "byte {i} bit {bit}: {err}");
            }
        }
    }

    #[test]
    fn rejects_other_versions_clearly() {
        let mut blob = encode(&small()).unwrap();
        blob[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&blob[..28]);
        blob[28..32].copy_from_slice(&crc.to_le_bytes());
        let err = decode::<Small>(&blob).unwrap_err();
        assert_eq!(
            err,
            FormatError::UnsupportedVersion {
                found: 2,
                expected: FORMAT_VERSION
            }
        );
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[test]
    fn garbage_with_valid_envelope_is_an_error_not_a_panic() {
        // A well-formed envelope around bytes that are not a `Small`.
        for body in [&b""[..], &[0xff; 7][..], &[0x80; 64][..], &[1, 2, 3][..]] {
            let blob = envelope(body);
            assert!(matches!(decode::<Small>(&blob), Err(FormatError::Body(_))));
        }
    }
}
