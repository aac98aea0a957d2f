//! Inline xattrs: an `erofs_xattr_ibody_header` followed by entries stored
//! right after the inode.
//!
//! EROFS stores a name as a one-byte prefix index plus the rest of the name.
//! Linux 6.1 knows the indexes `user.`, `system.posix_acl_access`,
//! `system.posix_acl_default`, `trusted.` and `security.` (`lustre.` has no
//! handler there); long-prefix tables came in 6.4. Names with other prefixes
//! cannot be represented and are dropped when a layer is applied. ACL values
//! are stored as the raw `system.posix_acl_*` xattr bytes, which is the form
//! the kernel's `posix_acl_from_xattr` decodes. Shared xattrs are not used:
//! they only save space when many inodes carry identical xattrs.

use super::format::put16;
use crate::nodes::Xattr;

/// `sizeof(struct erofs_xattr_ibody_header)`.
const IBODY_HEADER: usize = 12;
/// `sizeof(struct erofs_xattr_entry)`, also the entry alignment.
const ENTRY_HEADER: usize = 4;

const USER: u8 = 1;
const ACL_ACCESS: u8 = 2;
const ACL_DEFAULT: u8 = 3;
const TRUSTED: u8 = 4;
const SECURITY: u8 = 6;

/// Splits a full xattr name into an EROFS name index and the stored suffix;
/// `None` if EROFS on Linux 6.1 cannot hold it.
pub(crate) fn split_name(name: &[u8]) -> Option<(u8, &[u8])> {
    if name.contains(&0) {
        return None;
    }
    match name {
        b"system.posix_acl_access" => return Some((ACL_ACCESS, b"")),
        b"system.posix_acl_default" => return Some((ACL_DEFAULT, b"")),
        _ => {}
    }
    for (prefix, index) in [
        (&b"user."[..], USER),
        (b"trusted.", TRUSTED),
        (b"security.", SECURITY),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return (!rest.is_empty() && rest.len() <= usize::from(u8::MAX))
                .then_some((index, rest));
        }
    }
    None
}

fn entry_size(suffix: &[u8], value: &[u8]) -> usize {
    (ENTRY_HEADER + suffix.len() + value.len()).next_multiple_of(ENTRY_HEADER)
}

/// Bytes the inline xattr area takes (0 when there are no xattrs, since an
/// area with a header and no entries is refused by the kernel).
pub(crate) fn ibody_size(xattrs: &[Xattr]) -> usize {
    let entries: usize = xattrs
        .iter()
        .filter_map(|(n, v)| split_name(n).map(|(_, s)| entry_size(s, v)))
        .sum();
    if entries == 0 {
        0
    } else {
        IBODY_HEADER + entries
    }
}

/// The inode's `i_xattr_icount` for an area of `size` bytes, `None` if it
/// does not fit in 16 bits.
pub(crate) fn icount(size: usize) -> Option<u16> {
    if size == 0 {
        return Some(0);
    }
    u16::try_from(1 + (size - IBODY_HEADER) / 4).ok()
}

/// Appends the inline xattr area.
pub(crate) fn encode(xattrs: &[Xattr], out: &mut Vec<u8>) {
    if ibody_size(xattrs) == 0 {
        return;
    }
    out.extend_from_slice(&[0u8; IBODY_HEADER]); // no shared xattrs
    for (name, value) in xattrs {
        let Some((index, suffix)) = split_name(name) else {
            continue;
        };
        let start = out.len();
        out.resize(start + entry_size(suffix, value), 0);
        let b = &mut out[start..];
        b[0] = suffix.len() as u8;
        b[1] = index;
        put16(b, 2, value.len() as u16);
        b[ENTRY_HEADER..ENTRY_HEADER + suffix.len()].copy_from_slice(suffix);
        let v = ENTRY_HEADER + suffix.len();
        b[v..v + value.len()].copy_from_slice(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(n: &str, v: &str) -> Xattr {
        (n.as_bytes().into(), v.as_bytes().into())
    }

    #[test]
    fn names() {
        assert_eq!(split_name(b"user.foo"), Some((1, &b"foo"[..])));
        assert_eq!(split_name(b"security.capability").map(|s| s.0), Some(6));
        assert_eq!(split_name(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(split_name(b"system.other"), None);
        assert_eq!(split_name(b"user."), None);
    }

    #[test]
    fn layout() {
        let xs = vec![x("user.foo", "bar"), x("system.bogus", "z")];
        let n = ibody_size(&xs);
        assert_eq!(n, 12 + 12);
        assert_eq!(icount(n), Some(4));
        let mut out = Vec::new();
        encode(&xs, &mut out);
        assert_eq!(out.len(), n);
        assert_eq!(&out[12..16], &[3, 1, 3, 0]);
        assert_eq!(&out[16..22], b"foobar");
        assert_eq!(ibody_size(&[]), 0);
    }
}
