//! A streaming tar reader that understands what image layers contain:
//! POSIX ustar, PAX extended headers, GNU long names and old-style GNU
//! sparse members.
//!
//! Why not the `tar` crate: version 0.4 splits PAX records on newlines
//! instead of using their length prefix, so a binary xattr value containing
//! a `0x0a` byte (a capability mask, an ACL entry for uid 10) makes the whole
//! layer unreadable, and once a record is unparseable it silently ignores
//! the PAX `size`/`uid`/`gid` that follow — a parser differential with
//! Docker. It also buffers long-name and PAX records without a bound. This
//! reader parses records by length, bounds every buffered byte, and follows
//! Go's `archive/tar` (what Docker and containerd use) where readers
//! disagree: header-only types (links, devices, directories, fifos) carry no
//! data whatever their size field says, blank numeric fields read as 0, a
//! typeflag of NUL with a trailing `/` is a directory, PAX global headers
//! are returned to the caller, who ignores them.

use std::io::{self, Read};

use crate::spool::{read_full, Contents};

const BLOCK: usize = 512;

/// A stream the reader takes members from. Skipping is reading and
/// discarding unless the source can seek (an archive file on disk).
pub(crate) trait Source: Read {
    /// Moves `n` bytes forward; `UnexpectedEof` if the stream ends first.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = read_full(self, &mut buf[..want])?;
            if got < want {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            n -= got as u64;
        }
        Ok(())
    }
}

impl Source for &[u8] {}

/// Why a stream could not be read as tar.
#[derive(Debug)]
pub(crate) enum TarError {
    /// The underlying reader failed (or ended early: `UnexpectedEof`).
    Io(io::Error),
    /// The bytes are not a valid tar stream.
    Corrupt(String),
    /// PAX / long-name records of one member exceed the budget.
    TooLarge,
    /// A valid but unsupported construct.
    Unsupported(&'static str),
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

fn corrupt(msg: impl Into<String>) -> TarError {
    TarError::Corrupt(msg.into())
}

/// One member, with PAX and GNU extensions applied.
#[derive(Debug, Default)]
pub(crate) struct Member {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    /// Typeflag after normalization (`\0` becomes `0` or `5`).
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub major: u32,
    pub minor: u32,
    /// Logical size of the contents (the real size for sparse members).
    pub size: u64,
    /// Bytes of contents stored in the stream: `size` minus the holes of a
    /// sparse member, 0 for header-only types.
    pub stored: u64,
    /// Offset of the member's data in the stream (after its headers).
    pub data_offset: u64,
    /// A GNU sparse member: its stored bytes are not its contents in order.
    pub sparse: bool,
    /// `SCHILY.xattr.*` records: full xattr name and raw value, in order.
    pub xattrs: Vec<Record>,
    /// PAX `mtime` that could not be parsed (the header's is used).
    pub bad_pax_time: bool,
}

/// A PAX record or an xattr: key and value bytes.
type Record = (Vec<u8>, Vec<u8>);

/// Data chunks of a GNU sparse member: (logical offset, stored length).
type SparseMap = Vec<(u64, u64)>;

/// Reads members one after the other from `src`.
pub(crate) struct Reader<R> {
    src: R,
    max_meta: u64,
    /// Bytes consumed from `src` so far.
    pos: u64,
    /// Where the headers of the member being read (or last read) start.
    header_offset: u64,
    /// Stored bytes of the current member not yet read by the caller.
    remaining: u64,
    /// Padding after the current member's data.
    padding: u64,
    sparse: Option<SparseMap>,
    /// Index of the first chunk of `sparse` that ends after `logical`: a
    /// cursor, so reading a member with many chunks stays linear.
    chunk: usize,
    /// Logical read position within the current member.
    logical: u64,
    logical_size: u64,
}

impl<R: Source> Reader<R> {
    /// `max_meta` bounds the PAX and long-name bytes buffered for one member.
    pub fn new(src: R, max_meta: u64) -> Self {
        Self {
            src,
            max_meta,
            pos: 0,
            header_offset: 0,
            remaining: 0,
            padding: 0,
            sparse: None,
            chunk: 0,
            logical: 0,
            logical_size: 0,
        }
    }

    /// Gives back the source, positioned after the last consumed block.
    pub fn into_inner(self) -> R {
        self.src
    }

    /// Offset in the stream of the headers of the member being read (or
    /// of the end-of-archive marker), for error messages.
    pub fn header_offset(&self) -> u64 {
        self.header_offset
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        self.src.skip(n)?;
        self.pos += n;
        Ok(())
    }

    /// Reads one 512-byte block; `false` at a clean end of stream.
    fn block(&mut self, b: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let n = read_full(&mut self.src, b)?;
        self.pos += n as u64;
        match n {
            0 => Ok(false),
            BLOCK => Ok(true),
            n => Err(corrupt(format!(
                "stream ends inside a header ({n} of 512 bytes)"
            ))),
        }
    }

    /// Reads the body of an extension member into memory, within budget.
    fn body(&mut self, size: u64, budget: &mut u64) -> Result<Vec<u8>, TarError> {
        if size > *budget {
            return Err(TarError::TooLarge);
        }
        *budget -= size;
        // Read before allocating: a header may claim more than the stream
        // holds, and the budget alone may be large.
        let mut v = Vec::new();
        let got = (&mut self.src).take(size).read_to_end(&mut v)?;
        self.pos += got as u64;
        if (got as u64) < size {
            return Err(TarError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.skip(pad(size))?;
        Ok(v)
    }

    /// The next member, or `None` at the end of the archive.
    pub fn next_member(&mut self) -> Result<Option<Member>, TarError> {
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        self.sparse = None;
        self.chunk = 0;
        self.header_offset = self.pos;
        let mut budget = self.max_meta;
        let mut pax: Vec<Record> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut h = [0u8; BLOCK];
        loop {
            if !self.block(&mut h)? {
                if pax.is_empty() && long_name.is_none() && long_link.is_none() {
                    return Ok(None);
                }
                return Err(corrupt("stream ends after an extension header"));
            }
            if h.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            verify_checksum(&h)?;
            let typeflag = h[156];
            let size = number(&h[124..136], "size")?;
            match typeflag {
                b'x' => {
                    let body = self.body(size, &mut budget)?;
                    pax.extend(parse_pax(&body)?);
                }
                b'L' => long_name = Some(cstr(&self.body(size, &mut budget)?).to_vec()),
                b'K' => long_link = Some(cstr(&self.body(size, &mut budget)?).to_vec()),
                _ => {
                    let m = self.finish(&h, size, &mut budget, pax, long_name, long_link)?;
                    return Ok(Some(m));
                }
            }
        }
    }

    fn finish(
        &mut self,
        h: &[u8; BLOCK],
        size: u64,
        budget: &mut u64,
        pax: Vec<Record>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Member, TarError> {
        let posix = &h[257..263] == b"ustar\0";
        let gnu = &h[257..263] == b"ustar ";
        let mut path = cstr(&h[0..100]).to_vec();
        if posix && h[345] != 0 {
            let mut p = cstr(&h[345..500]).to_vec();
            p.push(b'/');
            p.extend_from_slice(&path);
            path = p;
        }
        let mut m = Member {
            path: long_name.unwrap_or(path),
            link: long_link.unwrap_or_else(|| cstr(&h[157..257]).to_vec()),
            typeflag: h[156],
            mode: u32::try_from(number(&h[100..108], "mode")? & 0o7777_7777)
                .map_err(|_| corrupt("bad mode"))?,
            uid: number(&h[108..116], "uid")?,
            gid: number(&h[116..124], "gid")?,
            mtime: i64::try_from(number(&h[136..148], "mtime")?).unwrap_or(i64::MAX),
            size,
            ..Member::default()
        };
        if posix || gnu {
            m.major = u32::try_from(number(&h[329..337], "devmajor")?).unwrap_or(u32::MAX);
            m.minor = u32::try_from(number(&h[337..345], "devminor")?).unwrap_or(u32::MAX);
        }
        let mut pax_size = None;
        for (k, v) in pax {
            match &k[..] {
                b"path" => m.path = v,
                b"linkpath" => m.link = v,
                b"uid" => m.uid = pax_number(&v, "uid")?,
                b"gid" => m.gid = pax_number(&v, "gid")?,
                b"size" => pax_size = Some(pax_number(&v, "size")?),
                b"mtime" => match parse_pax_time(&v) {
                    Some((s, ns)) => (m.mtime, m.mtime_nsec) = (s, ns),
                    None => m.bad_pax_time = true,
                },
                _ if k.starts_with(b"SCHILY.xattr.") => {
                    m.xattrs.push((k[b"SCHILY.xattr.".len()..].to_vec(), v));
                }
                _ if k.starts_with(b"GNU.sparse.") => return Err(TarError::Unsupported(
                    "PAX-format sparse files (GNU.sparse.*); rebuild the layer without --sparse",
                )),
                _ => {}
            }
        }
        if let Some(s) = pax_size {
            m.size = s;
        }
        if m.typeflag == 0 {
            m.typeflag = if m.path.ends_with(b"/") { b'5' } else { b'0' };
        }
        let mut stored = m.size;
        if matches!(m.typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            stored = 0;
            m.size = 0;
        }
        if m.typeflag == b'S' {
            if !gnu {
                return Err(corrupt("sparse member without a GNU header"));
            }
            let (map, real) = self.sparse_map(h, stored, budget)?;
            m.size = real;
            m.typeflag = b'0';
            m.sparse = true;
            self.sparse = Some(map);
        }
        m.stored = stored;
        m.data_offset = self.pos;
        self.remaining = stored;
        self.padding = pad(stored);
        self.logical = 0;
        self.logical_size = m.size;
        Ok(m)
    }

    /// Reads the old GNU sparse map (header entries plus extension blocks).
    fn sparse_map(
        &mut self,
        h: &[u8; BLOCK],
        stored: u64,
        budget: &mut u64,
    ) -> Result<(SparseMap, u64), TarError> {
        let real = number(&h[483..495], "sparse real size")?;
        let mut map = SparseMap::new();
        let mut add = |e: &[u8]| -> Result<(), TarError> {
            if e.iter().all(|&b| b == 0) {
                return Ok(());
            }
            let off = number(&e[0..12], "sparse offset")?;
            let len = number(&e[12..24], "sparse length")?;
            map.push((off, len));
            Ok(())
        };
        for e in h[386..482].chunks(24) {
            add(e)?;
        }
        let mut extended = h[482] != 0;
        let mut ext = [0u8; BLOCK];
        while extended {
            if (BLOCK as u64) > *budget {
                return Err(TarError::TooLarge);
            }
            *budget -= BLOCK as u64;
            if !self.block(&mut ext)? {
                return Err(corrupt("stream ends inside a sparse map"));
            }
            for e in ext[..504].chunks(24) {
                add(e)?;
            }
            extended = ext[504] != 0;
        }
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in &map {
            let stop = off.checked_add(len).filter(|&s| off >= end && s <= real);
            end = stop.ok_or_else(|| corrupt("sparse map chunks overlap or exceed the size"))?;
            total += len;
        }
        if total != stored {
            return Err(corrupt("sparse map does not match the stored size"));
        }
        Ok((map, real))
    }

    /// The current member's contents (holes of sparse members read as
    /// zeros). Must be called at most once per member, before `next_member`.
    pub fn data(&mut self) -> Data<'_, R> {
        Data { r: self }
    }
}

/// Reader over one member's logical contents.
pub(crate) struct Data<'a, R> {
    r: &'a mut Reader<R>,
}

impl<R: Source> Data<'_, R> {
    /// Moves the sparse cursor to the first chunk that ends after the
    /// position and returns it.
    fn current_chunk(&mut self) -> Option<(u64, u64)> {
        let r = &mut *self.r;
        let map = r.sparse.as_ref()?;
        while let Some(&(off, len)) = map.get(r.chunk) {
            if off + len > r.logical {
                return Some((off, len));
            }
            r.chunk += 1;
        }
        None
    }
}

impl<R: Source> Contents for Data<'_, R> {
    fn hole_ahead(&mut self) -> u64 {
        if self.r.sparse.is_none() {
            return 0;
        }
        let end = match self.current_chunk() {
            Some((off, _)) => off,
            None => self.r.logical_size,
        };
        end.saturating_sub(self.r.logical)
    }

    fn skip_hole(&mut self, n: u64) {
        let n = n.min(self.hole_ahead());
        self.r.logical += n;
    }
}

impl<R: Source> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.r.logical_size - self.r.logical;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let mut want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if self.r.sparse.is_some() {
            let hole = self.hole_ahead();
            if hole > 0 {
                want = want.min(usize::try_from(hole).unwrap_or(usize::MAX));
                buf[..want].fill(0);
                self.r.logical += want as u64;
                return Ok(want);
            }
            if let Some((off, len)) = self.current_chunk() {
                let in_chunk = usize::try_from(off + len - self.r.logical).unwrap_or(usize::MAX);
                want = want.min(in_chunk);
            }
        }
        let r = &mut *self.r;
        let want = want.min(usize::try_from(r.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = r.src.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        r.pos += n as u64;
        r.remaining -= n as u64;
        r.logical += n as u64;
        Ok(n)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Bytes up to the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

fn verify_checksum(h: &[u8; BLOCK]) -> Result<(), TarError> {
    let stored = number(&h[148..156], "checksum")?;
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(corrupt("header checksum mismatch"))
    }
}

/// A numeric header field: octal text (blank means 0, as in Go) or GNU
/// base-256 (high bit set; negative values are refused).
fn number(field: &[u8], what: &str) -> Result<u64, TarError> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return Err(corrupt(format!("negative {what}")));
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| corrupt(format!("{what} overflows")))?;
        }
        return Ok(v);
    }
    let text = cstr(field);
    let text = trim(text);
    let mut v: u64 = 0;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(corrupt(format!("{what} field is not an octal number")));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| corrupt(format!("{what} overflows")))?;
    }
    Ok(v)
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' '] = b {
        b = rest;
    }
    b
}

fn pax_number(v: &[u8], what: &str) -> Result<u64, TarError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| corrupt(format!("PAX {what} is not a number")))
}

/// Splits a PAX body into records `"<len> <key>=<value>\n"`, using the
/// length prefix so values may hold any byte.
fn parse_pax(mut body: &[u8]) -> Result<Vec<Record>, TarError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.iter().all(|&b| b == 0) {
            break;
        }
        let sp = body
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or_else(|| corrupt("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&body[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("PAX record length is not a number"))?;
        if len <= sp + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err(corrupt("PAX record length does not match its contents"));
        }
        let rec = &body[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| corrupt("PAX record without '='"))?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        body = &body[len..];
    }
    Ok(out)
}

/// Parses a PAX time (`1700000000`, `1700000000.25`, `-1.5`) into seconds
/// and nanoseconds (nanoseconds always count forward from the seconds).
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut ns: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        ns += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, ns));
    }
    if ns == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1700000000, 0)));
        assert_eq!(parse_pax_time(b"12.25"), Some((12, 250_000_000)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }

    #[test]
    fn pax_records_by_length() {
        let r = parse_pax(b"12 a=b\nc\nd=\n8 k=v=w\n").unwrap();
        assert_eq!(r[0], (b"a".to_vec(), b"b\nc\nd=".to_vec()));
        assert_eq!(r[1], (b"k".to_vec(), b"v=w".to_vec()));
        assert!(parse_pax(b"99 a=b\n").is_err());
        assert!(parse_pax(b"x a=b\n").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0", "m").unwrap(), 0o644);
        assert_eq!(number(b"  755 \0", "m").unwrap(), 0o755);
        assert_eq!(number(b"\0\0\0\0", "m").unwrap(), 0);
        assert_eq!(number(&[0x80, 0, 0, 1, 0], "m").unwrap(), 256);
        assert!(number(b"9\0", "m").is_err());
        assert!(number(&[0xff; 12], "m").is_err());
    }
}
