//! Directory contents: blocks of `erofs_dirent`s followed by their names.
//!
//! Entries are sorted by name bytes across the whole directory (`.` and `..`
//! included) because the kernel binary-searches first over blocks, then
//! within a block. A block's entry count is implied by the first entry's
//! `nameoff`; a name ends where the next one starts, or at a NUL (the zero
//! padding of a full block), or at the directory size in the last block.

use super::format::{put16, put64, BLOCK, DIRENT_SIZE};

/// One directory entry to encode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub name: &'a [u8],
    pub nid: u64,
    pub file_type: u8,
}

/// How a directory's sorted entries split into blocks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// Index of the first entry of each block.
    pub starts: Vec<usize>,
    /// `i_size`: whole blocks plus the used bytes of the last one.
    pub size: u64,
}

/// Packs entries with these name lengths (in sorted order) into blocks.
pub(crate) fn plan(name_lens: impl Iterator<Item = usize>) -> Plan {
    let mut starts = vec![0];
    let mut used = 0usize;
    for (index, len) in name_lens.enumerate() {
        let need = DIRENT_SIZE + len;
        if used + need > BLOCK as usize {
            starts.push(index);
            used = 0;
        }
        used += need;
    }
    let size = (starts.len() as u64 - 1) * BLOCK + used as u64;
    Plan { starts, size }
}

/// Appends one block's worth of entries (without trailing padding).
pub(crate) fn encode_block(entries: &[Entry<'_>], out: &mut Vec<u8>) {
    let start = out.len();
    let mut nameoff = entries.len() * DIRENT_SIZE;
    out.resize(start + nameoff, 0);
    for (i, e) in entries.iter().enumerate() {
        let d = &mut out[start + i * DIRENT_SIZE..start + (i + 1) * DIRENT_SIZE];
        put64(d, 0, e.nid);
        // Fits: a block holds at most BLOCK bytes, checked by `plan`.
        put16(d, 8, nameoff as u16);
        d[10] = e.file_type;
        nameoff += e.name.len();
    }
    for e in entries {
        out.extend_from_slice(e.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_sizes() {
        let p = plan([1usize, 2, 3].into_iter());
        assert_eq!(p.starts, vec![0]);
        assert_eq!(p.size, 36 + 6);
        // 300 entries of 20-byte names: 32 bytes each, 128 per block.
        let p = plan(std::iter::repeat_n(20, 300));
        assert_eq!(p.starts, vec![0, 128, 256]);
        assert_eq!(p.size, 2 * 4096 + 44 * 32);
    }

    #[test]
    fn block_bytes() {
        let e = [
            Entry {
                name: b".",
                nid: 36,
                file_type: 2,
            },
            Entry {
                name: b"..",
                nid: 36,
                file_type: 2,
            },
        ];
        let mut out = Vec::new();
        encode_block(&e, &mut out);
        assert_eq!(out.len(), 24 + 3);
        assert_eq!(u16::from_le_bytes([out[8], out[9]]), 24);
        assert_eq!(u16::from_le_bytes([out[20], out[21]]), 25);
        assert_eq!(&out[24..], b"...");
    }
}
