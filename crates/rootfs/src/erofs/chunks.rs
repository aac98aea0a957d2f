//! Sparse files as chunk-based inodes, so holes stay holes in the image.
//!
//! A flat EROFS file stores every block, zeros included: a layer with an
//! 8 GiB sparse file (or 8 GiB of zeros, which gzip shrinks to a few MiB)
//! would become an 8 GiB image. A chunk-based inode instead has a block map
//! after it: one `__le32` block address per chunk of `4 KiB << bits`, with
//! `NULL_ADDR` for a chunk that is all hole, which the kernel reads as
//! zeros without touching the image (Linux 5.15+, erofs-utils 1.4+).
//!
//! Which 4 KiB blocks are holes comes from the spool (blocks it never
//! wrote). Small chunks keep more holes but make the map bigger, so the
//! chunk size is chosen per file to minimise map plus data; a file whose
//! best chunked form is no smaller than the flat one stays flat. The choice
//! depends only on the file's contents, so images stay reproducible.

use super::format::{BLOCK, BLOCK_MAP_ENTRY, MAX_CHUNK_BITS};
use crate::spool::HoleMap;

/// How one file is split into chunks, and which of them hold data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkPlan {
    /// `log2(chunk size / 4 KiB)`: the inode's chunk format.
    pub bits: u8,
    /// Number of chunks (the block map's length).
    pub chunks: u64,
    /// Blocks the data chunks occupy in the data area.
    pub data_blocks: u64,
    /// Bit `k` set: chunk `k` holds data.
    data: Vec<u64>,
    /// The file's size in blocks.
    blocks: u64,
}

impl ChunkPlan {
    /// True if chunk `k` has data (is not a hole).
    pub fn is_data(&self, k: u64) -> bool {
        self.data
            .get((k / 64) as usize)
            .is_some_and(|w| w & (1 << (k % 64)) != 0)
    }

    /// Blocks chunk `k` occupies when it holds data (the last is partial).
    pub fn chunk_blocks(&self, k: u64) -> u64 {
        let first = k << self.bits;
        (1u64 << self.bits).min(self.blocks - first)
    }

    /// Bytes of the block map.
    pub fn map_bytes(&self) -> u64 {
        self.chunks * BLOCK_MAP_ENTRY
    }
}

/// The cheapest chunked form of a file of `size` bytes whose hole blocks
/// are `holes`, or `None` when storing it flat is as small.
pub(crate) fn plan(size: u64, holes: &HoleMap) -> Option<ChunkPlan> {
    let blocks = size.div_ceil(BLOCK);
    if blocks == 0 {
        return None;
    }
    let levels = usize::from(MAX_CHUNK_BITS) + 1;
    // For every chunk size at once: data chunks and the blocks they take.
    let mut last = vec![u64::MAX; levels];
    let mut data_blocks = vec![0u64; levels];
    for block in holes.data_blocks(blocks) {
        for (bits, last) in last.iter_mut().enumerate() {
            let chunk = block >> bits;
            if *last != chunk {
                *last = chunk;
                data_blocks[bits] += (1u64 << bits).min(blocks - (chunk << bits));
            }
        }
    }
    let cost = |bits: usize| -> u128 {
        let chunks = blocks.div_ceil(1 << bits);
        u128::from(chunks) * u128::from(BLOCK_MAP_ENTRY)
            + u128::from(data_blocks[bits]) * u128::from(BLOCK)
    };
    let bits = (0..levels).min_by_key(|&b| (cost(b), b))?;
    if cost(bits) >= u128::from(blocks) * u128::from(BLOCK) {
        return None;
    }
    let chunks = blocks.div_ceil(1 << bits);
    let mut data = vec![0u64; chunks.div_ceil(64) as usize];
    for block in holes.data_blocks(blocks) {
        let k = block >> bits;
        data[(k / 64) as usize] |= 1 << (k % 64);
    }
    Some(ChunkPlan {
        bits: bits as u8,
        chunks,
        data_blocks: data_blocks[bits],
        data,
        blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holes(n: u64, data: &[u64]) -> HoleMap {
        let mut h = HoleMap::default();
        for b in 0..n {
            if !data.contains(&b) {
                h.set(b);
            }
        }
        h
    }

    #[test]
    fn a_mostly_hole_file_gets_large_chunks_and_a_small_map() {
        // 8 GiB, data in the first and the middle block.
        let blocks = 2u64 << 20;
        let mut h = HoleMap::default();
        for b in 1..blocks {
            if b != blocks / 2 {
                h.set(b);
            }
        }
        let p = plan(blocks * BLOCK, &h).unwrap();
        assert!(p.is_data(0) && p.is_data((blocks / 2) >> p.bits));
        let total = p.map_bytes() + p.data_blocks * BLOCK;
        assert!(total < 1 << 20, "{p:?} costs {total}");
    }

    #[test]
    fn dense_files_stay_flat_and_the_last_chunk_is_partial() {
        assert_eq!(
            plan(10 * BLOCK, &holes(10, &(0..10).collect::<Vec<_>>())),
            None
        );
        // One hole block in the middle of 3: map (12 bytes) + 2 blocks wins.
        let p = plan(3 * BLOCK - 100, &holes(3, &[0, 2])).unwrap();
        assert_eq!((p.bits, p.chunks, p.data_blocks), (0, 3, 2));
        assert!(p.is_data(0) && !p.is_data(1) && p.is_data(2));
        assert_eq!(p.chunk_blocks(2), 1);
    }
}
