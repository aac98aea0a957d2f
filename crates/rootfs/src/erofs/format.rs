//! EROFS on-disk structures, as defined by Linux `fs/erofs/erofs_fs.h`
//! (6.1). All fields are little-endian; encoders write exactly the sizes the
//! kernel checks with `BUILD_BUG_ON`.

/// Block size; the only one Linux 6.1 mounts on 4 KiB-page machines.
pub const BLOCK: u64 = 4096;
/// `log2(BLOCK)`.
pub const BLOCK_BITS: u8 = 12;
/// Where the superblock starts in block 0.
pub const SUPER_OFFSET: usize = 1024;
/// Size of the superblock without extension slots.
pub const SUPER_SIZE: usize = 128;
/// `EROFS_SUPER_MAGIC_V1`.
pub const MAGIC: u32 = 0xE0F5_E1E2;
/// Extended inodes carry the modification time (not ctime).
pub const FEATURE_COMPAT_MTIME: u32 = 0x2;
/// Inode slot size: a nid is a byte offset in the metadata area / 32.
pub const SLOT: u64 = 32;
/// Compact (32-byte) inode.
pub const COMPACT_SIZE: usize = 32;
/// Extended (64-byte) inode.
pub const EXTENDED_SIZE: usize = 64;
/// Uncompressed, all data in whole blocks at `raw_blkaddr`.
pub const FLAT_PLAIN: u8 = 0;
/// Uncompressed, whole blocks at `raw_blkaddr` and the partial last block
/// stored right after the inode (and its xattrs) in the metadata area.
pub const FLAT_INLINE: u8 = 2;
/// Uncompressed, data in chunks of `4 KiB << chunkbits` whose block
/// addresses follow the inode (and its xattrs) as a `__le32` block map; a
/// chunk at [`NULL_ADDR`] is a hole that reads as zeros (Linux 5.15+).
pub const CHUNK_BASED: u8 = 4;
/// `EROFS_FEATURE_INCOMPAT_CHUNKED_FILE`: the image has chunk-based inodes.
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// Largest `chunkbits` in `erofs_inode_chunk_info.format`
/// (`EROFS_CHUNK_FORMAT_BLKBITS_MASK`).
pub const MAX_CHUNK_BITS: u8 = 0x1f;
/// Size of one block map entry.
pub const BLOCK_MAP_ENTRY: u64 = 4;
/// `raw_blkaddr` of an inode that has no whole blocks; in a block map, a
/// hole.
pub const NULL_ADDR: u32 = u32::MAX;
/// Size of one on-disk directory entry.
pub const DIRENT_SIZE: usize = 12;

/// Directory entry file types (`FT_*` of Linux `fs_types.h`).
pub mod ft {
    pub const REG: u8 = 1;
    pub const DIR: u8 = 2;
    pub const CHR: u8 = 3;
    pub const BLK: u8 = 4;
    pub const FIFO: u8 = 5;
    pub const SYMLINK: u8 = 7;
}

/// `S_IF*` file type bits of `i_mode`.
pub mod ifmt {
    pub const REG: u16 = 0o100000;
    pub const DIR: u16 = 0o040000;
    pub const LNK: u16 = 0o120000;
    pub const CHR: u16 = 0o020000;
    pub const BLK: u16 = 0o060000;
    pub const FIFO: u16 = 0o010000;
}

/// The fields of `struct erofs_super_block` this writer sets.
#[derive(Debug, Clone, Default)]
pub struct SuperBlock {
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: i64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: u32,
}

impl SuperBlock {
    /// The 128 on-disk bytes. No checksum: the `SB_CHKSUM` feature is off.
    pub fn encode(&self) -> [u8; SUPER_SIZE] {
        let mut b = [0u8; SUPER_SIZE];
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 4, 0); // checksum
        put32(&mut b, 8, FEATURE_COMPAT_MTIME);
        b[12] = BLOCK_BITS;
        b[13] = 0; // sb_extslots
        put16(&mut b, 14, self.root_nid);
        put64(&mut b, 16, self.inos);
        put64(&mut b, 24, self.build_time as u64);
        put32(&mut b, 32, self.build_time_nsec);
        put32(&mut b, 36, self.blocks);
        put32(&mut b, 40, self.meta_blkaddr);
        put32(&mut b, 44, 0); // xattr_blkaddr: no shared xattrs
        b[48..64].copy_from_slice(&self.uuid);
        b[64..80].copy_from_slice(&self.volume_name);
        put32(&mut b, 80, self.feature_incompat);
        // compression, devices, dirblkbits, packed_nid: all zero for an
        // uncompressed single-device image.
        b
    }
}

/// An inode in either on-disk form.
#[derive(Debug, Clone, Default)]
pub struct RawInode {
    pub extended: bool,
    pub layout: u8,
    pub xattr_icount: u16,
    /// Type and permission bits.
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    /// `raw_blkaddr` for files, directories and symlinks; the encoded device
    /// number for device nodes; the chunk format (`chunkbits`) for
    /// chunk-based files.
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

impl RawInode {
    /// On-disk size of this inode.
    pub fn disk_size(&self) -> usize {
        if self.extended {
            EXTENDED_SIZE
        } else {
            COMPACT_SIZE
        }
    }

    /// Appends the on-disk bytes. The caller has chosen `extended` so that
    /// every value fits (see `layout::needs_extended`).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.disk_size(), 0);
        let b = &mut out[start..];
        let format = u16::from(self.extended) | (u16::from(self.layout) << 1);
        put16(b, 0, format);
        put16(b, 2, self.xattr_icount);
        put16(b, 4, self.mode);
        if self.extended {
            put64(b, 8, self.size);
            put32(b, 16, self.i_u);
            put32(b, 20, self.ino);
            put32(b, 24, self.uid);
            put32(b, 28, self.gid);
            put64(b, 32, self.mtime as u64);
            put32(b, 40, self.mtime_nsec);
            put32(b, 44, self.nlink);
        } else {
            put16(b, 6, self.nlink as u16);
            put32(b, 8, self.size as u32);
            put32(b, 16, self.i_u);
            put32(b, 20, self.ino);
            put16(b, 24, self.uid as u16);
            put16(b, 26, self.gid as u16);
        }
    }
}

/// Linux `new_encode_dev`: 12-bit major, 20-bit minor, interleaved so that
/// old 8:8 numbers keep their encoding.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Largest major number [`encode_dev`] can hold.
pub const MAX_MAJOR: u32 = 0xfff;
/// Largest minor number [`encode_dev`] can hold.
pub const MAX_MINOR: u32 = 0xf_ffff;

pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_fields() {
        let sb = SuperBlock {
            root_nid: 36,
            ..Default::default()
        };
        let b = sb.encode();
        assert_eq!(&b[0..4], &MAGIC.to_le_bytes());
        assert_eq!(b[12], 12);
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), 36);
        let mut v = Vec::new();
        RawInode::default().encode(&mut v);
        assert_eq!(v.len(), 32);
        RawInode {
            extended: true,
            layout: FLAT_INLINE,
            ..Default::default()
        }
        .encode(&mut v);
        assert_eq!(v.len(), 96);
        assert_eq!(v[32], 1 | (2 << 1));
    }

    #[test]
    fn dev_encoding_matches_linux() {
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(8, 0x123), 0x10_0823);
    }
}
