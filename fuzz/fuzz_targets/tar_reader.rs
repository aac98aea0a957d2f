//! Arbitrary bytes through the bounded tar reader, as the docker-archive
//! indexer uses it (headers parsed, member data located, nothing followed).
//! Whatever the input: no panic, no hang, and no buffer beyond the header
//! budget (`cargo xtask test` runs it with `-rss_limit_mb=1024 -malloc_limit_mb=256`: a record
//! buffered whole, as the `tar` crate did, is a finding).

#![no_main]

use libfuzzer_sys::fuzz_target;
use supermachine_rootfs::archive::{ArchiveIndex, MemberKind};

/// What the docker-archive indexer allows one member's records.
const MAX_HEADER_BYTES: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let Ok(mut index) = ArchiveIndex::new(data, MAX_HEADER_BYTES) else {
        return;
    };
    let mut members = 0usize;
    while let Ok(Some(member)) = index.next_member() {
        members += 1;
        if let MemberKind::File { offset, size } = member.kind {
            // The index promises every range lies within the archive.
            let end = offset.checked_add(size).expect("range overflows");
            assert!(end <= data.len() as u64, "member past the end");
        }
        // Every header takes at least one block.
        assert!(members <= data.len() / 512 + 1, "more members than blocks");
    }
});
