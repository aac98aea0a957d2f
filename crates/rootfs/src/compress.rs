//! Layer decompression, chosen by magic bytes, and the reader stack that
//! lets errors be blamed on the right party.
//!
//! The stack is: caller's reader → [`Counted`] (input bytes for progress,
//! marks caller I/O errors) → gzip / zstd / nothing → [`Tagged`] (marks
//! decoder errors, counts and hashes the uncompressed bytes, stops at the
//! unpacked-size budget) → the tar reader. Failures surface as
//! `io::Error`s; the flags in [`Flags`] say afterwards whether one came
//! from the source, the decoder or the budget, so that a truncated download
//! is not reported as a corrupt tar.
//!
//! The budget is enforced here, on the decoder's output, because that is
//! where a decompression bomb spends our CPU: every byte the tar reader
//! consumes, skips or reads after the end-of-archive marker passes through.

use std::cell::Cell;
use std::io::{self, Cursor, Read};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::spool::read_full;
use crate::ustar;

/// How a layer stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Decide from the first bytes (gzip `1f 8b`, zstd `28 b5 2f fd`,
    /// anything else is taken as tar).
    #[default]
    Auto,
    /// Plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip, possibly multi-member (`...tar+gzip`, Docker's `.tar.gzip`).
    Gzip,
    /// zstd, possibly multi-frame (`...tar+zstd`).
    Zstd,
}

/// What the first bytes of a stream look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Empty,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
    Other,
}

impl Sniffed {
    fn name(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Bzip2 => "bzip2",
            Self::Other => "uncompressed tar",
        }
    }

    fn of(head: &[u8]) -> Self {
        if head.is_empty() {
            Self::Empty
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Self::Xz
        } else if head.starts_with(b"BZh") {
            Self::Bzip2
        } else {
            Self::Other
        }
    }
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::None => "uncompressed tar",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// Shared error attribution flags and counters of one layer's reader stack.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    pub source_failed: Cell<bool>,
    pub decoder_failed: Cell<bool>,
    pub input_bytes: Cell<u64>,
    /// "gzip" / "zstd" / "" for messages.
    pub format: Cell<&'static str>,
    /// Unpacked bytes of this layer so far: uncompressed stream bytes plus
    /// the holes of sparse members.
    pub unpacked: Cell<u64>,
    /// How many unpacked bytes this layer may have (what the tree's cap
    /// leaves after the earlier layers).
    pub budget: Cell<u64>,
    /// The budget ran out.
    pub over_budget: Cell<bool>,
}

impl Flags {
    /// Counts `n` more unpacked bytes; false (and `over_budget` set) when
    /// that exceeds the budget.
    pub fn charge(&self, n: u64) -> bool {
        let total = self.unpacked.get().saturating_add(n);
        self.unpacked.set(total);
        if total > self.budget.get() {
            self.over_budget.set(true);
        }
        !self.over_budget.get()
    }
}

pub(crate) struct Counted<R> {
    inner: R,
    flags: Rc<Flags>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let f = &self.flags.input_bytes;
                f.set(f.get() + n as u64);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.flags.source_failed.set(true);
                }
                Err(e)
            }
        }
    }
}

pub(crate) struct Tagged<R> {
    inner: R,
    flags: Rc<Flags>,
    /// sha256 of the uncompressed stream: the layer's diff_id.
    hasher: Sha256,
}

impl<R> Tagged<R> {
    /// The sha256 of everything read so far.
    pub fn digest(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

impl<R: Read> Read for Tagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.flags.over_budget.get() {
            return Err(io::Error::other("the unpacked size limit was reached"));
        }
        let n = self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                self.flags.decoder_failed.set(true);
            }
        })?;
        if !self.flags.charge(n as u64) {
            return Err(io::Error::other("the unpacked size limit was reached"));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: Read> ustar::Source for Tagged<R> {}

/// The decompressed tar stream of one layer.
pub(crate) type TarStream<'a> = Tagged<Box<dyn Read + 'a>>;

/// Builds the reader stack for `src`.
pub(crate) fn open<'a, R: Read + 'a>(
    layer: usize,
    src: R,
    declared: Compression,
    flags: &Rc<Flags>,
) -> Result<TarStream<'a>> {
    let mut counted = Counted {
        inner: src,
        flags: flags.clone(),
    };
    let mut head = [0u8; 6];
    let n = read_full(&mut counted, &mut head).map_err(|source| Error::Read { layer, source })?;
    let head = head[..n].to_vec();
    let sniffed = Sniffed::of(&head);
    let expected = match declared {
        Compression::Auto | Compression::None => None,
        Compression::Gzip => Some(Sniffed::Gzip),
        Compression::Zstd => Some(Sniffed::Zstd),
    };
    let mismatch = match (declared, sniffed) {
        (_, Sniffed::Empty) | (Compression::Auto, _) => false,
        (Compression::None, s) => matches!(s, Sniffed::Gzip | Sniffed::Zstd),
        (_, s) => Some(s) != expected,
    };
    if mismatch {
        return Err(Error::CompressionMismatch {
            layer,
            declared: declared.name(),
            found: sniffed.name(),
        });
    }
    let whole = Cursor::new(head).chain(counted);
    let decoded: Box<dyn Read + 'a> = match sniffed {
        Sniffed::Gzip if declared != Compression::None => {
            flags.format.set("gzip");
            Box::new(flate2::read::MultiGzDecoder::new(whole))
        }
        Sniffed::Zstd if declared != Compression::None => {
            flags.format.set("zstd");
            Box::new(zstd::stream::read::Decoder::new(whole).map_err(|source| {
                Error::Decompress {
                    layer,
                    format: "zstd",
                    source,
                }
            })?)
        }
        Sniffed::Xz | Sniffed::Bzip2 => {
            return Err(Error::UnsupportedCompression {
                layer,
                format: sniffed.name(),
            })
        }
        _ => Box::new(whole),
    };
    Ok(Tagged {
        inner: decoded,
        flags: flags.clone(),
        hasher: Sha256::new(),
    })
}
