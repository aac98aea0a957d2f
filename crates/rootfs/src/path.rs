//! Turning untrusted tar member names into root-relative component lists.
//!
//! The rules follow what Docker and containerd accept, minus their reliance
//! on the host filesystem: a leading `/` is dropped (absolute member names
//! are common in hand-made tars), `.` and empty components vanish, and `..`
//! is resolved lexically. A `..` that would climb above the root rejects the
//! entry instead of being clamped, because a tar that tries this is hostile
//! and silently rewriting it would hide that. Resolution is lexical on
//! purpose: the tree never follows symlinks while applying layers, so
//! `a/../b` means `b` even if `a` is a symlink.

/// Longest accepted file name component; EROFS stores at most 255 bytes
/// (`EROFS_NAME_LEN`), as does every Linux filesystem.
pub const MAX_NAME_LEN: usize = 255;

/// Why a raw path could not be normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// `..` climbs above the root.
    Escapes,
    /// A component is longer than [`MAX_NAME_LEN`].
    NameTooLong,
    /// The path is longer than the configured maximum.
    PathTooLong,
    /// The path has more components than the configured maximum.
    TooDeep,
    /// The path contains a NUL byte (only possible through PAX records).
    Nul,
}

/// Splits `raw` into normal components. An empty result means the root.
pub(crate) fn normalize(
    raw: &[u8],
    max_path: usize,
    max_depth: usize,
) -> Result<Vec<&[u8]>, PathError> {
    if raw.len() > max_path {
        return Err(PathError::PathTooLong);
    }
    if raw.contains(&0) {
        return Err(PathError::Nul);
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::Escapes);
                }
            }
            name => {
                if name.len() > MAX_NAME_LEN {
                    return Err(PathError::NameTooLong);
                }
                out.push(name);
                if out.len() > max_depth {
                    return Err(PathError::TooDeep);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(raw: &str) -> Result<Vec<String>, PathError> {
        normalize(raw.as_bytes(), 4096, 256).map(|v| {
            v.into_iter()
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
                .collect()
        })
    }

    #[test]
    fn normal_forms() {
        assert_eq!(n("./etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(n("/etc//x/").unwrap(), ["etc", "x"]);
        assert_eq!(n("a/../b").unwrap(), ["b"]);
        assert!(n("./").unwrap().is_empty());
        assert!(n("").unwrap().is_empty());
    }

    #[test]
    fn escapes() {
        for p in ["../x", "a/../../x", "/../x", "./../x", ".."] {
            assert_eq!(n(p), Err(PathError::Escapes), "{p}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(n(&"a".repeat(256)), Err(PathError::NameTooLong));
        assert_eq!(normalize(b"a/b/c", 4096, 2), Err(PathError::TooDeep));
        assert_eq!(normalize(b"abcdef", 3, 2), Err(PathError::PathTooLong));
        assert_eq!(n("a\0b"), Err(PathError::Nul));
    }
}
