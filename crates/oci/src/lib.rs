//! Getting OCI images: references, sources, and the blob store.
