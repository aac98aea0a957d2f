//! OCI whiteout names (image-spec `layer.md`, "Whiteouts").
//!
//! A member named `.wh.<name>` deletes `<name>` from the layers below; a
//! member named `.wh..wh..opq` makes its directory opaque, hiding everything
//! the lower layers put in it. Other `.wh..wh.*` names are AUFS bookkeeping
//! (hard-link staging in `/.wh..wh.plnk`, ...) that Docker skips, with
//! everything below them, and so do we. Whiteouts are applied when met in
//! the stream, as containerd does.

/// The prefix marking a whiteout.
pub const PREFIX: &[u8] = b".wh.";
/// The name of an opaque-directory marker.
pub const OPAQUE: &[u8] = b".wh..wh..opq";
const META_PREFIX: &[u8] = b".wh..wh.";
/// AUFS's hard-link staging directory at the layer root.
pub const AUFS_LINK_DIR: &[u8] = b".wh..wh.plnk";

/// True for a directory name of AUFS metadata: nothing below it belongs in
/// the image.
pub(crate) fn is_aufs_meta(name: &[u8]) -> bool {
    name.starts_with(META_PREFIX)
}

/// What a base name means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whiteout<'a> {
    /// An ordinary name.
    None,
    /// Delete the sibling with this name.
    Remove(&'a [u8]),
    /// Hide lower-layer contents of the parent directory.
    Opaque,
    /// AUFS metadata, to be skipped.
    AufsMeta,
    /// `.wh.` followed by nothing, `.` or `..`: nothing sensible to delete.
    Invalid,
}

/// Classifies the last component of an entry path.
pub(crate) fn classify(name: &[u8]) -> Whiteout<'_> {
    if name == OPAQUE {
        return Whiteout::Opaque;
    }
    if name.starts_with(META_PREFIX) {
        return Whiteout::AufsMeta;
    }
    match name.strip_prefix(PREFIX) {
        None => Whiteout::None,
        Some(b"" | b"." | b"..") => Whiteout::Invalid,
        Some(target) => Whiteout::Remove(target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(classify(b"passwd"), Whiteout::None);
        assert_eq!(classify(b".wh.passwd"), Whiteout::Remove(b"passwd"));
        assert_eq!(classify(b".wh..wh..opq"), Whiteout::Opaque);
        assert_eq!(classify(b".wh..wh.plnk"), Whiteout::AufsMeta);
        assert_eq!(classify(b".wh."), Whiteout::Invalid);
        assert_eq!(classify(b".wh.."), Whiteout::Invalid);
        assert_eq!(classify(b".whx"), Whiteout::None);
    }
}
